package podrules

import (
	"net"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// render returns the nft text of rules.
func render(rules []*nftables.Rule) []string {
	var out []string
	for _, r := range rules {
		out = append(out, nfttest.Render(r.Exprs))
	}
	return out
}

// renderChains returns the nft text of the rules per chain name, for
// the chains that get rules.
func renderChains(crs []nft.ChainRules) map[string][]string {
	out := map[string][]string{}
	for _, cr := range crs {
		if len(cr.Rules) > 0 {
			out[nft.FamilyName(cr.Chain.Table.Family)+" "+cr.Chain.Name] = render(cr.Rules)
		}
	}
	return out
}

func TestMasqRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		ips  []string
		want []string
	}{
		{"ipv4", []string{"10.1.0.5/24"}, []string{
			"meta nfproto ipv4 ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade"}},
		{"ipv6", []string{"fd00:1::5/64"}, []string{
			"meta nfproto ipv6 ip6 saddr fd00:1::5 ip6 daddr != fd00:1::/64 ip6 daddr != ff00::/8 masquerade"}},
		{"a host route", []string{"10.2.0.7/32"}, []string{
			"meta nfproto ipv4 ip saddr 10.2.0.7 ip daddr != 10.2.0.7 ip daddr != 224.0.0.0/4 masquerade"}},
		{"duplicates once", []string{"10.1.0.5/24", "10.1.0.5/24", "10.1.0.5/16"}, []string{
			"meta nfproto ipv4 ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade",
			"meta nfproto ipv4 ip saddr 10.1.0.5 ip daddr != 10.1.0.0/16 ip daddr != 224.0.0.0/4 masquerade"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rules, err := masqRules(nfttest.CIDRs(t, tc.ips...))
			if err != nil {
				t.Fatal(err)
			}
			if got := render(rules); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	for _, bad := range []*net.IPNet{nil, {IP: net.ParseIP("10.1.0.5")}, {IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(24, 32)}} {
		if _, err := masqRules([]*net.IPNet{bad}); err == nil {
			t.Errorf("masqRules(%v) succeeded", bad)
		}
	}
}

func TestSpoofRule(t *testing.T) {
	r, err := spoofRule("veth1234", net.HardwareAddr{2, 0x42, 10, 1, 0, 5})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := nfttest.Render(r.Exprs), `iifname "veth1234" ether saddr != 02:42:0a:01:00:05 drop`; got != want {
		t.Errorf("rule %q, want %q", got, want)
	}
}

func TestFirewallRules(t *testing.T) {
	admit := []string{
		"meta nfproto ipv4 ip daddr 10.88.0.5 ct state established,related accept",
		"meta nfproto ipv4 ip saddr 10.88.0.5 accept",
		"meta nfproto ipv6 ip6 daddr fd00::5 ct state established,related accept",
		"meta nfproto ipv6 ip6 saddr fd00::5 accept",
	}
	ips := []net.IP{net.ParseIP("10.88.0.5"), net.ParseIP("fd00::5"), net.ParseIP("10.88.0.5")}
	for _, tc := range []struct {
		name string
		f    Firewall
		want map[string][]string
	}{
		{"open", Firewall{IPs: ips}, map[string][]string{"inet firewall": admit}},
		{"same-bridge", Firewall{IPs: ips, Isolation: SameBridge, Bridge: "cni1"}, map[string][]string{
			"inet firewall":                  admit,
			"inet firewall-isolation":        {`iifname "cni1" oifname != "cni1" jump firewall-isolation-stage2`},
			"inet firewall-isolation-stage2": {`oifname "cni1" drop`},
		}},
		{"isolated", Firewall{IPs: ips, Isolation: Isolated, Bridge: "cni1", Ports: []string{"pn0a"}}, map[string][]string{
			"inet firewall": admit,
			"inet firewall-isolation": {
				`iifname "cni1" oifname != "cni1" jump firewall-isolation-stage2`,
				`iifname "cni1" oifname "cni1" drop`,
			},
			"inet firewall-isolation-stage2": {`oifname "cni1" drop`},
			"bridge firewall-isolation":      {`iifname "pn0a" meta protocol ip drop`, `iifname "pn0a" meta protocol ip6 drop`},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			crs, err := firewallRules(tc.f)
			if err != nil {
				t.Fatal(err)
			}
			if len(crs) != 4 {
				t.Errorf("%d chains listed, want all 4 (stale rules go from those without rules)", len(crs))
			}
			if got := renderChains(crs); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("rules\n%q\nwant\n%q", got, tc.want)
			}
		})
	}
	if _, err := firewallRules(Firewall{Isolation: Isolated}); err == nil {
		t.Error("isolation without a bridge accepted")
	}
}

func TestPortMapRules(t *testing.T) {
	crs, n, err := portMapRules(portMapsFor(t))
	if err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Errorf("%d mappings forwarded, want 3 (a mapping on a host IP of the other family is skipped)", n)
	}
	local := "fib daddr type local"
	want := map[string][]string{
		"inet portmap-prerouting": {
			"meta nfproto ipv4 meta l4proto tcp th dport 8080 " + local + " ip saddr != 10.9.0.0/16 ip saddr 10.1.0.5 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv4 meta l4proto tcp th dport 8080 " + local + " ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:80",
			"meta nfproto ipv4 meta l4proto udp th dport 5353 ip daddr 192.0.2.1 " + local + " ip saddr != 10.9.0.0/16 ip saddr 10.1.0.5 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv4 meta l4proto udp th dport 5353 ip daddr 192.0.2.1 " + local + " ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:53",
			"meta nfproto ipv6 meta l4proto tcp th dport 8080 " + local + " ip6 saddr fd00::5 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv6 meta l4proto tcp th dport 8080 " + local + " dnat ip6 to [fd00::5]:80",
		},
		"inet portmap-output": {
			"meta nfproto ipv4 meta l4proto tcp th dport 8080 " + local + " ip saddr != 10.9.0.0/16 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv4 meta l4proto tcp th dport 8080 " + local + " ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:80",
			"meta nfproto ipv4 meta l4proto udp th dport 5353 ip daddr 192.0.2.1 " + local + " ip saddr != 10.9.0.0/16 ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000",
			"meta nfproto ipv4 meta l4proto udp th dport 5353 ip daddr 192.0.2.1 " + local + " ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:53",
			"meta nfproto ipv6 meta l4proto tcp th dport 8080 " + local + " dnat ip6 to [fd00::5]:80",
		},
		"inet portmap-masquerade": {
			"meta nfproto ipv4 ip daddr 10.1.0.5 meta mark & 0x00002000 == 0x00002000 masquerade",
			"meta nfproto ipv6 ip6 daddr fd00::5 meta mark & 0x00002000 == 0x00002000 masquerade",
		},
	}
	if got := renderChains(crs); !reflect.DeepEqual(got, want) {
		t.Errorf("rules\n%q\nwant\n%q", got, want)
	}
	// The DNAT rules read back as the forwardings they are.
	var fwd []Forward
	for _, r := range crs[0].Rules {
		raw := encode(t, masquerade, r)
		if f, ok := forwardOf(nftables.TableFamilyINet, raw); ok {
			fwd = append(fwd, f)
		}
	}
	wantFwd := []Forward{
		{unix.IPPROTO_TCP, 8080, net.ParseIP("10.1.0.5").To4(), 80},
		{unix.IPPROTO_UDP, 5353, net.ParseIP("10.1.0.5").To4(), 53},
		{unix.IPPROTO_TCP, 8080, net.ParseIP("fd00::5"), 80},
	}
	if !reflect.DeepEqual(fwd, wantFwd) {
		t.Errorf("forwardings read back %v, want %v", fwd, wantFwd)
	}
}

// encode returns a rule's expressions as a dump of d's table shows them.
func encode(t *testing.T, d *dispatch, r *nftables.Rule) []byte {
	t.Helper()
	return nfttest.Encode(t, byte(d.base.Table.Family), r.Exprs)
}
