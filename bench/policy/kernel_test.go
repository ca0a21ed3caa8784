package main

import (
	"net/netip"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/policy/dataplane"
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

// TestInPeerSetDataplane looks peers up in a table that podnet's policy
// data plane wrote from a model: an address set (ranges) and an endpoint
// set (a named port's peers).
func TestInPeerSetDataplane(t *testing.T) {
	ns := nfttest.NS(t, "bpol-dp")
	tbl, err := dataplane.New(dataplane.Config{NetNSFd: ns.Fd(), PodCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/24")}})
	if err != nil {
		t.Fatal(err)
	}
	defer tbl.Close()
	a := netip.MustParseAddr
	m := &policy.Model{
		Pods: []policy.Pod{{Namespace: "bench-policy", Name: "probe-0", IPs: []netip.Addr{a("10.244.0.2")},
			Ingress: policy.Direction{Isolated: true, Policies: []string{"bench-policy/peers"}, Rules: []policy.Rule{
				{Peers: "peers", Ports: []policy.PortRange{{Protocol: policy.TCP, From: peerPort, To: peerPort}}},
				{Endpoints: "named"},
			}}}},
		AddrSets: []policy.AddrSet{{Name: "peers", Key: "pods {role=peer} in namespace bench-peers",
			Ranges: []policy.Range{{From: a("10.244.2.102"), To: a("10.244.2.102")}, {From: a("10.244.2.110"), To: a("10.244.2.120")}}}},
		EndpointSets: []policy.EndpointSet{{Name: "named", Key: "pods {app=a-1} port http",
			Endpoints: []policy.Endpoint{{Addr: a("10.244.3.7"), Protocol: policy.TCP, Port: 80}}}},
	}
	if _, err := tbl.Sync(m); err != nil {
		t.Fatalf("sync: %v", err)
	}
	for _, tc := range []struct {
		ip   string
		want bool
	}{
		{"10.244.2.102", true},
		{"10.244.2.115", true},
		{"10.244.2.121", false},
		{"10.244.3.7", true},
		{"10.244.0.2", false}, // the local pod: a verdict map's key
		{"10.244.0.9", false}, // in the node's pod CIDRs, no peer
	} {
		got, err := inPeerSet(ns.NS, a(tc.ip))
		if err != nil || got != tc.want {
			t.Errorf("inPeerSet(%s) = %v, %v; want %v", tc.ip, got, err, tc.want)
		}
	}
}
