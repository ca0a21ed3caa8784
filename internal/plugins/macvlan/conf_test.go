package macvlan

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

// TestLoad checks configuration parsing and validation, which needs no
// kernel: every bad input gets its spec error code.
func TestLoad(t *testing.T) {
	prevWithIPs := `,"prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth9"}],"ips":[{"address":"10.1.0.5/24"}]}`
	cases := []struct {
		name string
		k    *kind
		conf string
		args string
		code uint // 0: valid
		mode int
		mac  string
	}{
		{"macvlan defaults", macvlanKind, `{"master":"eth0"}`, "", 0, 0, ""},
		{"macvlan passthru", macvlanKind, `{"mode":"passthru"}`, "", 0, 3, ""},
		{"macvlan unknown mode", macvlanKind, `{"mode":"l2"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"ipvlan l3s", ipvlanKind, `{"mode":"l3s","ipam":{"type":"host-local"}}`, "", 0, 2, ""},
		{"ipvlan unknown mode", ipvlanKind, `{"mode":"bridge","ipam":{"type":"host-local"}}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"ipvlan without IPAM", ipvlanKind, `{}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"ipvlan chained with addresses", ipvlanKind, `{"x":1` + prevWithIPs + `}`, "", 0, 0, ""},
		{"negative mtu", macvlanKind, `{"mtu":-5}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"long master", macvlanKind, `{"master":"a-very-long-master-name"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"master with a slash", macvlanKind, `{"master":"eth/0"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"zero mac", macvlanKind, `{"mac":"00:00:00:00:00:00"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"config mac", macvlanKind, `{"mac":"02:00:00:00:00:01"}`, "", 0, 0, "02:00:00:00:00:01"},
		{"args mac wins over config", macvlanKind, `{"mac":"02:00:00:00:00:01"}`, "MAC=02:00:00:00:00:02", 0, 0, "02:00:00:00:00:02"},
		{"capability mac wins", macvlanKind, `{"mac":"02:00:00:00:00:01","runtimeConfig":{"mac":"02:00:00:00:00:03"}}`, "MAC=02:00:00:00:00:02", 0, 0, "02:00:00:00:00:03"},
		{"bad config mac", macvlanKind, `{"mac":"xx"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"bad args mac", macvlanKind, `{}`, "MAC=xx", types.ErrInvalidEnvironmentVariables, 0, ""},
		{"unknown CNI_ARGS key", macvlanKind, `{}`, "FOO=1", types.ErrInvalidEnvironmentVariables, 0, ""},
		{"multicast mac", macvlanKind, `{"mac":"03:00:00:00:00:01"}`, "", types.ErrInvalidNetworkConfig, 0, ""},
		{"malformed", macvlanKind, `{"mode":`, "", types.ErrDecodingFailure, 0, ""},
		{"mtu not a number", macvlanKind, `{"mtu":"big"}`, "", types.ErrDecodingFailure, 0, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			data := c.conf
			if data[len(data)-1] == '}' && data != `{"mode":` {
				data = `{"cniVersion":"1.0.0","name":"n","type":"` + c.k.name + `",` + data[1:]
				if c.conf == `{}` {
					data = `{"cniVersion":"1.0.0","name":"n","type":"` + c.k.name + `"}`
				}
			}
			conf, err := load(c.k, []byte(data), c.args)
			if c.code != 0 {
				var e *types.Error
				if !errors.As(err, &e) || e.Code != c.code {
					t.Fatalf("load(%s) = %v, want error code %d", data, err, c.code)
				}
				return
			}
			if err != nil {
				t.Fatalf("load(%s): %v", data, err)
			}
			if m, _ := c.k.mode(conf.Mode); m != c.mode {
				t.Errorf("mode %d, want %d", m, c.mode)
			}
			if got := conf.mac.String(); got != c.mac {
				t.Errorf("mac %q, want %q", got, c.mac)
			}
		})
	}
}
