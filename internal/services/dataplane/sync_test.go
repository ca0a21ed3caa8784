package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// manyServices returns n TCP services with eps endpoints each, every
// tenth with a node port, every hundredth with affinity.
func manyServices(n, eps int) []Service {
	svcs := make([]Service, n)
	for i := range svcs {
		s := &svcs[i]
		*s = Service{
			Namespace: "ns", Name: fmt.Sprintf("svc%d", i), Protocol: TCP, Family: IPv4,
			ClusterIP: netip.AddrFrom4([4]byte{10, 96, byte(i >> 8), byte(i)}), Port: 80,
		}
		if i%10 == 0 {
			s.NodePort = uint16(30000 + i%2768)
		}
		if i%100 == 0 {
			s.Affinity = 3 * time.Hour
		}
		for j := range eps {
			k := i*eps + j
			s.Internal = append(s.Internal, Endpoint{Addr: netip.AddrFrom4([4]byte{10, 244, byte(k >> 8), byte(k)}), Port: 8080})
		}
		s.External = s.Internal
	}
	// Node ports must be distinct.
	seen := map[uint16]bool{}
	for i := range svcs {
		if np := svcs[i].NodePort; np != 0 && seen[np] {
			svcs[i].NodePort = 0
		} else {
			seen[np] = true
		}
	}
	return svcs
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

func TestIncremental(t *testing.T) {
	ns := nfttest.NS(t, "dpinc")
	tb, c := newTable(t, ns.Fd()), nftConn(t, ns)

	svcs := manyServices(200, 5)
	if _, err := tb.Sync(svcs); err != nil {
		t.Fatal(err)
	}
	// A service with a chain of its own (a node port).
	other := prefixService + "ns/svc10//TCP/ipv4"
	before := chainHandles(t, c, other)
	if len(before) == 0 {
		t.Fatalf("chain %s has no rules", other)
	}

	endpoint := func(k byte) Endpoint { return Endpoint{Addr: netip.AddrFrom4([4]byte{10, 245, 0, k}), Port: 8080} }
	steps := []struct {
		name     string
		change   func(s *Service) // of svcs[1]
		maxWrite int
	}{
		{"same services: nothing", func(*Service) {}, 0},
		{"endpoints in another order: nothing", func(s *Service) { slices.Reverse(s.Internal) }, 0},
		{"one endpoint replaced", func(s *Service) { s.Internal[2] = endpoint(1) }, 4},
		{"one endpoint added", func(s *Service) { s.Internal = append(s.Internal, endpoint(2)) }, 4},
		// The last slot's endpoint moves to the freed one; the dispatch
		// element goes to the pick chain of the new count.
		{"one endpoint removed", func(s *Service) { s.Internal = slices.Delete(s.Internal, 0, 1) }, 6},
		{"all endpoints removed", func(s *Service) { s.Internal = nil }, 16},
		{"endpoints back", func(s *Service) { s.Internal = []Endpoint{endpoint(3)} }, 8},
		// The service gets chains of its own: its endpoint moves from
		// @service-endpoints to an endpoints map.
		{"node port added", func(s *Service) { s.NodePort = 32700 }, 7},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			s := &svcs[1]
			step.change(s)
			s.External = s.Internal
			st, err := tb.Sync(svcs)
			if err != nil {
				t.Fatal(err)
			}
			if st.Full {
				t.Error("incremental sync was full")
			}
			if st.Written > step.maxWrite {
				t.Errorf("wrote %d objects, want at most %d", st.Written, step.maxWrite)
			}
			if st.Written == 0 && step.maxWrite > 0 {
				t.Error("wrote nothing")
			}
			if after := chainHandles(t, c, other); !slices.Equal(before, after) {
				t.Errorf("another service's chain was rewritten: handles %v → %v", before, after)
			}
			checkKernel(t, tb, c, st)
		})
	}

	t.Run("services removed", func(t *testing.T) {
		st, err := tb.Sync(svcs[:10])
		if err != nil {
			t.Fatal(err)
		}
		checkKernel(t, tb, c, st)
		if st.Services != 10 {
			t.Errorf("Services = %d", st.Services)
		}
	})
}

