package egress

import (
	"net"
	"reflect"
	"strings"
	"testing"

	"github.com/google/nftables"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nft/podrules"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

func TestElements(t *testing.T) {
	for _, tc := range []struct {
		name     string
		cidrs    []string
		v4, v6   []nftables.SetElement
		wantFail bool
	}{
		{name: "none"},
		{
			name:  "dual-stack",
			cidrs: []string{"10.244.0.0/16", "fd00:10:244::/56"},
			v4:    []nftables.SetElement{{Key: []byte{10, 244, 0, 0}}, {Key: []byte{10, 245, 0, 0}, IntervalEnd: true}},
			v6: []nftables.SetElement{
				{Key: net.ParseIP("fd00:10:244::")},
				{Key: net.ParseIP("fd00:10:244:100::"), IntervalEnd: true},
			},
		},
		{
			name:  "host bits and a contained prefix",
			cidrs: []string{"10.244.1.7/24", "10.244.0.0/16"},
			v4:    []nftables.SetElement{{Key: []byte{10, 244, 0, 0}}, {Key: []byte{10, 245, 0, 0}, IntervalEnd: true}},
		},
		{name: "nil", cidrs: nil, wantFail: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := elements(nfttest.CIDRs(t, tc.cidrs...))
			if (err != nil) != tc.wantFail {
				t.Fatalf("err = %v", err)
			}
			if !reflect.DeepEqual(got[0], tc.v4) || !reflect.DeepEqual(got[1], tc.v6) {
				t.Errorf("elements = %v, want %v %v", got, tc.v4, tc.v6)
			}
		})
	}
	if _, err := elements([]*net.IPNet{nil}); err == nil {
		t.Error("nil CIDR accepted")
	}
}

func TestSync(t *testing.T) {
	ns := nfttest.NS(t, "nftegress")
	e, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	// A plugin's rules share the table.
	p, err := podrules.New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := attachment.ID{Network: "net1", ContainerID: "c1", IfName: "eth0"}
	if err := p.AddMasquerade(a, nfttest.CIDRs(t, "10.244.1.5/24")); err != nil {
		t.Fatal(err)
	}
	var handles []uint64 // the chain's rules, never rewritten by a CIDR change
	steps := []struct {
		name      string
		cidrs     []string
		wantWrite bool
	}{
		{"first sync writes", []string{"10.244.0.0/16"}, true},
		{"same again changes nothing", []string{"10.244.0.0/16"}, false},
		{"dual-stack adds elements", []string{"10.244.0.0/16", "fd00:10:244::/56"}, true},
		{"dual-stack again changes nothing", []string{"10.244.0.0/16", "fd00:10:244::/56"}, false},
		{"a CIDR changes", []string{"10.245.0.0/16", "10.246.0.0/16", "fd00:10:244::/56"}, true},
		{"back to dual-stack", []string{"10.244.0.0/16", "fd00:10:244::/56"}, true},
	}
	for _, s := range steps {
		wrote, err := e.Sync(nfttest.CIDRs(t, s.cidrs...))
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if wrote != s.wantWrite {
			t.Errorf("%s: wrote=%v, want %v", s.name, wrote, s.wantWrite)
		}
		want, _ := elements(nfttest.CIDRs(t, s.cidrs...))
		for i, set := range sets {
			have, err := e.nft.Elements(set)
			if err != nil {
				t.Fatal(err)
			}
			if add, del := nft.Diff(have, want[i]); len(add)+len(del) != 0 {
				t.Errorf("%s: %s lacks %v, has stale %v", s.name, set.Name, add, del)
			}
		}
		rules, err := e.nft.List(table, Chain)
		if err != nil {
			t.Fatal(err)
		}
		var hs []uint64
		for _, r := range rules {
			hs = append(hs, r.Handle)
		}
		if handles != nil && !reflect.DeepEqual(hs, handles) {
			t.Errorf("%s: the chain was rewritten: rules %v, were %v", s.name, hs, handles)
		}
		handles = hs
	}
	if len(handles) != 2 {
		t.Fatalf("egress chain holds %d rules, want 2", len(handles))
	}
	// A plugin's GC of every attachment leaves the agent's rules alone.
	if err := p.GC("net1", func(attachment.ID) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if wrote, err := e.Sync(nfttest.CIDRs(t, "10.244.0.0/16", "fd00:10:244::/56")); err != nil || wrote {
		t.Errorf("after plugin GC: wrote=%v err=%v, want the egress rules untouched", wrote, err)
	}
	ruleset := nfttest.Ruleset(t, ns) // skips from here without nft
	for _, want := range []string{
		"ip saddr @cluster-cidrs4 ip daddr != @cluster-cidrs4 ip daddr != 224.0.0.0/4 masquerade",
		"ip6 saddr @cluster-cidrs6 ip6 daddr != @cluster-cidrs6 ip6 daddr != ff00::/8 masquerade",
		`comment "podnet-agent egress"`,
		"elements = { 10.244.0.0/16 }",
	} {
		if !strings.Contains(ruleset, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, ruleset)
		}
	}
}

func TestDelete(t *testing.T) {
	ns := nfttest.NS(t, "nftegress")
	e, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if err := e.Delete(); err != nil {
		t.Fatalf("Delete before Sync: %v", err)
	}
	if _, err := e.Sync(nfttest.CIDRs(t, "10.244.0.0/16")); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := e.Delete(); err != nil {
			t.Fatalf("Delete #%d: %v", i+1, err)
		}
	}
	if rules, err := e.nft.List(table, Chain); err != nil || len(rules) != 0 {
		t.Errorf("egress rules left after Delete: %v %v", rules, err)
	}
	for _, s := range sets {
		if elems, err := e.nft.Elements(s); err != nil || len(elems) != 0 {
			t.Errorf("%s left after Delete: %v %v", s.Name, elems, err)
		}
	}
	if ruleset := nfttest.Ruleset(t, ns); strings.Contains(ruleset, "table inet podnet") {
		t.Errorf("the empty table is left after Delete:\n%s", ruleset)
	}
	// Sync after Delete rebuilds everything.
	if wrote, err := e.Sync(nfttest.CIDRs(t, "10.244.0.0/16")); err != nil || !wrote {
		t.Errorf("Sync after Delete: wrote=%v err=%v", wrote, err)
	}
	// With a plugin's rules in the table, Delete leaves the table and them.
	p, err := podrules.New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if err := p.AddMasquerade(attachment.ID{Network: "net1", ContainerID: "c1", IfName: "eth0"}, nfttest.CIDRs(t, "10.244.1.5/24")); err != nil {
		t.Fatal(err)
	}
	if err := e.Delete(); err != nil {
		t.Fatal(err)
	}
	if ruleset := nfttest.Ruleset(t, ns); !strings.Contains(ruleset, `comment "net1/c1/eth0"`) || strings.Contains(ruleset, "podnet-agent egress") {
		t.Errorf("Delete with a plugin's rules in the table: want them kept, the egress rules gone:\n%s", ruleset)
	}
}

func TestRules(t *testing.T) {
	want := []string{
		"meta nfproto ipv4 ip saddr @cluster-cidrs4 ip daddr != @cluster-cidrs4 ip daddr != 224.0.0.0/4 masquerade",
		"meta nfproto ipv6 ip6 saddr @cluster-cidrs6 ip6 daddr != @cluster-cidrs6 ip6 daddr != ff00::/8 masquerade",
	}
	var got []string
	for _, r := range Rules() {
		got = append(got, nfttest.Render(r.Exprs))
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("rules\n%q\nwant\n%q", got, want)
	}
}
