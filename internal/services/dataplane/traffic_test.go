package dataplane

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

var (
	addr = netip.MustParseAddr
	ap   = netip.AddrPortFrom
)

// labServices are the services of the traffic tests, over the lab's pods.
func labServices(l *lab) []Service {
	p := l.pods
	tcp4 := func(ps ...*pod) []Endpoint {
		var out []Endpoint
		for _, x := range ps {
			out = append(out, Endpoint{Addr: x.ip4, Port: tcpPort})
		}
		return out
	}
	tcp6 := func(ps ...*pod) []Endpoint {
		var out []Endpoint
		for _, x := range ps {
			out = append(out, Endpoint{Addr: x.ip6, Port: tcpPort})
		}
		return out
	}
	svc := func(name string, proto Protocol, cip string, port uint16, internal, external []Endpoint) Service {
		s := Service{Namespace: "default", Name: name, Protocol: proto, Family: IPv4, ClusterIP: addr(cip), Port: port, Internal: internal, External: external}
		if s.ClusterIP.Is6() {
			s.Family = IPv6
		}
		return s
	}
	web := svc("web", TCP, "10.96.0.10", 80, tcp4(p[0], p[1]), tcp4(p[0], p[1]))
	web.NodePort, web.ExternalIPs, web.LoadBalancerIPs = 30080, []netip.Addr{addr("192.0.2.10")}, []netip.Addr{addr("198.51.100.10")}
	web6 := svc("web", TCP, "fd01::10", 80, tcp6(p[0], p[1]), tcp6(p[0], p[1]))
	web6.NodePort = 30080
	local := svc("local", TCP, "10.96.0.11", 80, tcp4(p[0], p[1]), tcp4(p[1]))
	local.NodePort, local.ExternalLocal, local.Cluster = 30081, true, local.Internal
	localNone := svc("local-none", TCP, "10.96.0.17", 80, tcp4(p[0]), nil)
	localNone.NodePort, localNone.ExternalLocal, localNone.Cluster = 30082, true, localNone.Internal
	aff := svc("sticky", TCP, "10.96.0.12", 80, tcp4(p[0], p[1], p[2]), tcp4(p[0], p[1], p[2]))
	aff.Affinity = time.Hour
	empty := svc("empty", TCP, "10.96.0.13", 80, nil, nil)
	empty.NodePort = 30083
	udp := svc("dns", UDP, "10.96.0.14", 53, []Endpoint{{Addr: p[1].ip4, Port: udpPort}}, []Endpoint{{Addr: p[1].ip4, Port: udpPort}})
	hair := svc("self", TCP, "10.96.0.15", 80, tcp4(p[0]), tcp4(p[0]))
	sctp := svc("sctp", SCTP, "10.96.0.16", 80, tcp4(p[0]), tcp4(p[0]))
	return []Service{web, web6, local, localNone, aff, empty, udp, hair, sctp}
}

// find returns the service called name of family f.
func find(svcs []Service, name string, f Family) *Service {
	for i := range svcs {
		if svcs[i].Name == name && svcs[i].Family == f {
			return &svcs[i]
		}
	}
	panic("no service " + name)
}