// checkKernel compares the table's chains and elements in the kernel with
// the totals of the sync's Stats.
func checkKernel(t *testing.T, tb *Table, c *nft.Conn, st Stats) {
	t.Helper()
	var chains []string
	err := c.Transact(func(tx *nft.Tx) (bool, error) {
		var err error
		chains, err = tx.Chains(table)
		return false, err
	})
	if err != nil {
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
	sets := slices.Clone(tb.skeleton.sets)
	for _, ch := range chains {
		if strings.HasPrefix(ch, prefixFirewall) {
			sets = append(sets, sourcesSet(ch))
		}
	}
	for _, s := range sets {
		if s.Name == (&families[0]).set(setAffinity) || s.Name == (&families[1]).set(setAffinity) {
			continue
		}
		es, err := c.Elements(s)
		if err != nil {
			t.Fatal(err)
		}
		elems += len(es)
	}
	if elems != st.Elements {
		t.Errorf("kernel has %d elements, Stats %d", elems, st.Elements)
	}
}

func TestRestartAndCleanup(t *testing.T) {
	l := newLab(t, 3)
	svcs := labServices(l)
	tb := newTable(t, l.node.Fd())
	if _, err := tb.Sync(svcs); err != nil {
		t.Fatal(err)
	}
	a, conn, err := hello(l.pods[1].ns, ap(addr("10.96.0.15"), 80))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if a.server != "pod1" {
		t.Fatalf("server %s", a.server)
	}
	echo := func(line string) error {
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := fmt.Fprintf(conn, "%s\n", line); err != nil {
			return err
		}
		buf := make([]byte, 64)
		n, err := conn.Read(buf)
		if err != nil {
			return err
		}
		if got := strings.TrimSpace(string(buf[:n])); got != "pod1 "+line {
			return fmt.Errorf("echo %q, want %q", got, "pod1 "+line)
		}
		return nil
	}
	if err := echo("before"); err != nil {
		t.Fatal(err)
	}

	// The agent restarts: a new Table rewrites the table in one
	// transaction; the established connection keeps working.
	tb.Close()
	tb2 := newTable(t, l.node.Fd())
	st, err := tb2.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full {
		t.Error("first sync after a restart was not full")
	}
	if err := echo("after restart"); err != nil {
		t.Errorf("established connection after the restart: %v", err)
	}
	if _, err := helloTCP(l.pods[1].ns, ap(addr("10.96.0.10"), 80)); err != nil {
		t.Errorf("new connection after the restart: %v", err)
	}

	for i := range 2 {
		if err := Cleanup(l.node.Fd()); err != nil {
			t.Fatalf("Cleanup #%d: %v", i+1, err)
		}
	}
	if out := nfttest.Ruleset(t, l.node); strings.Contains(out, TableName) {
		t.Errorf("table left after Cleanup:\n%s", out)
	}
}

func TestListing(t *testing.T) {
	// The nft tool lists the table (it cannot show some expression
	// combinations, map lookups keyed by another lookup's result: the
	// table must not hold them).
	l := newLab(t, 3)
	tb := newTable(t, l.node.Fd())
	if _, err := tb.Sync(labServices(l)); err != nil {
		t.Fatal(err)
	}
	out := nfttest.Ruleset(t, l.node)
	nfttest.Contains(t, out,
		"chain svc-default/web//TCP/ipv4",
		"ip daddr . meta l4proto . th dport vmap @service-ips4",
		"10.96.0.16 . sctp . 80 : goto pick4-1",
		"dnat ip to ip daddr . meta l4proto . th dport . numgen random mod 1 map @service-endpoints4",
		"fd01::10 . tcp . 80 : goto svc-default/web//TCP/ipv6",
		"update @affinity4",
		"masquerade fully-random",
	)
}

func TestInvalid(t *testing.T) {
	ns := nfttest.NS(t, "dpinv")
	tb, err := New(Config{NetNSFd: ns.Fd()})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	good := Service{Namespace: "a", Name: "b", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.1"), Port: 80}
	for _, tc := range []struct {
		name   string
		change func(s *Service)
		want   string
	}{
		{"family", func(s *Service) { s.Family = 5 }, "invalid IP family"},
		{"protocol", func(s *Service) { s.Protocol = "ICMP" }, "unsupported protocol"},
		{"port 0", func(s *Service) { s.Port = 0 }, "port 0"},
		{"cluster IP of the other family", func(s *Service) { s.ClusterIP = addr("fd00::1") }, "cluster IP"},
		{"external IP of the other family", func(s *Service) { s.ExternalIPs = []netip.Addr{addr("fd00::1")} }, "external IP"},
		{"invalid endpoint", func(s *Service) { s.Internal = []Endpoint{{Port: 80}} }, "endpoint"},
		{"endpoint port 0", func(s *Service) { s.Internal = []Endpoint{{Addr: addr("10.244.0.1"), Port: 0}} }, "port 0"},
		{"negative affinity", func(s *Service) { s.Affinity = -time.Second }, "affinity"},
		{"cluster endpoint of the other family", func(s *Service) { s.Cluster = []Endpoint{{Addr: addr("fd00::1"), Port: 80}} }, "endpoint"},
		{"source range of the other family", func(s *Service) { s.SourceRanges = []netip.Prefix{netip.MustParsePrefix("fd00::/64")} }, "source range"},
		{"invalid source range", func(s *Service) { s.SourceRanges = []netip.Prefix{{}} }, "source range"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := good
			tc.change(&s)
			if _, err := tb.Sync([]Service{s}); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Sync = %v, want an error about %q", err, tc.want)
			}
		})
	}
	if _, err := tb.Sync([]Service{good, good}); err == nil {
		t.Error("a service given twice was accepted")
	}
	if _, err := New(Config{ClusterCIDRs: []netip.Prefix{{}}}); err == nil {
		t.Error("an invalid cluster CIDR was accepted")
	}
}

