package dataplane

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// UDP has no connection to end: a conntrack entry keeps sending a
// client's datagrams where they went first as long as the client keeps
// sending. After a sync, the entries of UDP services that do not lead to
// one of the service's current endpoints are deleted, as kube-proxy does:
// those DNATed to a removed endpoint, and those not DNATed at all (made
// while the service had no endpoints, or did not exist yet). The sweep
// runs when a UDP service lost endpoints or got its first ones, and after
// a full sync; established entries to current endpoints survive it.

// udpTarget is what a UDP service's address and port (or node port) may
// lead to.
type udpTarget struct {
	addr netip.Addr // invalid for a node port: any address
	port uint16
}

// staleUDP matches the conntrack entries of UDP services whose reply does
// not come from one of the service's endpoints.
type staleUDP map[udpTarget]map[netip.AddrPort]bool

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (s staleUDP) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	if f.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := netip.AddrFromSlice(f.Forward.DstIP)
	if !ok {
		return false
	}
	dst = dst.Unmap()
	eps, ok := s[udpTarget{dst, f.Forward.DstPort}]
	if !ok {
		if eps, ok = s[udpTarget{port: f.Forward.DstPort}]; !ok {
			return false
		}
	}
	src, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
	return !ok || !eps[netip.AddrPortFrom(src.Unmap(), f.Reverse.SrcPort)]
}

// udpSweepNeeded tells whether a sync with changes must sweep the UDP
// conntrack entries.
func udpSweepNeeded(full bool, changes []change) bool {
	for _, c := range changes {
		o, n := c.old, c.new
		switch {
		case n == nil:
			if o.svc.Protocol == UDP && o.endpointCount() > 0 {
				return true
			}
		case n.svc.Protocol != UDP:
		case full:
			return true
		case o == nil || o.endpointCount() == 0:
			if n.endpointCount() > 0 {
				return true
			}
		default:
			for _, ep := range o.endpoints() {
				if !n.hasEndpoint(ep) {
					return true
				}
			}
		}
	}
	return false
}

// flushConntrack sweeps the stale UDP entries when the sync's changes
// (applied to t.services) call for it, in both families, and returns how
// many it deleted.
func (t *Table) flushConntrack(full bool, changes []change) (int, error) {
	if !udpSweepNeeded(full, changes) {
		return 0, nil
	}
	filters := map[netlink.InetFamily]staleUDP{}
	// filter is the family's filter of s, made on first use.
	filter := func(s *Service) staleUDP {
		fam := netlink.InetFamily(unix.AF_INET)
		if s.Family == IPv6 {
			fam = unix.AF_INET6
		}
		if filters[fam] == nil {
			filters[fam] = staleUDP{}
		}
		return filters[fam]
	}
	for _, p := range t.services {
		s := &p.svc
		if s.Protocol != UDP {
			continue
		}
		f := filter(s)
		eps := map[netip.AddrPort]bool{}
		for _, ep := range p.endpoints() {
			eps[netip.AddrPortFrom(ep.Addr, ep.Port)] = true
		}
		targets := []udpTarget{}
		for _, a := range append(append([]netip.Addr{s.ClusterIP}, s.ExternalIPs...), s.LoadBalancerIPs...) {
			if a.IsValid() {
				targets = append(targets, udpTarget{a, s.Port})
			}
		}
		if s.NodePort != 0 {
			targets = append(targets, udpTarget{port: s.NodePort})
		}
		for _, tg := range targets {
			f[tg] = eps
		}
	}
	// Removed services: their entries lead nowhere any more.
	for _, c := range changes {
		if c.new != nil {
			continue
		}
		s := &c.old.svc
		if s.Protocol != UDP || !s.ClusterIP.IsValid() {
			continue
		}
		f := filter(s)
		if _, ok := f[udpTarget{s.ClusterIP, s.Port}]; !ok {
			f[udpTarget{s.ClusterIP, s.Port}] = map[netip.AddrPort]bool{}
		}
	}
	total := 0
	for fam, f := range filters {
		n, err := t.ct.ConntrackDeleteFilters(netlink.ConntrackTable, fam, f)
		total += int(n)
		if err != nil {
			return total, fmt.Errorf("flush stale UDP conntrack entries: %w", err)
		}
	}
	return total, nil
}

// endpoints returns the service's endpoints, internal and external.
func (p *programmed) endpoints() []Endpoint {
	var out []Endpoint
	for _, g := range []*group{p.internal, p.external} {
		if g != nil {
			out = append(out, g.slots...)
		}
	}
	return out
}

// hasEndpoint tells whether ep is one of the service's endpoints.
func (p *programmed) hasEndpoint(ep Endpoint) bool { return slices.Contains(p.endpoints(), ep) }
