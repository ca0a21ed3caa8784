package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/testing/nfttest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// syntheticPod is pod i of namespace ns with an address in the pod
// CIDRs (i < 65536).
func syntheticPod(ns string, i int) policy.Pod {
	return policy.Pod{Namespace: ns, Name: fmt.Sprintf("pod%d", i),
		IPs: []netip.Addr{netip.AddrFrom4([4]byte{10, 244, byte(i >> 8), byte(i)}), netip.MustParseAddr(fmt.Sprintf("fd00:244:1::%x", i+1))}}
}

// bigModel is n pods, pods i ≥ 1 isolated for ingress by a policy of
// their own allowing a set of pods 0..i-1 on a port (pod 0 unpoliced).
func bigModel(n int) *policy.Model {
	m := &policy.Model{}
	for i := range n {
		p := syntheticPod("big", i)
		if i > 0 {
			set := fmt.Sprintf("set%d", i)
			var rs []policy.Range
			for j := range min(i, 3) {
				q := syntheticPod("big", j)
				rs = append(rs, policy.Range{From: q.IPs[0], To: q.IPs[0]})
			}
			m.AddrSets = append(m.AddrSets, policy.AddrSet{Name: set, Key: set, Ranges: rs})
			p.Ingress = isolated(fmt.Sprintf("big/policy%d", i), policy.Rule{Peers: set, Ports: []policy.PortRange{tcp(80, 80)}})
		}
		m.Pods = append(m.Pods, p)
	}
	return m
}

// chainHandles returns the rule handles of a chain.
func chainHandles(t *testing.T, c *nft.Conn, chain string) []uint64 {
	t.Helper()
	rules, err := c.List(table, chain)
	if err != nil {
		t.Fatal(err)
	}
	var hs []uint64
	for _, r := range rules {
		hs = append(hs, r.Handle)
	}
	return hs
}