// TestScale programs 10,000 services × 5 endpoints from cold, then
// changes one endpoint, and reports both times (the bar: < 1 s cold).
func TestScale(t *testing.T) {
	if testing.Short() {
		t.Skip("scale figure")
	}
	ns := nfttest.NS(t, "dpscale")
	tb, err := New(Config{NetNSFd: ns.Fd(), ClusterCIDRs: clusterCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	svcs := manyServices(10000, 5)
	start, user, kernel := time.Now(), cpuTime(t, false), cpuTime(t, true)
	st, err := tb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("10000 services × 5 endpoints from cold: %v (CPU: %v in the process, %v in the kernel, which applies the batch; %+v)",
		time.Since(start), cpuTime(t, false)-user, cpuTime(t, true)-kernel, st)

	svcs[4242].Internal[3] = Endpoint{Addr: addr("10.250.0.1"), Port: 8080}
	svcs[4242].External = svcs[4242].Internal
	start = time.Now()
	st, err = tb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one endpoint changed at 10000 services: %v, %d objects written", time.Since(start), st.Written)

	svcs = append(svcs, manyServices(10001, 5)[10000])
	start = time.Now()
	st, err = tb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("one service added at 10000 services: %v, %d objects written", time.Since(start), st.Written)
}

// cpuTime is the CPU time the process used so far, in user space or in
// the kernel (where the nftables batch is processed): on a loaded machine
// a steadier figure than the wall time. The process's time includes the
// garbage collector's, on other threads.
func cpuTime(t *testing.T, kernel bool) time.Duration {
	t.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	if kernel {
		return time.Duration(ru.Stime.Nano())
	}
	return time.Duration(ru.Utime.Nano())
}

// TestUpdate checks that Update, told only the changes, leaves the
// kernel as a Sync of the whole desired set does.
func TestUpdate(t *testing.T) {
	ns := nfttest.NS(t, "dpupd")
	tb, c := newTable(t, ns.Fd()), nftConn(t, ns)
	ref := nfttest.NS(t, "dpupdref")
	rt, err := New(Config{NetNSFd: ref.Fd(), ClusterCIDRs: clusterCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rt.Close() }()

	if _, err := tb.Update(nil, nil); err == nil {
		t.Error("Update before the first Sync succeeded")
	}
	svcs := manyServices(300, 5)
	if _, err := tb.Sync(svcs[:200]); err != nil {
		t.Fatal(err)
	}
	in := map[int]bool{} // the services programmed
	for i := range 200 {
		in[i] = true
	}
	endpoint := func(k byte) Endpoint { return Endpoint{Addr: netip.AddrFrom4([4]byte{10, 245, 0, k}), Port: 8080} }
	id := func(i int) string { return svcs[i].ID() }
	for _, step := range []struct {
		name    string
		change  func() // of svcs
		changed []int  // indexes into svcs
		removed []int
	}{
		{"services added", func() {}, []int{200, 201, 210}, nil},
		{"endpoint replaced, unchanged service given", func() { svcs[5].Internal[1] = endpoint(1) }, []int{5, 6}, nil},
		{"endpoints grow past the pick chains", func() {
			for k := range maxPick {
				svcs[7].Internal = append(svcs[7].Internal, endpoint(byte(10+k)))
			}
		}, []int{7}, nil},
		{"affinity added", func() { svcs[8].Affinity = time.Minute }, []int{8}, nil},
		{"services removed", func() {}, nil, []int{3, 100, 210}},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.change()
			var changed []Service
			var removed []string
			for _, i := range step.changed {
				svcs[i].External = svcs[i].Internal
				changed = append(changed, svcs[i])
				in[i] = true
			}
			for _, i := range step.removed {
				removed = append(removed, id(i))
				delete(in, i)
			}
			st, err := tb.Update(changed, removed)
			if err != nil {
				t.Fatal(err)
			}
			if st.Full {
				t.Error("Update was full")
			}
			checkKernel(t, tb, c, st)
			var want []Service
			for i := range svcs {
				if in[i] {
					want = append(want, svcs[i])
				}
			}
			rst, err := rt.Sync(want)
			if err != nil {
				t.Fatal(err)
			}
			st.Full, st.Written, rst.Full, rst.Written = false, 0, false, 0
			if st != rst {
				t.Errorf("after Update %+v, a Sync of the same services %+v", st, rst)
			}
			// A new table in the reference namespace: its next Sync is
			// full, so it shows the whole desired set from scratch.
			rt.Close()
			if rt, err = New(Config{NetNSFd: ref.Fd(), ClusterCIDRs: clusterCIDRs}); err != nil {
				t.Fatal(err)
			}
		})
	}
	if _, err := tb.Update(svcs[:1], []string{id(0)}); err == nil {
		t.Error("a service both changed and removed was accepted")
	}
}

// TestNoEndpointVerdicts: a service without endpoints for its traffic
// gets a drop verdict when it has endpoints elsewhere, a reject one when
// it has none; a change of endpoints it does not use writes nothing.
func TestNoEndpointVerdicts(t *testing.T) {
	ns := nfttest.NS(t, "dpnoep")
	tb, c := newTable(t, ns.Fd()), nftConn(t, ns)
	remote := []Endpoint{{Addr: addr("10.244.2.2"), Port: 8080}}
	s := Service{Namespace: "ns", Name: "itp", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.40"), Port: 80, Cluster: remote}
	for _, step := range []struct {
		name     string
		change   func(s *Service)
		want     string
		maxWrite int
	}{
		{"endpoints elsewhere only: drop", func(*Service) {}, "drop", -1},
		{"another remote endpoint: nothing written", func(s *Service) { s.Cluster = []Endpoint{{Addr: addr("10.244.3.2"), Port: 8080}} }, "drop", 0},
		{"no endpoint at all: reject", func(s *Service) { s.Cluster = nil }, "goto " + chainReject, 2},
		{"back: drop", func(s *Service) { s.Cluster = remote }, "drop", 2},
	} {
		t.Run(step.name, func(t *testing.T) {
			step.change(&s)
			st, err := tb.Sync([]Service{s})
			if err != nil {
				t.Fatal(err)
			}
			if step.maxWrite >= 0 && st.Written > step.maxWrite {
				t.Errorf("wrote %d objects, want at most %d", st.Written, step.maxWrite)
			}
			checkKernel(t, tb, c, st)
			es, err := c.Elements(tb.sets[families[0].set(setNoEndpoints)])
			if err != nil {
				t.Fatal(err)
			}
			if len(es) != 1 || es[0].VerdictData == nil {
				t.Fatalf("no-endpoint elements %+v, want one", es)
			}
			got := "goto " + es[0].VerdictData.Chain
			if es[0].VerdictData.Kind == expr.VerdictDrop {
				got = "drop"
			}
			if got != step.want {
				t.Errorf("verdict %s, want %s", got, step.want)
			}
		})
	}
}

// nftConn is a connection to read ns's nftables with, closed when the
// test ends.
func nftConn(t *testing.T, ns *netns.Temp) *nft.Conn {
	t.Helper()
	c, err := nft.New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestHairpinSet: the hairpin set holds the endpoints not known to be
// remote, and every endpoint of an externalTrafficPolicy Local
// short-circuit; a remote endpoint of other traffic is left out, and
// one becoming local is added.
func TestHairpinSet(t *testing.T) {
	ns := nfttest.NS(t, "dphair")
	tb, c := newTable(t, ns.Fd()), nftConn(t, ns)
	local := func(a string) Endpoint { return Endpoint{Addr: addr(a), Port: 8080} }
	remote := func(a string) Endpoint { return Endpoint{Addr: addr(a), Port: 8080, Remote: true} }
	svc := func(name, cip string, internal []Endpoint) Service {
		return Service{Namespace: "ns", Name: name, Protocol: TCP, Family: IPv4, ClusterIP: addr(cip), Port: 80, Internal: internal, Cluster: internal}
	}
	plain := svc("plain", "10.96.0.50", []Endpoint{local("10.244.1.2"), remote("10.244.2.2")})
	// externalTrafficPolicy Cluster: external traffic is masqueraded
	// anyway.
	cluster := svc("cluster", "10.96.0.51", []Endpoint{remote("10.244.5.2")})
	cluster.NodePort, cluster.External = 30050, cluster.Internal
	// Local: the short-circuit's endpoints are the internal ones …
	etp := svc("etp", "10.96.0.52", []Endpoint{remote("10.244.3.2"), local("10.244.1.3")})
	etp.NodePort, etp.ExternalLocal, etp.External = 30051, true, []Endpoint{local("10.244.1.3")}
	// … or, under internalTrafficPolicy Local too, the cluster's.
	both := svc("both", "10.96.0.53", []Endpoint{local("10.244.1.4")})
	both.NodePort, both.ExternalLocal, both.External = 30052, true, both.Internal
	both.Cluster = []Endpoint{remote("10.244.4.2"), local("10.244.1.4")}

	check := func(t *testing.T, st Stats, want ...string) {
		t.Helper()
		checkKernel(t, tb, c, st)
		es, err := c.Elements(tb.sets[families[0].set(setHairpin)])
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range es {
			got = append(got, netip.AddrFrom4([4]byte(e.Key[:4])).String())
		}
		slices.Sort(got)
		slices.Sort(want)
		if !slices.Equal(got, want) {
			t.Errorf("hairpin set %v, want %v", got, want)
		}
	}
	st, err := tb.Sync([]Service{plain, cluster, etp, both})
	if err != nil {
		t.Fatal(err)
	}
	check(t, st, "10.244.1.2", "10.244.1.3", "10.244.3.2", "10.244.1.4", "10.244.4.2")

	plain.Internal = []Endpoint{local("10.244.1.2"), local("10.244.2.2")}
	plain.Cluster = plain.Internal
	if st, err = tb.Update([]Service{plain}, nil); err != nil {
		t.Fatal(err)
	}
	check(t, st, "10.244.1.2", "10.244.2.2", "10.244.1.3", "10.244.3.2", "10.244.1.4", "10.244.4.2")

	if st, err = tb.Update(nil, []string{etp.ID(), both.ID()}); err != nil {
		t.Fatal(err)
	}
	check(t, st, "10.244.1.2", "10.244.2.2")
}
