package main

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/testing/nfttest"
)

// TestInPeerSet writes a policy table shaped like the data plane's (an
// address set, an interval set, a concatenated endpoint set, a verdict
// map keyed by local pods) into a throwaway namespace and looks
// addresses up in it through the kernel.
func TestInPeerSet(t *testing.T) {
	ns := nfttest.NS(t, "bpol-set")
	ok, err := inPeerSet(ns.NS, netip.MustParseAddr("10.244.9.7"))
	if err != nil || ok {
		t.Fatalf("no table: inPeerSet = %v, %v; want false, nil", ok, err)
	}

	c, err := nftables.New(nftables.WithNetNSFd(ns.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	tbl := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: policyTable})
	v4 := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	add := func(s *nftables.Set, els []nftables.SetElement) {
		t.Helper()
		s.Table = tbl
		if err := c.AddSet(s, els); err != nil {
			t.Fatalf("set %s: %v", s.Name, err)
		}
	}
	add(&nftables.Set{Name: "plain", KeyType: nftables.TypeIPAddr}, []nftables.SetElement{{Key: v4("10.244.9.7")}})
	add(&nftables.Set{Name: "ranges", KeyType: nftables.TypeIPAddr, Interval: true}, []nftables.SetElement{
		{Key: v4("0.0.0.0"), IntervalEnd: true},
		{Key: v4("10.244.8.0")}, {Key: v4("10.244.9.0"), IntervalEnd: true},
		{Key: v4("192.168.0.0")}, {Key: v4("192.169.0.0"), IntervalEnd: true},
	})
	endpoint, err := nftables.ConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	if err != nil {
		t.Fatal(err)
	}
	add(&nftables.Set{Name: "endpoints", KeyType: endpoint, Concatenation: true}, []nftables.SetElement{
		{Key: []byte{10, 244, 7, 3, unix.IPPROTO_TCP, 0, 0, 0, 0, 80, 0, 0}},
	})
	add(&nftables.Set{Name: "endpoint-ranges", KeyType: endpoint, Concatenation: true, Interval: true}, []nftables.SetElement{
		{Key: []byte{10, 244, 4, 0, unix.IPPROTO_TCP, 0, 0, 0, 0, 80, 0, 0}, KeyEnd: []byte{10, 244, 4, 127, unix.IPPROTO_TCP, 0, 0, 0, 0, 90, 0, 0}},
	})
	c.AddChain(&nftables.Chain{Name: "pod-x", Table: tbl})
	add(&nftables.Set{Name: "pods", KeyType: nftables.TypeIPAddr, DataType: nftables.TypeVerdict, IsMap: true}, []nftables.SetElement{
		{Key: v4("10.244.6.1"), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: "pod-x"}},
	})
	add(&nftables.Set{Name: "plain6", KeyType: nftables.TypeIP6Addr}, []nftables.SetElement{{Key: netip.MustParseAddr("fd00::1").AsSlice()}})
	if err := c.Flush(); err != nil {
		t.Fatalf("write the fixture table: %v", err)
	}

	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"10.244.9.7", true},    // plain set
		{"10.244.8.0", true},    // an interval's start
		{"10.244.8.255", true},  // its last address
		{"10.244.9.0", false},   // its end element is one past it
		{"192.168.3.4", true},   // another interval
		{"10.244.7.3", true},    // an endpoint set's peer
		{"10.244.4.100", true},  // an endpoint range's peer
		{"10.244.4.200", false}, // past it
		{"10.244.6.1", false},   // a verdict map's key is no peer
		{"10.244.5.5", false},
		{"fd00::1", true},
		{"fd00::2", false},
	} {
		got, err := inPeerSet(ns.NS, netip.MustParseAddr(tc.ip))
		if err != nil || got != tc.want {
			t.Errorf("inPeerSet(%s) = %v, %v; want %v", tc.ip, got, err, tc.want)
		}
	}
}