// checkKernel compares the table's chains, rules and set elements in the
// kernel with the totals of the sync's Stats.
func checkKernel(t *testing.T, tb *Table, c *nft.Conn, st Stats) {
	t.Helper()
	var chains []string
	if err := c.Transact(func(tx *nft.Tx) (bool, error) {
		var err error
		chains, err = tx.Chains(table)
		return false, err
	}); err != nil {
		t.Fatal(err)
	}
	if len(chains) != st.Chains {
		t.Errorf("kernel has %d chains, Stats %d", len(chains), st.Chains)
	}
	rules, err := c.List(table, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(rules) != st.Rules {
		t.Errorf("kernel has %d rules, Stats %d", len(rules), st.Rules)
	}
	elems := 0
	for _, s := range tb.last.sets {
		es, err := c.Elements(s.set)
		if err != nil {
			t.Fatal(err)
		}
		elems += len(es)
	}
	if elems != st.Elements {
		t.Errorf("kernel has %d elements, Stats %d", elems, st.Elements)
	}
}

func TestIncremental(t *testing.T) {
	ns := nfttest.NS(t, "dppinc")
	tb, err := New(Config{NetNSFd: ns.Fd(), PodCIDRs: podCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	c, err := nft.New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	m := bigModel(200)
	st, err := tb.Sync(m)
	if err != nil {
		t.Fatal(err)
	}
	checkKernel(t, tb, c, st)
	other := prefixIngress + "big/pod7"
	before := chainHandles(t, c, other)
	if len(before) == 0 {
		t.Fatalf("chain %s has no rules", other)
	}

	steps := []struct {
		name   string
		change func(m *policy.Model)
		// written is the exact number of objects the sync writes.
		written int
	}{
		{"same model: nothing", func(*policy.Model) {}, 0},
		{"a pod added, unpoliced: its two map elements per direction", func(m *policy.Model) {
			m.Pods = append(m.Pods, syntheticPod("big", 300))
		}, 4},
		{"the pod joins a set: one element (start and end)", func(m *policy.Model) {
			s := &m.AddrSets[41]
			a := syntheticPod("big", 300).IPs[0]
			s.Ranges = append(s.Ranges, policy.Range{From: a, To: a})
		}, 2},
		{"the pod leaves the set: one element (start and end)", func(m *policy.Model) {
			s := &m.AddrSets[41]
			s.Ranges = s.Ranges[:len(s.Ranges)-1]
		}, 2},
		{"the pod joins a set where it touches a member: the merged range replaces the member's", func(m *policy.Model) {
			s := &m.AddrSets[0] // set1: pod 0 alone, 10.244.0.0
			a := syntheticPod("big", 1).IPs[0]
			s.Ranges = append(s.Ranges, policy.Range{From: a, To: a})
		}, 4},
		{"a pod isolated for egress: its map elements changed (deleted, added), a chain, a deny chain and counter", func(m *policy.Model) {
			p := &m.Pods[len(m.Pods)-1]
			p.Egress = isolated("big/egress")
		}, 6},
		{"its policy allows a new port: its chain rewritten, a port set", func(m *policy.Model) {
			p := &m.Pods[len(m.Pods)-1]
			p.Egress.Rules = []policy.Rule{{Ports: []policy.PortRange{tcp(53, 53)}}}
		}, 3},
		{"the pod gone: its map elements, chain, deny chain and counter, port set", func(m *policy.Model) {
			m.Pods = m.Pods[:len(m.Pods)-1]
		}, 7},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.change(m)
			st, err := tb.Sync(m)
			if err != nil {
				t.Fatal(err)
			}
			if st.Full {
				t.Error("incremental sync was full")
			}
			if st.Written != step.written {
				t.Errorf("wrote %d objects, want %d", st.Written, step.written)
			}
			if after := chainHandles(t, c, other); !slices.Equal(before, after) {
				t.Errorf("another pod's chain was rewritten: handles %v → %v", before, after)
			}
			checkKernel(t, tb, c, st)
		})
	}
}

// BenchmarkPodJoinsSet measures a sync at 1,000 pods and policies that
// adds a pod to a peer set, and removes it again: what a pod created
// costs its peers' nodes.
func BenchmarkPodJoinsSet(b *testing.B) {
	ns := nfttest.NS(b, "dppbench")
	tb, err := New(Config{NetNSFd: ns.Fd(), PodCIDRs: podCIDRs})
	if err != nil {
		b.Fatal(err)
	}
	defer tb.Close()
	m := bigModel(1000)
	if _, err := tb.Sync(m); err != nil {
		b.Fatal(err)
	}
	s := &m.AddrSets[500]
	members := s.Ranges
	a := syntheticPod("big", 2000).IPs[0]
	joined := append(slices.Clone(members), policy.Range{From: a, To: a})
	b.ResetTimer()
	for i := range b.N {
		s.Ranges = joined
		if i%2 == 1 {
			s.Ranges = members
		}
		st, err := tb.Sync(m)
		if err != nil {
			b.Fatal(err)
		}
		if st.Written != 2 {
			b.Fatalf("wrote %d objects, want 2", st.Written)
		}
	}
}

// TestFlatCost shows the per-packet cost does not grow with the cluster:
// an unrelated pod's chain keeps its rules whatever the number of other
// pods and policies, and the base chains keep theirs.
func TestFlatCost(t *testing.T) {
	ns := nfttest.NS(t, "dppflat")
	c, err := nft.New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var counts [][3]int
	for _, n := range []int{10, 1000} {
		tb, err := New(Config{NetNSFd: ns.Fd(), PodCIDRs: podCIDRs})
		if err != nil {
			t.Fatal(err)
		}
		m := bigModel(n)
		st, err := tb.Sync(m)
		tb.Close()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d pods and policies: %+v", n, st)
		counts = append(counts, [3]int{
			len(chainHandles(t, c, prefixIngress+"big/pod5")),
			len(chainHandles(t, c, chainForward)),
			len(chainHandles(t, c, chainIngress)),
		})
	}
	if counts[0] != counts[1] {
		t.Errorf("rules of a pod's chain, forward, dispatch-ingress: %v at 10 pods, %v at 1000", counts[0], counts[1])
	}
}

func TestListing(t *testing.T) {
	ns := nfttest.NS(t, "dpplist")
	tb, err := New(Config{NetNSFd: ns.Fd(), PodCIDRs: podCIDRs, LogGroup: 7})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	m := bigModel(3)
	m.EndpointSets = []policy.EndpointSet{{Name: "eps", Key: "eps", Endpoints: []policy.Endpoint{{Addr: m.Pods[0].IPs[0], Protocol: policy.SCTP, Port: 7000}}}}
	m.Pods[0].Egress = isolated("big/named", policy.Rule{Endpoints: "eps"})
	m.Pods[0].Egress.Admin = []policy.TierRule{{Policy: "admin-pass", Action: policy.Pass, Rule: policy.Rule{Peers: "set1"}}}
	if _, err := tb.Sync(m); err != nil {
		t.Fatal(err)
	}
	out := nfttest.Ruleset(t, ns)
	for _, want := range []string{
		"table inet " + TableName,
		"hook forward priority filter; policy accept;",
		"hook input priority filter; policy accept;",
		"ct state established,related accept",
		"ip saddr vmap @egress4",
		"ip6 daddr vmap @ingress6",
		"fib daddr type local accept",
		"ip daddr @pod-cidrs4 drop",
		"10.244.0.1 : goto ingress/big/pod1",
		"ip saddr @set1-4 meta l4proto . th dport @ports-",
		"tcp . 80",
		"ip daddr . meta l4proto . th dport @eps-ep4 goto dispatch-ingress",
		"10.244.0.0 . sctp . 7000",
		"ip daddr @set1-4 goto egress/big/pod0/np",
		`limit rate 10/second log prefix "networkpolicy ingress big/policy1" group 7`,
		`counter name "deny/networkpolicy/ingress/big/policy1" drop`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
}

func TestInvalid(t *testing.T) {
	ns := nfttest.NS(t, "dppinv")
	tb, err := New(Config{NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	good := func() *policy.Model { return bigModel(3) }
	for _, tc := range []struct {
		name   string
		change func(m *policy.Model)
		want   string
	}{
		{"pod twice", func(m *policy.Model) { m.Pods = append(m.Pods, m.Pods[0]) }, "given twice"},
		{"address of two pods", func(m *policy.Model) { m.Pods[1].IPs = m.Pods[0].IPs }, "also pod"},
		{"invalid address", func(m *policy.Model) { m.Pods[1].IPs = []netip.Addr{{}} }, "invalid address"},
		{"no name", func(m *policy.Model) { m.Pods[1].Name = "" }, "no namespace or name"},
		{"unknown address set", func(m *policy.Model) { m.Pods[1].Ingress.Rules[0].Peers = "nope" }, "unknown address set"},
		{"unknown endpoint set", func(m *policy.Model) { m.Pods[1].Ingress.Rules[0] = policy.Rule{Endpoints: "nope"} }, "unknown endpoint set"},
		{"invalid action", func(m *policy.Model) {
			m.Pods[1].Ingress.Admin = []policy.TierRule{{Policy: "x", Action: 9}}
		}, "invalid action"},
		{"invalid port range", func(m *policy.Model) { m.Pods[1].Ingress.Rules[0].Ports = []policy.PortRange{tcp(90, 80)} }, "port range"},
		{"invalid address range", func(m *policy.Model) {
			m.AddrSets[0].Ranges = []policy.Range{{From: netip.MustParseAddr("10.0.0.2"), To: netip.MustParseAddr("10.0.0.1")}}
		}, "invalid range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := good()
			tc.change(m)
			if _, err := tb.Sync(m); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Sync = %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := tb.Sync(nil); err == nil {
		t.Error("a nil Model was accepted")
	}
	if _, err := New(Config{PodCIDRs: []netip.Prefix{{}}}); err == nil {
		t.Error("an invalid pod CIDR was accepted")
	}
}

func TestRestartDeniedAndCleanup(t *testing.T) {
	l := newLab(t, 3)
	p1, p2, p3 := l.pods[0], l.pods[1], l.pods[2]
	cfg := Config{NetNSFd: l.node.Fd(), PodCIDRs: podCIDRs, LogGroup: 3}
	tb, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m := &policy.Model{Pods: []policy.Pod{modelPod(p1), modelPod(p2), modelPod(p3)}}
	if _, err := tb.Sync(m); err != nil {
		t.Fatal(err)
	}
	conn, err := connectTCP(p1.ns, netip.AddrPortFrom(p2.ip4, portA), 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := echo(conn, "before"); err != nil {
		t.Fatal(err)
	}

	// p2 isolated: the established connection keeps flowing, a new one
	// is denied and counted.
	m.Pods[1].Ingress = isolated("ns/deny")
	if _, err := tb.Sync(m); err != nil {
		t.Fatal(err)
	}
	if err := echo(conn, "isolated"); err != nil {
		t.Errorf("established connection after isolation: %v", err)
	}
	check(t, []probe{{from: p3, to: netip.AddrPortFrom(p2.ip4, portA)}, {from: p1, to: netip.AddrPortFrom(p2.ip6, portB)}})
	var denied []Denied
	poll.Until(t, 5*time.Second, "denied packets counted", func() bool {
		denied, err = tb.Denied()
		if err != nil {
			t.Fatal(err)
		}
		return len(denied) == 1 && denied[0].Packets >= 2
	})
	if d := denied[0]; d.Tier != TierNetworkPolicy || d.Policy != "ns/deny" || d.Direction != "ingress" {
		t.Errorf("Denied = %+v", denied)
	}

	// The agent restarts: a new Table rewrites the table in one
	// transaction; the established connection keeps working, the policy
	// stays enforced, and the counter restarts from zero.
	tb.Close()
	tb2, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer tb2.Close()
	st, err := tb2.Sync(m)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full {
		t.Error("first sync after a restart was not full")
	}
	if err := echo(conn, "after restart"); err != nil {
		t.Errorf("established connection after the restart: %v", err)
	}
	check(t, []probe{{from: p3, to: netip.AddrPortFrom(p2.ip4, portA)}, {from: p2, to: netip.AddrPortFrom(p3.ip4, portA), allow: true}})

	for i := range 2 {
		if err := Cleanup(l.node.Fd()); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
	}
	if out := nfttest.Ruleset(t, l.node); strings.Contains(out, TableName) {
		t.Errorf("table left after Cleanup:\n%s", out)
	}
	check(t, []probe{{from: p3, to: netip.AddrPortFrom(p2.ip4, portA), allow: true}})
}

func TestLongNames(t *testing.T) {
	ns := nfttest.NS(t, "dpplong")
	tb, err := New(Config{NetNSFd: ns.Fd(), PodCIDRs: podCIDRs, LogGroup: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	m := bigModel(2)
	p := &m.Pods[1]
	p.Name = strings.Repeat("p", 253)
	p.Ingress.Policies = []string{"big/" + strings.Repeat("a", 253), "big/" + strings.Repeat("b", 253)}
	p.Ingress.Admin = []policy.TierRule{{Policy: strings.Repeat("c", 253), Action: policy.Pass}}
	if _, err := tb.Sync(m); err != nil {
		t.Fatal(err)
	}
	out := nfttest.Ruleset(t, ns)
	for _, want := range []string{"chain ingress/#", "goto ingress/#", "/np", "counter name \"deny/#"} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
}