// newTable is a service table in the network namespace netnsFd, closed
// when the test ends.
func newTable(t *testing.T, netnsFd int) *Table {
	t.Helper()
	tb, err := New(Config{NetNSFd: netnsFd, ClusterCIDRs: clusterCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	return tb
}

func TestTraffic(t *testing.T) {
	l := newLab(t, 3)
	tb := newTable(t, l.node.Fd())
	svcs := labServices(l)
	st, err := tb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Full {
		t.Errorf("first sync of a Table: Full = false")
	}
	t.Logf("programmed: %+v", st)
	pod1, pod2, pod3 := l.pods[0], l.pods[1], l.pods[2]

	// spread connects n times and returns the servers seen and the
	// sources they saw.
	spread := func(t *testing.T, from *pod, to netip.AddrPort, n int) (servers, sources map[string]int) {
		t.Helper()
		servers, sources = map[string]int{}, map[string]int{}
		for range n {
			a, err := helloTCP(from.ns, to)
			if err != nil {
				t.Fatalf("%s → %v: %v", from.name, to, err)
			}
			servers[a.server]++
			sources[a.source]++
		}
		return servers, sources
	}

	for _, tc := range []struct {
		name        string
		from        *pod
		to          netip.AddrPort
		servers     []string // all of them answer
		source      string   // what they see
		masqueraded bool     // the source is one of the node's addresses
	}{
		{"ClusterIP from a pod: every endpoint, pod source kept", pod3, ap(addr("10.96.0.10"), 80), []string{"pod1", "pod2"}, pod3.ip4.String(), false},
		{"IPv6 ClusterIP from a pod", pod3, ap(addr("fd01::10"), 80), []string{"pod1", "pod2"}, pod3.ip6.String(), false},
		{"NodePort from outside, eTP=Cluster: masqueraded", l.client, ap(l.nodeIP4, 30080), []string{"pod1", "pod2"}, "", true},
		{"IPv6 NodePort from outside", l.client, ap(l.nodeIP6, 30080), []string{"pod1", "pod2"}, "", true},
		{"external IP from outside", l.client, ap(addr("192.0.2.10"), 80), []string{"pod1", "pod2"}, "", true},
		{"load-balancer IP from outside", l.client, ap(addr("198.51.100.10"), 80), []string{"pod1", "pod2"}, "", true},
		{"NodePort from outside, eTP=Local: local endpoints, source kept", l.client, ap(l.nodeIP4, 30081), []string{"pod2"}, l.clientIP4.String(), false},
		{"eTP=Local NodePort from a pod: all endpoints (internal)", pod3, ap(l.nodeIP4, 30081), []string{"pod1", "pod2"}, pod3.ip4.String(), false},
		{"eTP=Local without local endpoints from a pod: internal", pod3, ap(l.nodeIP4, 30082), []string{"pod1"}, pod3.ip4.String(), false},
		{"ClusterIP from outside the cluster: masqueraded", l.client, ap(addr("10.96.0.10"), 80), []string{"pod1", "pod2"}, "", true},
		{"hairpin: an endpoint through its own service, masqueraded", pod1, ap(addr("10.96.0.15"), 80), []string{"pod1"}, "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			servers, sources := spread(t, tc.from, tc.to, 30)
			for _, s := range tc.servers {
				if servers[s] == 0 {
					t.Errorf("%s never answered: %v", s, servers)
				}
			}
			if len(servers) != len(tc.servers) {
				t.Errorf("servers %v, want %v", servers, tc.servers)
			}
			for src := range sources {
				switch {
				case tc.masqueraded && (src == tc.from.ip4.String() || src == tc.from.ip6.String()):
					t.Errorf("source %s kept, want masqueraded", src)
				case !tc.masqueraded && src != tc.source:
					t.Errorf("source seen %s, want %s", src, tc.source)
				}
			}
		})
	}

	t.Run("the node's own connections reach a ClusterIP and a NodePort", func(t *testing.T) {
		node := &pod{name: "node", ns: l.node}
		// 30081 is externalTrafficPolicy Local: the node's own traffic is
		// internal, to every endpoint.
		for _, to := range []netip.AddrPort{ap(addr("10.96.0.10"), 80), ap(addr("fd01::10"), 80), ap(l.nodeIP4, 30080), ap(l.nodeIP4, 30081)} {
			servers, _ := spread(t, node, to, 20)
			if servers["pod1"] == 0 || servers["pod2"] == 0 {
				t.Errorf("%v: servers %v", to, servers)
			}
		}
	})

	t.Run("eTP=Local without local endpoints drops external traffic", func(t *testing.T) {
		_, err := helloTCP(l.client.ns, ap(l.nodeIP4, 30082))
		if !isTimeout(err) {
			t.Errorf("connect = %v, want a timeout (dropped)", err)
		}
	})

	t.Run("no endpoints: refused at once", func(t *testing.T) {
		for _, c := range []struct {
			from *pod
			to   netip.AddrPort
		}{{pod1, ap(addr("10.96.0.13"), 80)}, {l.client, ap(l.nodeIP4, 30083)}, {&pod{ns: l.node}, ap(addr("10.96.0.13"), 80)}} {
			start := time.Now()
			_, err := helloTCP(c.from.ns, c.to)
			if !isRefused(err) {
				t.Errorf("%v: connect = %v, want refused", c.to, err)
			}
			if d := time.Since(start); d > time.Second {
				t.Errorf("%v: refused after %v", c.to, d)
			}
		}
	})

	t.Run("affinity pins a client", func(t *testing.T) {
		servers, _ := spread(t, pod3, ap(addr("10.96.0.12"), 80), 20)
		if len(servers) != 1 {
			t.Errorf("servers %v, want one", servers)
		}
		other, _ := spread(t, l.client, ap(addr("10.96.0.12"), 80), 20)
		if len(other) != 1 {
			t.Errorf("other client: servers %v, want one", other)
		}
	})

	t.Run("endpoints 0 → back: refused, then served", func(t *testing.T) {
		empty := find(svcs, "empty", IPv4)
		empty.Internal = []Endpoint{{Addr: pod3.ip4, Port: tcpPort}}
		empty.External = empty.Internal
		if _, err := tb.Sync(svcs); err != nil {
			t.Fatal(err)
		}
		a, err := helloTCP(pod1.ns, ap(addr("10.96.0.13"), 80))
		if err != nil || a.server != "pod3" {
			t.Errorf("after endpoints came: %v %v", a, err)
		}
		a, err = helloTCP(l.client.ns, ap(l.nodeIP4, 30083))
		if err != nil || a.server != "pod3" {
			t.Errorf("node port after endpoints came: %v %v", a, err)
		}
	})

	t.Run("UDP: an endpoint change moves the next datagram", func(t *testing.T) {
		u := dialUDP(t, pod1.ns, ap(addr("10.96.0.14"), 53))
		a, err := u.ask(2 * time.Second)
		if err != nil || a.server != "pod2" {
			t.Fatalf("first answer %v %v, want pod2", a, err)
		}
		dns := find(svcs, "dns", IPv4)
		dns.Internal = []Endpoint{{Addr: pod3.ip4, Port: udpPort}}
		dns.External = dns.Internal
		st, err := tb.Sync(svcs)
		if err != nil {
			t.Fatal(err)
		}
		if st.ConntrackFlushed == 0 {
			t.Errorf("no conntrack entry flushed: %+v", st)
		}
		a, err = u.ask(2 * time.Second)
		if err != nil || a.server != "pod3" {
			t.Errorf("after the change: %v %v, want pod3", a, err)
		}
		// No endpoints: the same socket is refused (ICMP port unreachable).
		dns.Internal, dns.External = nil, nil
		if _, err := tb.Sync(svcs); err != nil {
			t.Fatal(err)
		}
		eventually(t, "UDP refused without endpoints", func() error {
			if _, err := u.ask(500 * time.Millisecond); !isRefused(err) {
				return fmt.Errorf("ask = %v, want refused", err)
			}
			return nil
		})
		dns.Internal = []Endpoint{{Addr: pod2.ip4, Port: udpPort}}
		dns.External = dns.Internal
		if _, err := tb.Sync(svcs); err != nil {
			t.Fatal(err)
		}
		eventually(t, "UDP served again", func() error {
			a, err := u.ask(500 * time.Millisecond)
			if err != nil || a.server != "pod2" {
				return fmt.Errorf("%v %v", a, err)
			}
			return nil
		})
	})
}

func TestNodePortAddresses(t *testing.T) {
	l := newLab(t, 3)
	svcs := labServices(l)
	pod3 := l.pods[2]
	for _, tc := range []struct {
		name     string
		prefixes []netip.Prefix
		// served tells whether the node port answers on the node's
		// underlay address and on its address on pod3's link.
		underlay, podLink bool
	}{
		{"every local address", nil, true, true},
		{"the underlay only", []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24")}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb, err := New(Config{NetNSFd: l.node.Fd(), ClusterCIDRs: clusterCIDRs, NodePortAddresses: tc.prefixes})
			if err != nil {
				t.Fatal(err)
			}
			defer tb.Close()
			if _, err := tb.Sync(svcs); err != nil {
				t.Fatal(err)
			}
			for _, c := range []struct {
				addr netip.Addr
				want bool
			}{{l.nodeIP4, tc.underlay}, {pod3.gw4, tc.podLink}} {
				a, err := helloTCP(pod3.ns, ap(c.addr, 30080))
				switch {
				case c.want && (err != nil || (a.server != "pod1" && a.server != "pod2")):
					t.Errorf("node port on %v: %v %v, want served", c.addr, a, err)
				case !c.want && !isRefused(err):
					t.Errorf("node port on %v: %v %v, want refused (not a node port address)", c.addr, a, err)
				}
			}
		})
	}
}

