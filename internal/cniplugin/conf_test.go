package cniplugin

import (
	"errors"
	"slices"
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

// TestParsePodArgs: the Kubernetes keys are known with or without
// IgnoreUnknown, along with the common ones; other keys need it.
func TestParsePodArgs(t *testing.T) {
	const kubelet = "K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-0;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=0b7a4e0c"
	for _, tc := range []struct {
		name, args   string
		ns, pod, uid string
		ip           []string
		wantCode     uint
	}{
		{"kubelet", "IgnoreUnknown=1;" + kubelet, "ns", "web-0", "0b7a4e0c", nil, 0},
		{"kubelet without IgnoreUnknown", kubelet, "ns", "web-0", "0b7a4e0c", nil, 0},
		{"with IP", kubelet + ";IP=10.1.0.5", "ns", "web-0", "0b7a4e0c", []string{"10.1.0.5"}, 0},
		{"not Kubernetes", "", "", "", "", nil, 0},
		{"unknown key", kubelet + ";FOO=1", "", "", "", nil, types.ErrInvalidEnvironmentVariables},
		{"unknown key ignored", "IgnoreUnknown=1;FOO=1;K8S_POD_NAME=p", "", "p", "", nil, 0},
		{"malformed", "K8S_POD_NAME", "", "", "", nil, types.ErrInvalidEnvironmentVariables},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := ParsePodArgs(tc.args)
			if tc.wantCode != 0 {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != tc.wantCode {
					t.Fatalf("ParsePodArgs(%q) = %v, want code %d", tc.args, err, tc.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(a.K8S_POD_NAMESPACE) != tc.ns || string(a.K8S_POD_NAME) != tc.pod || string(a.K8S_POD_UID) != tc.uid || !slices.Equal(a.IP, tc.ip) {
				t.Errorf("ParsePodArgs(%q) = %+v", tc.args, a)
			}
		})
	}
}
