package hostlocal

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// FuzzLoad: any configuration and CNI_ARGS either load or fail with a spec
// error; never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","ipam":{"type":"host-local","ranges":[[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.10","rangeEnd":"10.0.0.20","gateway":"10.0.0.1"}],[{"subnet":"fd00::/64"}]],"routes":[{"dst":"0.0.0.0/0"}]}}`), "IP=10.0.0.11")
	f.Add([]byte(`{"cniVersion":"0.2.0","name":"n","ipam":{"subnet":"10.0.0.0/31"}}`), "")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","ipam":{"ranges":[[{"subnet":"::/0"}]]},"runtimeConfig":{"ips":["::1/128"],"ipRanges":[[{"subnet":"10.1.0.0/16"}]]},"args":{"cni":{"ips":["x"]}}}`), "IgnoreUnknown=1;A=b")
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