// dropped tells whether a TCP connection from ns to addr times out (no
// reset, no ICMP error) within a short wait.
func dropped(ns *pod, addr netip.AddrPort) error {
	ctx, cancel := context.WithTimeout(context.Background(), 700*time.Millisecond)
	defer cancel()
	c, err := ns.ns.DialContext(ctx, nil, "tcp", addr.String())
	if err == nil {
		c.Close()
		return fmt.Errorf("%s → %v connected, want dropped", ns.name, addr)
	}
	if !isTimeout(err) {
		return fmt.Errorf("%s → %v: %v, want a timeout (dropped)", ns.name, addr, err)
	}
	return nil
}

// served tells whether a TCP connection from p to addr is answered by
// one of servers.
func served(p *pod, addr netip.AddrPort, servers ...string) error {
	a, err := helloTCP(p.ns, addr)
	if err != nil {
		return fmt.Errorf("%s → %v: %w", p.name, addr, err)
	}
	if !slices.Contains(servers, a.server) {
		return fmt.Errorf("%s → %v: served by %s, want one of %v", p.name, addr, a.server, servers)
	}
	return nil
}

func TestSourceRanges(t *testing.T) {
	l := newLab(t, 3)
	tb := newTable(t, l.node.Fd())
	pod1, pod3 := l.pods[0], l.pods[2]
	node := &pod{name: "node", ns: l.node}
	lb4, lb6 := addr("198.51.100.20"), addr("2001:db8:100::20")
	eps4 := []Endpoint{{Addr: pod1.ip4, Port: tcpPort}}
	eps6 := []Endpoint{{Addr: pod1.ip6, Port: tcpPort}}
	fw := Service{Namespace: "default", Name: "fw", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.20"), Port: 80, NodePort: 30090,
		ExternalIPs: []netip.Addr{addr("192.0.2.20")}, LoadBalancerIPs: []netip.Addr{lb4},
		Internal: eps4, External: eps4, Cluster: eps4}
	fw6 := Service{Namespace: "default", Name: "fw", Protocol: TCP, Family: IPv6, ClusterIP: addr("fd01::20"), Port: 80,
		LoadBalancerIPs: []netip.Addr{lb6}, Internal: eps6, External: eps6, Cluster: eps6}
	// The underlay (the outside client and the node): pods are outside.
	fw.SourceRanges = []netip.Prefix{netip.MustParsePrefix("192.168.50.0/24"), netip.MustParsePrefix("203.0.113.0/24")}
	svcs := []Service{fw, fw6}
	if _, err := tb.Sync(svcs); err != nil {
		t.Fatal(err)
	}
	c, err := nft.New(l.node.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fwChain := prefixFirewall + "default/fw//TCP/ipv4"
	before := chainHandles(t, c, fwChain)

	check := func(t *testing.T, ok []*pod, drop []*pod) {
		t.Helper()
		for _, p := range ok {
			if err := served(p, ap(lb4, 80), "pod1"); err != nil {
				t.Error(err)
			}
		}
		for _, p := range drop {
			if err := dropped(p, ap(lb4, 80)); err != nil {
				t.Error(err)
			}
		}
		// Only the load-balancer IPs are restricted, and only in the
		// ranges' family: the ClusterIP, the external IP, the node
		// port and the IPv6 load-balancer IP serve every source.
		for _, p := range append(slices.Clone(ok), drop...) {
			for _, to := range []netip.AddrPort{ap(fw.ClusterIP, 80), ap(addr("192.0.2.20"), 80), ap(l.nodeIP4, 30090), ap(lb6, 80)} {
				if p == node && to.Addr() == l.nodeIP4 {
					continue
				}
				if err := served(p, to, "pod1"); err != nil {
					t.Error(err)
				}
			}
		}
	}
	t.Run("inside the ranges served, outside dropped", func(t *testing.T) {
		out := nfttest.Ruleset(t, l.node)
		nfttest.Contains(t, out,
			"ip daddr . meta l4proto . th dport vmap @firewall-ips4",
			"198.51.100.20 . tcp . 80 : goto firewall-default/fw//TCP/ipv4",
			"ip saddr != @sources-default/fw//TCP/ipv4 drop",
			"elements = { 192.168.50.0/24, 203.0.113.0/24 }",
		)
		check(t, []*pod{l.client, node}, []*pod{pod3})
	})
	t.Run("ranges changed: only the set's elements are written", func(t *testing.T) {
		svcs[0].SourceRanges = []netip.Prefix{netip.MustParsePrefix("10.244.3.0/24")}
		st, err := tb.Sync(svcs)
		if err != nil {
			t.Fatal(err)
		}
		// Two ranges (four elements) out, one (two) in.
		if st.Written != 6 {
			t.Errorf("wrote %d objects, want 6", st.Written)
		}
		if after := chainHandles(t, c, fwChain); !slices.Equal(before, after) {
			t.Errorf("firewall chain rewritten: handles %v → %v", before, after)
		}
		checkKernel(t, tb, c, st)
		check(t, []*pod{pod3}, []*pod{l.client, node})
	})
	t.Run("no endpoints: outside the ranges still dropped, inside rejected", func(t *testing.T) {
		svcs[0].Internal, svcs[0].External, svcs[0].Cluster = nil, nil, nil
		if _, err := tb.Sync(svcs); err != nil {
			t.Fatal(err)
		}
		if err := dropped(l.client, ap(lb4, 80)); err != nil {
			t.Error(err)
		}
		if _, err := helloTCP(pod3.ns, ap(lb4, 80)); !isRefused(err) {
			t.Errorf("pod3 → %v: %v, want refused", lb4, err)
		}
	})
	t.Run("ranges removed: the firewall goes", func(t *testing.T) {
		svcs[0].SourceRanges = nil
		svcs[0].Internal, svcs[0].External, svcs[0].Cluster = eps4, eps4, eps4
		st, err := tb.Sync(svcs)
		if err != nil {
			t.Fatal(err)
		}
		checkKernel(t, tb, c, st)
		if out := nfttest.Ruleset(t, l.node); strings.Contains(out, "chain "+prefixFirewall) || strings.Contains(out, "set "+prefixSources) {
			t.Errorf("firewall left:\n%s", out)
		}
		check(t, []*pod{l.client, node, pod3}, nil)
	})
}

func TestLocalPolicyWithoutLocalEndpoints(t *testing.T) {
	l := newLab(t, 3)
	tb := newTable(t, l.node.Fd())
	pod1, pod2, pod3 := l.pods[0], l.pods[1], l.pods[2]
	node := &pod{name: "node", ns: l.node}
	// The endpoints are "on other nodes" (pod1, pod2): none is local.
	remote := []Endpoint{{Addr: pod1.ip4, Port: tcpPort, Remote: true}, {Addr: pod2.ip4, Port: tcpPort, Remote: true}}
	// internalTrafficPolicy Local: no internal endpoint.
	itp := Service{Namespace: "default", Name: "itp", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.30"), Port: 80, Cluster: remote}
	// Both policies Local, reachable from outside: external traffic is
	// dropped, the cluster's own goes to the cluster's endpoints.
	both := Service{Namespace: "default", Name: "both", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.31"), Port: 80, NodePort: 30091,
		LoadBalancerIPs: []netip.Addr{addr("198.51.100.31")}, ExternalLocal: true, Cluster: remote}
	// No endpoints at all: still rejected.
	none := Service{Namespace: "default", Name: "none", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.32"), Port: 80, NodePort: 30092}
	if _, err := tb.Sync([]Service{itp, both, none}); err != nil {
		t.Fatal(err)
	}
	for _, to := range []netip.AddrPort{ap(itp.ClusterIP, 80), ap(both.ClusterIP, 80)} {
		for _, from := range []*pod{pod3, node} {
			if err := dropped(from, to); err != nil {
				t.Errorf("iTP=Local without local endpoints: %v", err)
			}
		}
	}
	for _, to := range []netip.AddrPort{ap(l.nodeIP4, 30091), ap(addr("198.51.100.31"), 80)} {
		if err := dropped(l.client, to); err != nil {
			t.Errorf("eTP=Local without local endpoints, from outside: %v", err)
		}
		// A pod's traffic is short-circuited to the cluster's endpoints.
		seen := map[string]bool{}
		for range 20 {
			a, err := helloTCP(pod3.ns, to)
			if err != nil {
				t.Fatalf("pod3 → %v: %v", to, err)
			}
			seen[a.server] = true
		}
		if !seen["pod1"] || !seen["pod2"] || len(seen) != 2 {
			t.Errorf("pod3 → %v: servers %v, want pod1 and pod2", to, seen)
		}
	}
	for _, c := range []struct {
		from *pod
		to   netip.AddrPort
	}{{pod3, ap(none.ClusterIP, 80)}, {node, ap(none.ClusterIP, 80)}, {l.client, ap(l.nodeIP4, 30092)}} {
		if _, err := helloTCP(c.from.ns, c.to); !isRefused(err) {
			t.Errorf("no endpoints: %s → %v: %v, want refused", c.from.name, c.to, err)
		}
	}
}

// TestRemoteHairpin: a pod of another node reaching this node's node
// port under externalTrafficPolicy Local is short-circuited to the
// cluster's endpoints; when it is picked itself, the connection is
// masqueraded as a hairpin (without, the pod would receive its own
// address as the source and drop it as a martian). The client plays
// that pod: it holds 10.244.200.2, an address of the cluster CIDRs,
// behind the node's underlay link.
func TestRemoteHairpin(t *testing.T) {
	l := newLab(t, 1)
	tb := newTable(t, l.node.Fd())
	self := netip.MustParseAddr("10.244.200.2")
	if err := l.client.ns.AddLoopbackAddr(self); err != nil {
		t.Fatal(err)
	}
	remote := &pod{name: "remote", ns: l.client.ns, ip4: self}
	remote.serve(t)
	eps := []Endpoint{{Addr: self, Port: tcpPort, Remote: true}}
	s := Service{Namespace: "default", Name: "remote-self", Protocol: TCP, Family: IPv4, ClusterIP: addr("10.96.0.18"), Port: 80,
		NodePort: 30084, ExternalLocal: true, Internal: eps, Cluster: eps}
	if _, err := tb.Sync([]Service{s}); err != nil {
		t.Fatal(err)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: self.AsSlice()}, Timeout: 2 * time.Second}
	c, err := l.client.ns.DialContext(context.Background(), d, "tcp", ap(l.nodeIP4, 30084).String())
	if err != nil {
		t.Fatalf("remote pod → its own node port service: %v", err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Fatalf("read greeting: %v", err)
	}
	if a := parseAnswer(line); a.server != "remote" || a.source != l.nodeIP4.String() {
		t.Errorf("answer %+v, want remote seeing the node's address %v", a, l.nodeIP4)
	}
}
