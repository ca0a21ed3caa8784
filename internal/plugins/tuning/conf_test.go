package tuning

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestParseKey(t *testing.T) {
	for _, tc := range []struct {
		key, path string // path "" means rejected
	}{
		{"net.core.somaxconn", "net/core/somaxconn"},
		{"net.ipv4.conf.IFNAME.arp_notify", "net/ipv4/conf/eth0/arp_notify"},
		{"net/ipv4/conf/eth0.100/rp_filter", "net/ipv4/conf/eth0.100/rp_filter"},
		{"net.ipv6.neigh.eth0.base_reachable_time_ms", "net/ipv6/neigh/eth0/base_reachable_time_ms"},
		{"kernel.hostname", ""},
		{"net/../kernel/hostname", ""},
		{"../../etc/passwd", ""},
		{"net.ipv4.conf.eth0", ""},
		{"net..core", ""},
		{"net", ""},
		{"/net/core/somaxconn", ""},
	} {
		k, err := parseKey(tc.key, "eth0", nil)
		if tc.path == "" {
			if err == nil {
				t.Errorf("parseKey(%q) = %q, want an error", tc.key, k.path)
			}
			continue
		}
		if err != nil || k.path != tc.path {
			t.Errorf("parseKey(%q) = %q, %v; want %q", tc.key, k.path, err, tc.path)
		}
	}
}

func TestLoadPrecedenceAndDuplicates(t *testing.T) {
	conf := `{"cniVersion":"1.0.0","name":"n","type":"tuning","mac":"02:00:00:00:00:01",
		"runtimeConfig":{"mac":"02:00:00:00:00:02"},"args":{"cni":{"mtu":1300}},"mtu":1400}`
	c, err := load([]byte(conf), "IgnoreUnknown=1;MAC=02:00:00:00:00:03", "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if c.mac.String() != "02:00:00:00:00:02" || c.MTU != 1300 {
		t.Errorf("mac %s mtu %d; want the capability's mac and args' mtu", c.mac, c.MTU)
	}
	dup := `{"cniVersion":"1.0.0","name":"n","type":"tuning","sysctl":{"net.core.somaxconn":"1","net.core.somaxconn":"2"}}`
	if _, err := load([]byte(dup), "", "eth0"); err == nil {
		t.Error("duplicated sysctl key accepted")
	}
}

// TestLoadMAC: a mac that cannot be an interface's own is a configuration
// error (7), not the kernel's refusal (999) after other changes.
func TestLoadMAC(t *testing.T) {
	for _, mac := range []string{"00:00:00:00:00:00", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff"} {
		conf := `{"cniVersion":"1.0.0","name":"n","type":"tuning","mac":"` + mac + `"}`
		_, err := load([]byte(conf), "", "eth0")
		var e *types.Error
		if !errors.As(err, &e) || e.Code != types.ErrInvalidNetworkConfig {
			t.Errorf("mac %s: load = %v, want code 7", mac, err)
		}
	}
}
