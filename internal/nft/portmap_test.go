package nft

import (
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/attachment"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
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
	if out := nftOut(t, ns, "list", "tables"); strings.Contains(out, TableName) {
		t.Fatalf("AddPortMaps without mappings created a table:\n%s", out)
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

	out := nftOut(t, ns, "list", "table", "inet", TableName)
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
	out = nftOut(t, ns, "list", "table", "inet", TableName)
	if strings.Contains(out, "c1") || !strings.Contains(out, "net/c2/eth0") {
		t.Errorf("after DEL of c1:\n%s", out)
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
	if out := nftOut(t, ns, "list", "table", "inet", TableName); strings.Contains(out, "net/") {
		t.Errorf("rules left after GC:\n%s", out)
	}
}

func nftOut(t *testing.T, ns *netns.Temp, args ...string) string {
	t.Helper()
	out, err := sandbox.NFT(ns.NS, args...)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}
