package cniplugin

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestCheckGCInput(t *testing.T) {
	const head = `{"cniVersion":"1.1.0","name":"net","type":"bridge"`
	for _, tc := range []struct {
		name string
		conf string
		code uint // 0: accepted
	}{
		{"valid attachments", head + `,"cni.dev/valid-attachments":[{"containerID":"c","ifname":"eth0"}]}`, 0},
		{"none valid", head + `,"cni.dev/valid-attachments":[]}`, 0},
		{"legacy key only", head + `,"cni.dev/attachments":[]}`, 0},
		{"both keys, as libcni sends them", head + `,"cni.dev/valid-attachments":[],"cni.dev/attachments":[]}`, 0},
		{"key missing", head + `}`, types.ErrInvalidNetworkConfig},
		{"key null, libcni's nil slice: none valid", head + `,"cni.dev/valid-attachments":null}`, 0},
		{"both null", head + `,"cni.dev/valid-attachments":null,"cni.dev/attachments":null}`, 0},
		{"not an array", head + `,"cni.dev/valid-attachments":{}}`, types.ErrDecodingFailure},
		{"malformed", head, types.ErrDecodingFailure},
	} {
		err := checkGCInput([]byte(tc.conf))
		var e *types.Error
		switch {
		case tc.code == 0 && err != nil:
			t.Errorf("%s: checkGCInput = %v, want accepted", tc.name, err)
		case tc.code != 0 && (!errors.As(err, &e) || e.Code != tc.code):
			t.Errorf("%s: checkGCInput = %v, want code %d", tc.name, err, tc.code)
		}
	}
}
