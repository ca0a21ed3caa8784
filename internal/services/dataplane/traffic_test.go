package dataplane

import (
	"fmt"
	"net/netip"
	"testing"
	"time"
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
			out = append(out, Endpoint{x.ip4, tcpPort})
		}
		return out
	}
	tcp6 := func(ps ...*pod) []Endpoint {
		var out []Endpoint
		for _, x := range ps {
			out = append(out, Endpoint{x.ip6, tcpPort})
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
	udp := svc("dns", UDP, "10.96.0.14", 53, []Endpoint{{p[1].ip4, udpPort}}, []Endpoint{{p[1].ip4, udpPort}})
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

func newTable(t *testing.T, l *lab) *Table {
	t.Helper()
	tb, err := New(Config{NetNSFd: l.node.Fd(), ClusterCIDRs: clusterCIDRs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })
	return tb
}

func TestTraffic(t *testing.T) {
	l := newLab(t, 3)
	tb := newTable(t, l)
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
		empty.Internal = []Endpoint{{pod3.ip4, tcpPort}}
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
		dns.Internal = []Endpoint{{pod3.ip4, udpPort}}
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
		dns.Internal = []Endpoint{{pod2.ip4, udpPort}}
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
