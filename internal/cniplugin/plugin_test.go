package cniplugin

import (
	"errors"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/attachment"
)

func TestCheckIdentity(t *testing.T) {
	conf := func(name string) []byte {
		return []byte(`{"cniVersion":"1.1.0","name":"` + name + `","type":"bridge"}`)
	}
	// fits leaves exactly attachment.MaxLen bytes for net/<id>/eth0.
	fits := strings.Repeat("a", attachment.MaxLen-len("net//eth0"))
	for _, tc := range []struct {
		name  string
		stdin []byte
		id    string
		code  uint // 0: accepted
	}{
		{"containerd's 64 hex digits", conf("net"), strings.Repeat("f", 64), 0},
		{"longest that fits", conf("net"), fits, 0},
		{"one byte too long", conf("net"), fits + "a", types.ErrInvalidEnvironmentVariables},
		{"far too long", conf("net"), strings.Repeat("a", 300), types.ErrInvalidEnvironmentVariables},
		{"network name leaves no room", conf(strings.Repeat("n", attachment.MaxLen)), "c", types.ErrInvalidNetworkConfig},
		{"unparsable config is the plugin's to report", []byte(`{`), strings.Repeat("a", 300), 0},
	} {
		err := checkIdentity(&skel.CmdArgs{ContainerID: tc.id, IfName: "eth0", StdinData: tc.stdin})
		var e *types.Error
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("%s: checkIdentity = %v, want accepted", tc.name, err)
		case tc.code != 0 && (!errors.As(err, &e) || e.Code != tc.code):
			t.Errorf("%s: checkIdentity = %v, want code %d", tc.name, err, tc.code)
		}
	}
}
