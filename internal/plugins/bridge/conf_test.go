package bridge

import (
	"errors"
	"net"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

func TestLoad(t *testing.T) {
	for _, tc := range []struct {
		name, conf, args string
		code             uint // 0: valid
	}{
		{"defaults", `{"cniVersion":"1.0.0","name":"n","type":"bridge"}`, "", 0},
		{"all fields", `{"cniVersion":"1.1.0","name":"n","type":"bridge","bridge":"br9","isGateway":true,"isDefaultGateway":true,"forceAddress":true,"ipMasq":true,"ipMasqBackend":"nftables","mtu":1400,"hairpinMode":true,"vlan":5,"preserveDefaultVlan":false,"macspoofchk":true,"enabledad":true,"portIsolation":true,"ipam":{"type":"host-local"}}`, "", 0},
		{"mac from args", `{"cniVersion":"0.4.0","name":"n","type":"bridge"}`, "IgnoreUnknown=1;MAC=0a:58:00:00:00:01;K8S_POD_NAME=x", 0},
		{"malformed", `{"cniVersion":"1.0.0","name":`, "", types.ErrDecodingFailure},
		{"wrong type", `{"cniVersion":"1.0.0","name":"n","type":"bridge","mtu":"big"}`, "", types.ErrDecodingFailure},
		{"no version", `{"name":"n","type":"bridge"}`, "", types.ErrInvalidNetworkConfig},
		{"unknown version", `{"cniVersion":"7.0.0","name":"n","type":"bridge"}`, "", types.ErrIncompatibleCNIVersion},
		{"vlan range", `{"cniVersion":"1.0.0","name":"n","type":"bridge","vlan":4095}`, "", types.ErrInvalidNetworkConfig},
		{"vlan and trunk", `{"cniVersion":"1.0.0","name":"n","type":"bridge","vlan":3,"vlanTrunk":[{"id":4}]}`, "", types.ErrInvalidNetworkConfig},
		{"trunk min>max", `{"cniVersion":"1.0.0","name":"n","type":"bridge","vlanTrunk":[{"minID":9,"maxID":4}]}`, "", types.ErrInvalidNetworkConfig},
		{"hairpin and promisc", `{"cniVersion":"1.0.0","name":"n","type":"bridge","hairpinMode":true,"promiscMode":true}`, "", types.ErrInvalidNetworkConfig},
		{"long bridge name", `{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"a-very-long-bridge-name"}`, "", types.ErrInvalidNetworkConfig},
		{"disabled iface with ipam", `{"cniVersion":"1.0.0","name":"n","type":"bridge","disableContainerInterface":true,"ipam":{"type":"host-local"}}`, "", types.ErrInvalidNetworkConfig},
		{"bad mac", `{"cniVersion":"1.0.0","name":"n","type":"bridge","runtimeConfig":{"mac":"zz"}}`, "", types.ErrInvalidNetworkConfig},
		{"bridge name with a slash", `{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br/0"}`, "", types.ErrInvalidNetworkConfig},
		{"bridge name ..", `{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":".."}`, "", types.ErrInvalidNetworkConfig},
		{"bridge name with a space", `{"cniVersion":"1.0.0","name":"n","type":"bridge","bridge":"br 0"}`, "", types.ErrInvalidNetworkConfig},
		{"multicast MAC=", `{"cniVersion":"1.0.0","name":"n","type":"bridge"}`, "MAC=01:00:5e:00:00:01", types.ErrInvalidNetworkConfig},
		{"zero MAC=", `{"cniVersion":"1.0.0","name":"n","type":"bridge"}`, "MAC=00:00:00:00:00:00", types.ErrInvalidNetworkConfig},
		{"InfiniBand mac", `{"cniVersion":"1.0.0","name":"n","type":"bridge","runtimeConfig":{"mac":"00:00:00:00:fe:80:00:00:00:00:00:00:02:00:5e:10:00:00:00:01"}}`, "", types.ErrInvalidNetworkConfig},
		{"unknown arg", `{"cniVersion":"1.0.0","name":"n","type":"bridge"}`, "FOO=bar", types.ErrInvalidEnvironmentVariables},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := load([]byte(tc.conf), tc.args)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != tc.code {
				t.Fatalf("got %v, want code %d", err, tc.code)
			}
		})
	}
}

func TestLoadDefaultsAndPrecedence(t *testing.T) {
	c, err := load([]byte(`{"cniVersion":"1.0.0","name":"n","type":"bridge","isDefaultGateway":true,
		"args":{"cni":{"mac":"0a:58:00:00:00:02"}},"runtimeConfig":{"mac":"0a:58:00:00:00:03"},
		"vlanTrunk":[{"minID":10,"maxID":12},{"id":11},{"id":20}]}`), "MAC=0a:58:00:00:00:01")
	if err != nil {
		t.Fatal(err)
	}
	if c.BrName != "cni0" || !c.PreserveDefaultVlan || !c.IsGW {
		t.Errorf("defaults: bridge %q preserveDefaultVlan %v isGateway %v", c.BrName, c.PreserveDefaultVlan, c.IsGW)
	}
	if c.mac.String() != "0a:58:00:00:00:03" {
		t.Errorf("runtimeConfig.mac must win, got %s", c.mac)
	}
	if want := []int{10, 11, 12, 20}; len(c.vlans) != len(want) {
		t.Errorf("vlans %v, want %v", c.vlans, want)
	}
}

func TestGateways(t *testing.T) {
	_, n4, _ := net.ParseCIDR("10.1.0.0/24")
	_, n6, _ := net.ParseCIDR("fd00:1::/64")
	res := &current.Result{IPs: []*current.IPConfig{
		{Address: net.IPNet{IP: net.ParseIP("10.1.0.7").To4(), Mask: n4.Mask}},
		{Address: net.IPNet{IP: net.ParseIP("fd00:1::7"), Mask: n6.Mask}, Gateway: net.ParseIP("fd00:1::fe")},
	}}
	c := &Conf{IsGW: true, IsDefaultGW: true}
	gws := gateways(res, c)
	if len(gws) != 2 || gws[0].String() != "10.1.0.1/24" || gws[1].String() != "fd00:1::fe/64" {
		t.Fatalf("gateways %v", gws)
	}
	if len(res.Routes) != 2 || res.Routes[0].Dst.String() != "0.0.0.0/0" || res.Routes[1].Dst.String() != "::/0" {
		t.Fatalf("routes %v", res.Routes)
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != containerIdx {
			t.Errorf("%s not on the container interface", ipc.Address.String())
		}
	}
	// A default route from IPAM is kept, not duplicated.
	res.Routes = res.Routes[:1]
	gateways(res, c)
	if len(res.Routes) != 2 {
		t.Errorf("routes after second pass: %v", res.Routes)
	}
}
