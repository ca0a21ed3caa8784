package static

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
)

// FuzzLoad: any configuration and CNI_ARGS either load or fail with a spec
// error; never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"static","addresses":[{"address":"10.0.0.5/24","gateway":"10.0.0.1"}],"routes":[{"dst":"0.0.0.0/0"}],"dns":{"nameservers":["1.1.1.1"]}}}`), "IP=10.0.0.6/24;GATEWAY=10.0.0.1")
	f.Add([]byte(`{"cniVersion":"0.2.0","name":"n","ipam":{"addresses":[{"address":"10.0.0.5/24"},{"address":"10.1.0.5/24"}]},"runtimeConfig":{"ips":["fd00::5/64"]}}`), "")
	f.Fuzz(func(t *testing.T, data []byte, args string) {
		_, err := load(&skel.CmdArgs{StdinData: data, Args: args})
		if err == nil {
			return
		}
		var e *types.Error
		if !errors.As(err, &e) {
			t.Fatalf("not a spec error: %T %v", err, err)
		}
	})
}
