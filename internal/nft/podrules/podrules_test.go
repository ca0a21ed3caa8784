package podrules

import (
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// connIn opens a Conn in the namespace, closed when the test ends.
func connIn(t *testing.T, ns *netns.Temp) *Conn {
	t.Helper()
	c, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	tempNS  = nfttest.NS
	cidr    = nfttest.CIDR
	cidrs   = nfttest.CIDRs
	nftList = nfttest.Ruleset
)

func mac(t *testing.T, s string) net.HardwareAddr {
	t.Helper()
	m, err := net.ParseMAC(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func att(network, id, ifname string) attachment.ID {
	return attachment.ID{Network: network, ContainerID: id, IfName: ifname}
}

// owners lists the owner of every attachment's rule in every podnet
// table, sorted, one entry per rule, prefixed with the feature's chain
// (an attachment's own chain counts as its feature's base chain):
// "masquerade net/id/eth0". The static dispatch rules are left out.
func owners(t *testing.T, c *Conn) []string {
	t.Helper()
	var out []string
	for _, d := range dispatched {
		rules, err := c.nft.List(d.base.Table, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rules {
			chain := r.Chain
			if _, err := attachment.Parse(chain); err == nil {
				chain = d.base.Name
			}
			if r.Owner != staticOwner {
				out = append(out, chain+" "+string(r.Owner))
			}
		}
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool {
	return strings.Join(a, "\n") == strings.Join(b, "\n")
}

func TestMasqueradeAddCheckDel(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ips   []string
		other string // an address whose rule must not be found
	}{
		{"ipv4", []string{"10.1.0.5/24"}, "10.1.0.6/24"},
		{"ipv6", []string{"fd00:1::5/64"}, "fd00:1::6/64"},
		{"dual", []string{"10.1.0.5/24", "fd00:1::5/64"}, "10.1.0.5/16"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ns := tempNS(t, "nfttest")
			c := connIn(t, ns)
			a := att("net1", "c1", "eth0")
			ips := cidrs(t, tc.ips...)

			if err := c.CheckMasquerade(a, ips); err == nil {
				t.Fatal("CheckMasquerade succeeded before AddMasquerade")
			}
			for i := 0; i < 2; i++ { // the second ADD must change nothing
				if err := c.AddMasquerade(a, ips); err != nil {
					t.Fatalf("AddMasquerade #%d: %v", i+1, err)
				}
				var want []string
				for range ips {
					want = append(want, "masquerade "+a.String())
				}
				if got := owners(t, c); !equal(got, want) {
					t.Fatalf("after ADD #%d rules are %q, want %q", i+1, got, want)
				}
			}
			if err := c.CheckMasquerade(a, ips); err != nil {
				t.Fatalf("CheckMasquerade: %v", err)
			}
			if err := c.CheckMasquerade(a, append(ips, cidr(t, tc.other))); err == nil {
				t.Error("CheckMasquerade found a rule for an address never added")
			}
			if err := c.CheckMasquerade(att("net1", "c2", "eth0"), ips); err == nil {
				t.Error("CheckMasquerade found the rules under another attachment")
			}
			if err := c.DelAttachment(a); err != nil {
				t.Fatalf("DelAttachment: %v", err)
			}
			if got := owners(t, c); len(got) != 0 {
				t.Fatalf("rules left after DEL: %q", got)
			}
			if err := c.CheckMasquerade(a, ips); err == nil {
				t.Error("CheckMasquerade succeeded after DEL")
			}
			if err := c.DelAttachment(a); err != nil {
				t.Errorf("second DelAttachment: %v", err)
			}
		})
	}
}

// TestMasqueradeRuleText checks with the nft CLI that the rules mean what
// the reference ipMasq means and carry the identity as a comment.
func TestMasqueradeRuleText(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("mynet", "0123456789abcdef", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.5/24", "fd00:1::5/64", "10.2.0.7/32")); err != nil {
		t.Fatal(err)
	}
	out := nftList(t, ns)
	for _, want := range []string{
		"table inet podnet",
		"chain masquerade",
		"type nat hook postrouting priority srcnat; policy accept;",
		`ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade comment "mynet/0123456789abcdef/eth0"`,
		`ip6 saddr fd00:1::5 ip6 daddr != fd00:1::/64 ip6 daddr != ff00::/8 masquerade comment "mynet/0123456789abcdef/eth0"`,
		`ip saddr 10.2.0.7 ip daddr != 10.2.0.7 ip daddr != 224.0.0.0/4 masquerade comment "mynet/0123456789abcdef/eth0"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
}

func TestAddMasqueradeReplacesAttachmentRules(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("net1", "c1", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.5/24", "10.1.0.5/24")); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, c); len(got) != 1 {
		t.Fatalf("duplicate address gave rules %q", got)
	}
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.9/24")); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, c); len(got) != 1 {
		t.Fatalf("rules %q, want exactly one", got)
	}
	if err := c.CheckMasquerade(a, cidrs(t, "10.1.0.9/24")); err != nil {
		t.Error(err)
	}
	if err := c.CheckMasquerade(a, cidrs(t, "10.1.0.5/24")); err == nil {
		t.Error("the replaced rule is still there")
	}
}

func TestMacSpoofCheckAddCheckDel(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("net1", "c1", "eth0")
	m := mac(t, "02:42:0a:01:00:05")
	if err := c.CheckMacSpoofCheck(a, "veth1234", m); err == nil {
		t.Fatal("CheckMacSpoofCheck succeeded before AddMacSpoofCheck")
	}
	for i := 0; i < 2; i++ {
		if err := c.AddMacSpoofCheck(a, "veth1234", m); err != nil {
			t.Fatalf("AddMacSpoofCheck #%d: %v", i+1, err)
		}
		if got, want := owners(t, c), []string{"macspoofchk " + a.String()}; !equal(got, want) {
			t.Fatalf("after ADD #%d rules are %q, want %q", i+1, got, want)
		}
	}
	if err := c.CheckMacSpoofCheck(a, "veth1234", m); err != nil {
		t.Fatalf("CheckMacSpoofCheck: %v", err)
	}
	if err := c.CheckMacSpoofCheck(a, "veth1234", mac(t, "02:42:0a:01:00:06")); err == nil {
		t.Error("CheckMacSpoofCheck accepted another MAC")
	}
	if err := c.CheckMacSpoofCheck(a, "veth9999", m); err == nil {
		t.Error("CheckMacSpoofCheck accepted another interface")
	}
	if err := c.DelAttachment(a); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, c); len(got) != 0 {
		t.Fatalf("rules left after DEL: %q", got)
	}
	if err := c.CheckMacSpoofCheck(a, "veth1234", m); err == nil {
		t.Error("CheckMacSpoofCheck succeeded after DEL")
	}
}

// TestMacSpoofRuleText checks with the nft tool that the rule means what
// the reference macspoofchk means and carries the identity as a comment.
func TestMacSpoofRuleText(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	if err := c.AddMacSpoofCheck(att("net1", "c1", "eth0"), "veth1234", mac(t, "02:42:0a:01:00:05")); err != nil {
		t.Fatal(err)
	}
	out := nftList(t, ns)
	for _, want := range []string{
		"table bridge podnet",
		"type filter hook prerouting priority dstnat; policy accept;", // -300 in the bridge family,
		`iifname "veth1234" ether saddr != 02:42:0a:01:00:05 drop comment "net1/c1/eth0"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
}

// TestDelAttachmentRemovesEveryFeature adds both features for one
// attachment and removes them with one DEL, leaving others' rules alone.
func TestDelAttachmentRemovesEveryFeature(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a, b := att("net1", "c1", "eth0"), att("net1", "c2", "eth0")
	for _, x := range []struct {
		a   attachment.ID
		ip  string
		dev string
		mac string
	}{{a, "10.1.0.5/24", "veth-a", "02:00:00:00:00:0a"}, {b, "10.1.0.6/24", "veth-b", "02:00:00:00:00:0b"}} {
		if err := c.AddMasquerade(x.a, cidrs(t, x.ip)); err != nil {
			t.Fatal(err)
		}
		if err := c.AddMacSpoofCheck(x.a, x.dev, mac(t, x.mac)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DelAttachment(a); err != nil {
		t.Fatal(err)
	}
	want := []string{"macspoofchk " + b.String(), "masquerade " + b.String()}
	if got := owners(t, c); !equal(got, want) {
		t.Fatalf("rules %q, want %q", got, want)
	}
	if err := c.CheckMasquerade(b, cidrs(t, "10.1.0.6/24")); err != nil {
		t.Error(err)
	}
	if err := c.CheckMacSpoofCheck(b, "veth-b", mac(t, "02:00:00:00:00:0b")); err != nil {
		t.Error(err)
	}
}

func TestDelUnknownAttachment(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("net1", "nope", "eth0")
	// No podnet table at all.
	if err := c.DelAttachment(a); err != nil {
		t.Fatalf("DEL without tables: %v", err)
	}
	if err := c.GC("net1", func(attachment.ID) bool { return false }); err != nil {
		t.Fatalf("GC without tables: %v", err)
	}
	// Tables exist, with another attachment's rules.
	b := att("net1", "other", "eth0")
	if err := c.AddMasquerade(b, cidrs(t, "10.1.0.5/24")); err != nil {
		t.Fatal(err)
	}
	if err := c.DelAttachment(a); err != nil {
		t.Fatalf("DEL of unknown attachment: %v", err)
	}
	if err := c.CheckMasquerade(b, cidrs(t, "10.1.0.5/24")); err != nil {
		t.Error(err)
	}
}

func TestGC(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	stale1, valid, stale2 := att("net1", "c1", "eth0"), att("net1", "c2", "eth0"), att("net1", "c3", "net1")
	otherNet := att("net2", "c1", "eth0")
	for i, a := range []attachment.ID{stale1, valid, stale2, otherNet} {
		if err := c.AddMasquerade(a, cidrs(t, fmt.Sprintf("10.1.0.%d/24", i+2), fmt.Sprintf("fd00::%d/64", i+2))); err != nil {
			t.Fatal(err)
		}
		if err := c.AddMacSpoofCheck(a, fmt.Sprintf("veth%d", i), mac(t, fmt.Sprintf("02:00:00:00:00:%02x", i))); err != nil {
			t.Fatal(err)
		}
	}
	// A rule without identity (someone else's) must survive GC and DEL.
	addForeignRule(t, c)

	var asked []string
	var mu sync.Mutex
	keep := func(a attachment.ID) bool {
		mu.Lock()
		asked = append(asked, a.String())
		mu.Unlock()
		return a == valid
	}
	if err := c.GC("net1", keep); err != nil {
		t.Fatal(err)
	}
	for _, s := range asked {
		if !strings.HasPrefix(s, "net1/") {
			t.Errorf("GC of net1 asked about %s", s)
		}
	}
	want := []string{
		"macspoofchk " + otherNet.String(), "macspoofchk " + valid.String(),
		"masquerade ", // the foreign rule
		"masquerade " + otherNet.String(), "masquerade " + otherNet.String(),
		"masquerade " + valid.String(), "masquerade " + valid.String(),
	}
	sort.Strings(want)
	if got := owners(t, c); !equal(got, want) {
		t.Fatalf("after GC rules are\n%q\nwant\n%q", got, want)
	}
	// GC with everything valid changes nothing.
	if err := c.GC("net1", func(attachment.ID) bool { return true }); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, c); !equal(got, want) {
		t.Fatalf("GC keeping all removed rules: %q", got)
	}
	if err := c.DelAttachment(valid); err != nil {
		t.Fatal(err)
	}
	if err := c.DelAttachment(otherNet); err != nil {
		t.Fatal(err)
	}
	if got := owners(t, c); !equal(got, []string{"masquerade "}) {
		t.Fatalf("foreign rule not kept alone: %q", got)
	}
}

// addForeignRule adds a rule without podnet identity to the masquerade
// chain, as an administrator might.
func addForeignRule(t *testing.T, c *Conn) {
	t.Helper()
	addRules(t, c, masqChain, &nftables.Rule{Table: inetTable, Chain: masqChain, Exprs: []expr.Any{&expr.Counter{}}})
}

// addRules adds rules without owner to chain, creating it.
func addRules(t *testing.T, c *Conn, chain *nftables.Chain, rules ...*nftables.Rule) {
	t.Helper()
	err := c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		tx.AddTable(chain.Table)
		tx.AddChain(chain)
		for _, r := range rules {
			tx.AddRule(r, "")
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestExistingTablesUntouched checks that the "add table/chain" of every
// ADD neither fails on existing objects nor flushes them, including a chain
// someone else added to podnet's table.
func TestExistingTablesUntouched(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("net1", "c1", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.5/24")); err != nil {
		t.Fatal(err)
	}
	extra := &nftables.Chain{Table: inetTable, Name: "extra"}
	addRules(t, c, extra, &nftables.Rule{Table: inetTable, Chain: extra, Exprs: []expr.Any{&expr.Counter{}}})
	for i := 0; i < 3; i++ {
		b := att("net1", fmt.Sprintf("n%d", i), "eth0")
		if err := c.AddMasquerade(b, cidrs(t, fmt.Sprintf("10.1.0.%d/24", 10+i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.CheckMasquerade(a, cidrs(t, "10.1.0.5/24")); err != nil {
		t.Error(err)
	}
	if got := owners(t, c); len(got) != 5 {
		t.Errorf("rules %q, want 4 masquerade rules and the extra chain's", got)
	}
}

func TestInvalidInput(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a := att("net1", "c1", "eth0")
	for _, ipn := range []*net.IPNet{
		nil,
		{IP: net.ParseIP("10.1.0.5")},
		{IP: net.ParseIP("fd00::1"), Mask: net.CIDRMask(24, 32)},
		{IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(24, 32)},
	} {
		if err := c.AddMasquerade(a, []*net.IPNet{ipn}); err == nil {
			t.Errorf("AddMasquerade(%v) succeeded", ipn)
		}
	}
	if err := c.AddMacSpoofCheck(a, "", mac(t, "02:00:00:00:00:01")); err == nil {
		t.Error("empty interface name accepted")
	}
	if err := c.AddMacSpoofCheck(a, "a-very-long-interface", mac(t, "02:00:00:00:00:01")); err == nil {
		t.Error("interface name longer than IFNAMSIZ accepted")
	}
	if err := c.AddMacSpoofCheck(a, "veth1", net.HardwareAddr{1, 2}); err == nil {
		t.Error("short MAC accepted")
	}
	long := att(strings.Repeat("n", 200), strings.Repeat("c", 64), "eth0")
	if err := c.AddMasquerade(long, cidrs(t, "10.1.0.5/24")); err == nil {
		t.Error("identity too long for a comment accepted")
	}
	if err := c.AddMasquerade(att("", "c1", "eth0"), cidrs(t, "10.1.0.5/24")); err == nil {
		t.Error("attachment without network accepted")
	}
	if got := owners(t, c); len(got) != 0 {
		t.Errorf("invalid input left rules: %q", got)
	}
}

func TestClosed(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	a := att("net1", "c1", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.5/24")); !errors.Is(err, nft.ErrClosed) {
		t.Errorf("AddMasquerade after Close: %v", err)
	}
	if err := c.DelAttachment(a); !errors.Is(err, nft.ErrClosed) {
		t.Errorf("DelAttachment after Close: %v", err)
	}
	if err := c.CheckMasquerade(a, cidrs(t, "10.1.0.5/24")); !errors.Is(err, nft.ErrClosed) {
		t.Errorf("CheckMasquerade after Close: %v", err)
	}
}
