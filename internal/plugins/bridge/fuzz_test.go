package bridge

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzLoad: any configuration and CNI_ARGS either load or fail with a spec
// error; never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br0","isDefaultGateway":true,"vlanTrunk":[{"minID":1,"maxID":3},{"id":9}],"runtimeConfig":{"mac":"0a:58:00:00:00:01"},"ipam":{"type":"host-local"}}`), "MAC=0a:58:00:00:00:02")
	f.Add([]byte(`{"cniVersion":"0.4.0","name":"n","prevResult":{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"10.0.0.2/24","interface":0}]}}`), "")
	f.Fuzz(func(t *testing.T, data []byte, args string) {
		_, err := load(data, args)
		if err == nil {
			return
		}
		var e *types.Error
		if !errors.As(err, &e) {
			t.Fatalf("not a spec error: %T %v", err, err)
		}
	})
}
