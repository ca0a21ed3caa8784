package podrules

import (
	"net"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

func portMapsFor(t *testing.T) []PortMap {
	t.Helper()
	cond, ok := AddrMatch(cidr(t, "10.9.0.0/16"), false, true)
	if !ok {
		t.Fatal("AddrMatch refused an IPv4 prefix")
	}
	return []PortMap{
		{
			ContainerIP: net.ParseIP("10.1.0.5"), SNAT: true, MarkBit: 13, Conditions: cond,
			Mappings: []PortMapping{
				{HostPort: 8080, ContainerPort: 80, Protocol: unix.IPPROTO_TCP},
				{HostPort: 5353, ContainerPort: 53, Protocol: unix.IPPROTO_UDP, HostIP: net.ParseIP("192.0.2.1")},
				{HostPort: 9000, ContainerPort: 9000, Protocol: unix.IPPROTO_SCTP, HostIP: net.ParseIP("2001:db8::1")},
			},
		},
		{
			ContainerIP: net.ParseIP("fd00::5"), SNAT: true, MarkBit: 13,
			Mappings: []PortMapping{
				{HostPort: 8080, ContainerPort: 80, Protocol: unix.IPPROTO_TCP},
				{HostPort: 5353, ContainerPort: 53, Protocol: unix.IPPROTO_UDP, HostIP: net.ParseIP("192.0.2.1")},
			},
		},
	}
}

// TestPortMapsLifecycle installs, checks, reads back and removes the
// rules of two attachments; the rules nft shows are the documented ones.
func TestPortMapsLifecycle(t *testing.T) {
	ns := tempNS(t, "pnpm")
	c := connIn(t, ns)
	a, b := att("net", "c1", "eth0"), att("net", "c2", "eth0")

	// No mapping: nothing at all, not even the table.
	if err := c.AddPortMaps(a, []PortMap{{ContainerIP: net.ParseIP("10.1.0.5"), SNAT: true}}); err != nil {
		t.Fatal(err)
	}
	var chains []string
	err := c.nft.Transact(func(tx *nft.Tx) (_ bool, err error) {
		chains, err = tx.Chains(inetTable)
		return false, err
	})
	if err != nil || len(chains) != 0 {
		t.Fatalf("AddPortMaps without mappings created chains %q (%v)", chains, err)
	}

	maps := portMapsFor(t)
	for i := 0; i < 2; i++ { // the second ADD replaces, not duplicates
		if err := c.AddPortMaps(a, maps); err != nil {
			t.Fatal(err)
		}
	}
	other := []PortMap{{ContainerIP: net.ParseIP("10.1.0.6"), MarkBit: 13,
		Mappings: []PortMapping{{HostPort: 8081, ContainerPort: 80, Protocol: unix.IPPROTO_TCP}}}}
	if err := c.AddPortMaps(b, other); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckPortMaps(a, maps); err != nil {
		t.Fatalf("check: %v", err)
	}
	if err := c.CheckPortMaps(b, other); err != nil {
		t.Fatalf("check b: %v", err)
	}
	// A mapping that is not installed fails CHECK.
	missing := []PortMap{{ContainerIP: net.ParseIP("10.1.0.5"), MarkBit: 13,
		Mappings: []PortMapping{{HostPort: 1, ContainerPort: 1, Protocol: unix.IPPROTO_TCP}}}}
	if err := c.CheckPortMaps(a, missing); err == nil {
		t.Error("check passed for a mapping that is not installed")
	}

	got, err := c.DelPortMaps(a)
	if err != nil {
		t.Fatal(err)
	}
	want := []Forward{
		{unix.IPPROTO_TCP, 8080, net.ParseIP("10.1.0.5").To4(), 80},
		{unix.IPPROTO_UDP, 5353, net.ParseIP("10.1.0.5").To4(), 53},
		{unix.IPPROTO_TCP, 8080, net.ParseIP("fd00::5"), 80},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("DelPortMaps removed %v, want %v", got, want)
	}
	if got, want := owners(t, c), []string{"portmap-output net/c2/eth0", "portmap-prerouting net/c2/eth0"}; !equal(got, want) {
		t.Errorf("after DEL of c1 rules are %q, want %q", got, want)
	}
	if got, err := c.DelPortMaps(a); err != nil || len(got) != 0 {
		t.Errorf("second DEL: %v %v", got, err)
	}
	if err := c.CheckPortMaps(a, maps); err == nil {
		t.Error("check passed after DEL")
	}
	// GC of another network leaves c2; GC keeping nothing removes it.
	if err := c.GCPortMaps("other", func(attachment.ID) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckPortMaps(b, other); err != nil {
		t.Errorf("GC of another network removed c2: %v", err)
	}
	if err := c.GCPortMaps("net", func(x attachment.ID) bool { return x != b }); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckPortMaps(b, other); err == nil {
		t.Error("c2 survived GC")
	}
	if got := owners(t, c); len(got) != 0 {
		t.Errorf("rules left after GC: %q", got)
	}
}

// TestPortMapsRuleText checks with the nft tool that the rules are the
// documented ones.
func TestPortMapsRuleText(t *testing.T) {
	ns := tempNS(t, "pnpm")
	c := connIn(t, ns)
	if err := c.AddPortMaps(att("net", "c1", "eth0"), portMapsFor(t)); err != nil {
		t.Fatal(err)
	}
	out := nfttest.NFT(t, ns, "list", "table", "inet", nft.TableName)
	for _, want := range []string{
		`tcp dport 8080 fib daddr type local ip saddr != 10.9.0.0/16 ip saddr 10.1.0.5 meta mark set meta mark | 0x00002000`,
		`tcp dport 8080 fib daddr type local ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:80`,
		`udp dport 5353 ip daddr 192.0.2.1 fib daddr type local ip saddr != 10.9.0.0/16 dnat ip to 10.1.0.5:53`,
		`ip saddr 127.0.0.0/8 meta mark set meta mark | 0x00002000`,
		`tcp dport 8080 fib daddr type local dnat ip6 to [fd00::5]:80`,
		`ip daddr 10.1.0.5 meta mark & 0x00002000 == 0x00002000 masquerade`,
		`ip6 daddr fd00::5 meta mark & 0x00002000 == 0x00002000 masquerade`,
		`type nat hook prerouting priority dstnat`,
		`type nat hook output priority -100`,
		`type nat hook postrouting priority srcnat`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "9000") || strings.Contains(out, "dnat ip6 to [fd00::5]:53") {
		t.Errorf("mappings of the other family were installed:\n%s", out)
	}

}
