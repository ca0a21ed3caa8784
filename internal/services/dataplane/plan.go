package dataplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
	"github.com/podnet/podnet/internal/nft/exprs"
)

// group is a list of endpoints one chain picks from: each endpoint has a
// slot (0..n-1) under the group's number in the endpoints map (a plain
// service's group has no number, 0: its slots are under its ClusterIP
// . proto . port in @service-endpoints). Slots are kept across syncs,
// so that one endpoint added or removed changes one or two elements.
type group struct {
	idx   uint32
	slots []Endpoint
}

// chainPlan is everything a service chain's rules derive from: equal
// plans give equal rules, so a chain is rewritten only when its plan
// changes.
type chainPlan struct {
	family  Family
	masq    bool   // ext: masquerade all (externalTrafficPolicy Cluster)
	local   bool   // ext: externalTrafficPolicy Local short-circuits
	toSvc   string // ext: the chain of the short-circuited traffic (local) or of the internal endpoints
	jumpSvc bool   // ext: the external endpoints are the internal ones: goto toSvc
	// group, n and affinity: the endpoint pick (n 0: none).
	group    uint32
	n        int
	affinity time.Duration
	cidrs    bool // the cluster CIDRs of the family are known
	// sources is a firewall chain's set of allowed sources: the chain
	// drops the others.
	sources string
}

// rules renders the chain's rules.
func (p *chainPlan) rules() [][]expr.Any {
	fam := familyOf(p.family)
	if p.sources != "" {
		return [][]expr.Any{exprs.Concat(fam.matchFamily(),
			[]expr.Any{fam.saddr(1), exprs.Lookup(p.sources, 1, true), exprs.Verdict(expr.VerdictDrop, "")})}
	}
	var rules [][]expr.Any
	// The service chain has only its pick: the dispatch marked its
	// traffic for masquerade.
	switch {
	case p.local && p.toSvc != "":
		// The short-circuit of the cluster's own traffic: to the
		// cluster's endpoints (toSvc), masqueraded from the node.
		toSvc := []expr.Any{exprs.Verdict(expr.VerdictGoto, p.toSvc)}
		if p.cidrs {
			rules = append(rules, exprs.Concat(fam.matchFamily(), []expr.Any{fam.saddr(1), exprs.Lookup(fam.set(setClusterCIDRs), 1, false)}, toSvc))
		}
		rules = append(rules, exprs.Concat(exprs.FibLocal(true), setMark()), exprs.Concat(exprs.FibLocal(true), toSvc))
	case p.masq:
		rules = append(rules, setMark())
	}
	if p.jumpSvc {
		return append(rules, []expr.Any{exprs.Verdict(expr.VerdictGoto, p.toSvc)})
	}
	if p.n > 0 {
		rules = append(rules, fam.group(p.group, p.n, p.affinity)...)
	}
	return rules
}

// element is one element of one of the table's sets; in an interval
// set, a range: its start, and end the element past it (none at the end
// of the address space). A range is added and deleted whole.
type element struct {
	set  string
	elem nftables.SetElement
	end  []byte
}

// elemID identifies an element: its set and key (a range's: start and
// end).
type elemID struct{ set, key string }

func (e element) id() elemID { return elemID{e.set, string(e.elem.Key) + "-" + string(e.end)} }

// count is the number of the kernel's elements of e.
func (e element) count() int {
	if e.end == nil {
		return 1
	}
	return 2
}

// rangeElements returns the elements of set holding prefixes (of
// family fam; the others are left out), ranges merged.
func rangeElements(set string, fam *family, prefixes []netip.Prefix) []element {
	// The prefixes are valid (validate).
	kes, _ := nft.FamilyPrefixElements(prefixes, fam.f == IPv4)
	var out []element
	for i := 0; i < len(kes); i++ {
		e := element{set: set, elem: kes[i]}
		if i+1 < len(kes) && kes[i+1].IntervalEnd {
			e.end = kes[i+1].Key
			i++
		}
		out = append(out, e)
	}
	return out
}

// sameElem tells whether two elements of one key have the same value.
func sameElem(a, b nftables.SetElement) bool {
	if string(a.Val) != string(b.Val) {
		return false
	}
	if a.VerdictData == nil || b.VerdictData == nil {
		return a.VerdictData == nil && b.VerdictData == nil
	}
	return a.VerdictData.Kind == b.VerdictData.Kind && a.VerdictData.Chain == b.VerdictData.Chain
}

// chainState is a service chain as programmed: its plan and how many
// rules it holds.
type chainState struct {
	name  string
	plan  chainPlan
	rules int
}

// programmed is what the table holds for one Service.
type programmed struct {
	svc      Service
	chains   []chainState
	elems    []element    // distinct keys
	hairpin  []netip.Addr // the hairpin set's endpoint addresses, each once
	internal *group       // nil without internal endpoints
	external *group       // nil without external endpoints of their own
	cluster  *group       // the short-circuit's, when not the internal ones
}

// groups are the service's endpoint groups (nil for none).
func (p *programmed) groups() []*group { return []*group{p.internal, p.external, p.cluster} }

// hairpinAddrs returns the distinct addresses of the endpoints whose
// connections to themselves through the service this node may DNAT:
// those of its groups not known to be remote, and every one of short,
// the group of an externalTrafficPolicy Local short-circuit (nil for
// none): a pod of another node reaching this node's node port or
// external address is DNATed here, to any of the cluster's endpoints.
func (p *programmed) hairpinAddrs(short *group) []netip.Addr {
	var out []netip.Addr
	for _, g := range p.groups() {
		if g == nil {
			continue
		}
		for _, ep := range g.slots {
			if (!ep.Remote || g == short) && !slices.Contains(out, ep.Addr) {
				out = append(out, ep.Addr)
			}
		}
	}
	return out
}

// groups hands out group numbers, reusing released ones.
type groups struct {
	next uint32
	free []uint32
}

func (g *groups) get() uint32 {
	if n := len(g.free); n > 0 {
		idx := g.free[n-1]
		g.free = g.free[:n-1]
		return idx
	}
	g.next++
	return g.next
}

func (g *groups) put(idx uint32) { g.free = append(g.free, idx) }

// release gives back the number of gr, if it has one.
func (g *groups) release(gr *group) {
	if gr != nil && gr.idx != 0 {
		g.put(gr.idx)
	}
}

// assign returns the group for eps, keeping the slots of the endpoints
// old still has: the endpoints beyond the new count and the new ones
// fill the free slots. A numbered group (one read through the
// endpoints maps) keeps old's number or gets one; an unnumbered one (a
// plain service's, keyed by its ClusterIP) gives old's number back.
func (g *groups) assign(old *group, eps []Endpoint, numbered bool) *group {
	eps = dedup(eps)
	if len(eps) == 0 {
		return nil
	}
	ng := &group{slots: make([]Endpoint, len(eps))}
	wanted := make(map[Endpoint]bool, len(eps))
	for _, ep := range eps {
		wanted[ep] = true
	}
	filled := make([]bool, len(eps))
	placed := map[Endpoint]bool{}
	if old != nil {
		ng.idx = old.idx
		for slot, ep := range old.slots {
			if slot < len(eps) && wanted[ep] {
				ng.slots[slot], filled[slot], placed[ep] = ep, true, true
			}
		}
	}
	switch {
	case numbered && ng.idx == 0:
		ng.idx = g.get()
	case !numbered && ng.idx != 0:
		g.put(ng.idx)
		ng.idx = 0
	}
	next := 0
	for _, ep := range eps {
		if placed[ep] {
			continue
		}
		for filled[next] {
			next++
		}
		ng.slots[next], filled[next] = ep, true
	}
	return ng
}

// dedup returns eps without repeated endpoints, in order.
func dedup(eps []Endpoint) []Endpoint {
	out := make([]Endpoint, 0, len(eps))
	for _, ep := range eps {
		if !slices.Contains(out, ep) {
			out = append(out, ep)
		}
	}
	return out
}

// sameSet tells whether a and b hold the same endpoints.
func sameSet(a, b []Endpoint) bool {
	a, b = dedup(a), dedup(b)
	if len(a) != len(b) {
		return false
	}
	for _, ep := range a {
		if !slices.Contains(b, ep) {
			return false
		}
	}
	return true
}

// protoNumber is the IP protocol number of p.
func protoNumber(p Protocol) byte {
	switch p {
	case UDP:
		return unix.IPPROTO_UDP
	case SCTP:
		return unix.IPPROTO_SCTP
	default:
		return unix.IPPROTO_TCP
	}
}

func port4(p uint16) []byte { return []byte{byte(p >> 8), byte(p), 0, 0} }

// clone returns a copy of s that shares no slice with it: the caller
// may change its services in place after a Sync.
func clone(s *Service) Service {
	c := *s
	c.ExternalIPs = slices.Clone(s.ExternalIPs)
	c.LoadBalancerIPs = slices.Clone(s.LoadBalancerIPs)
	c.Internal = slices.Clone(s.Internal)
	c.External = slices.Clone(s.External)
	c.Cluster = slices.Clone(s.Cluster)
	c.SourceRanges = slices.Clone(s.SourceRanges)
	return c
}

// validate checks that s can be programmed.
func validate(s *Service) error {
	if s.Family != IPv4 && s.Family != IPv6 {
		return fmt.Errorf("service %s: invalid IP family %d", s.ID(), s.Family)
	}
	switch s.Protocol {
	case TCP, UDP, SCTP:
	default:
		return fmt.Errorf("service %s: unsupported protocol %q", s.ID(), s.Protocol)
	}
	if s.Port == 0 {
		return fmt.Errorf("service %s: port 0", s.ID())
	}
	if s.Affinity < 0 || s.Affinity > 24*time.Hour {
		return fmt.Errorf("service %s: affinity timeout %v is not in 0-24h", s.ID(), s.Affinity)
	}
	inFamily := func(what string, a netip.Addr) error {
		if !a.IsValid() || a.Is4() != (s.Family == IPv4) || a.Is4In6() || a.Zone() != "" {
			return fmt.Errorf("service %s: %s %v is not an %s address", s.ID(), what, a, familyName(s.Family))
		}
		return nil
	}
	if s.ClusterIP.IsValid() {
		if err := inFamily("cluster IP", s.ClusterIP); err != nil {
			return err
		}
	}
	for _, a := range slices.Concat(s.ExternalIPs, s.LoadBalancerIPs) {
		if err := inFamily("external IP", a); err != nil {
			return err
		}
	}
	for _, p := range s.SourceRanges {
		if !p.IsValid() || p.Addr().Is4() != (s.Family == IPv4) || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			return fmt.Errorf("service %s: source range %v is not an %s prefix", s.ID(), p, familyName(s.Family))
		}
	}
	for _, eps := range [][]Endpoint{s.Internal, s.External, s.Cluster} {
		for _, ep := range eps {
			if err := inFamily("endpoint", ep.Addr); err != nil {
				return err
			}
			if ep.Port == 0 {
				return fmt.Errorf("service %s: endpoint %v has port 0", s.ID(), ep.Addr)
			}
		}
	}
	return nil
}

// render computes what the table holds for s, given what it held (old,
// nil for a new service) to keep group numbers and slots.
func (t *Table) render(s *Service, old *programmed) *programmed {
	fam := familyOf(s.Family)
	p := &programmed{svc: clone(s)}
	var oldInt, oldExt, oldClu *group
	if old != nil {
		oldInt, oldExt, oldClu = old.internal, old.external, old.cluster
	}
	// The external addresses, each once and apart from the ClusterIP:
	// one element per key.
	var external, lbIPs []netip.Addr
	for _, a := range append(slices.Clone(s.ExternalIPs), s.LoadBalancerIPs...) {
		if a != s.ClusterIP && !slices.Contains(external, a) {
			external = append(external, a)
		}
	}
	for _, a := range s.LoadBalancerIPs {
		if !slices.Contains(lbIPs, a) {
			lbIPs = append(lbIPs, a)
		}
	}
	externallyReachable := s.NodePort != 0 || len(external) > 0
	plain := plainService(s, externallyReachable)
	p.internal = t.groups.assign(oldInt, s.Internal, !plain)
	same := sameSet(s.Internal, s.External)
	if !same {
		p.external = t.groups.assign(oldExt, s.External, true)
	}
	// Under externalTrafficPolicy Local, the cluster's own external
	// traffic goes to the cluster's endpoints: the service chain when
	// they are the internal ones, else a chain of their own.
	shortCircuit := s.ExternalLocal && externallyReachable && len(s.Cluster) > 0
	if shortCircuit && !sameSet(s.Cluster, s.Internal) {
		p.cluster = t.groups.assign(oldClu, s.Cluster, true)
	}
	for _, g := range []struct{ old, new *group }{{oldInt, p.internal}, {oldExt, p.external}, {oldClu, p.cluster}} {
		if g.new == nil {
			t.groups.release(g.old)
		}
	}

	add := func(set string, e nftables.SetElement) {
		p.elems = append(p.elems, element{set: fam.set(set), elem: e})
	}
	proto := []byte{protoNumber(s.Protocol), 0, 0, 0}
	servicePort := append(slices.Clone(proto), port4(s.Port)...)
	addrKey := func(a netip.Addr) []byte { return append(a.AsSlice(), servicePort...) }
	verdict := func(kind expr.VerdictKind, chain string) *expr.Verdict {
		return &expr.Verdict{Kind: kind, Chain: chain}
	}
	cidrs := len(t.skeleton.elems[fam.set(setClusterCIDRs)]) > 0

	// The nft tool reads no colon in a chain name; names and port names
	// hold no slash, so the names stay distinct.
	name := strings.ReplaceAll(s.ID(), ":", "/")
	svcChain, extChain, cluChain := prefixService+name, prefixExternal+name, prefixCluster+name
	hasInternal, hasExternal := p.internal != nil, p.internal != nil
	if !same {
		hasExternal = p.external != nil
	}
	var written []*group // a group's elements go in once
	groupPlan := func(cp *chainPlan, g *group) {
		if g != nil {
			cp.group, cp.n, cp.affinity = g.idx, len(g.slots), s.Affinity
			if slices.Contains(written, g) {
				return
			}
			written = append(written, g)
			for slot, ep := range g.slots {
				p.elems = append(p.elems, element{set: fam.endpointsMap(g.idx), elem: nftables.SetElement{
					Key: append(exprs.Native32(g.idx), exprs.Native32(uint32(slot))...),
					Val: endpointValue(ep),
				}})
			}
		}
	}

	if plain {
		// No chain: the dispatch goes to the shared pick chain of the
		// endpoint count, which finds the endpoints under the ClusterIP.
		g := p.internal
		p.elems = make([]element, 0, 2+len(g.slots))
		add(setServiceIPs, nftables.SetElement{Key: addrKey(s.ClusterIP), VerdictData: verdict(expr.VerdictGoto, fam.pickChain(len(g.slots)))})
		add(setClusterIPs, nftables.SetElement{Key: addrKey(s.ClusterIP)})
		for slot, ep := range g.slots {
			add(setServiceEndpoints, nftables.SetElement{Key: append(addrKey(s.ClusterIP), exprs.Native32(uint32(slot))...), Val: endpointValue(ep)})
		}
		p.hairpin = p.hairpinAddrs(nil)
		return p
	}

	// Traffic without endpoints: rejected when the service has none at
	// all, dropped when it has some but none for this traffic (a
	// traffic policy Local without a local endpoint), as kube-proxy.
	noEndpoints := verdict(expr.VerdictGoto, chainReject)
	if s.hasEndpoints() {
		noEndpoints = verdict(expr.VerdictDrop, "")
	}

	// The service chain serves the ClusterIP, and external traffic
	// short-circuited under externalTrafficPolicy Local when the
	// cluster's endpoints are the internal ones; the cluster chain
	// that short-circuited traffic when they are not.
	if hasInternal {
		cp := chainPlan{family: s.Family, cidrs: cidrs}
		groupPlan(&cp, p.internal)
		p.chains = append(p.chains, chainState{name: svcChain, plan: cp})
	}
	// The short-circuit's chain and endpoints.
	target, short := svcChain, (*group)(nil)
	if shortCircuit {
		short = p.internal
	}
	if p.cluster != nil {
		target, short = cluChain, p.cluster
		cp := chainPlan{family: s.Family, cidrs: cidrs}
		groupPlan(&cp, p.cluster)
		p.chains = append(p.chains, chainState{name: cluChain, plan: cp})
	}
	p.hairpin = p.hairpinAddrs(short)
	if s.ClusterIP.IsValid() {
		if hasInternal {
			add(setServiceIPs, nftables.SetElement{Key: addrKey(s.ClusterIP), VerdictData: verdict(expr.VerdictGoto, svcChain)})
			add(setClusterIPs, nftables.SetElement{Key: addrKey(s.ClusterIP)})
		} else {
			add(setNoEndpoints, nftables.SetElement{Key: addrKey(s.ClusterIP), VerdictData: noEndpoints})
		}
	}
	if !externallyReachable {
		return p
	}
	// External traffic goes to the external chain when the service has
	// endpoints (its short-circuit may serve it); without external
	// endpoints, what the chain does not DNAT is dropped or rejected by
	// the filter chains.
	if s.hasEndpoints() {
		cp := chainPlan{family: s.Family, masq: !s.ExternalLocal, local: s.ExternalLocal, cidrs: cidrs}
		switch {
		case s.ExternalLocal:
			if shortCircuit {
				cp.toSvc = target
			}
			if same {
				groupPlan(&cp, p.internal)
			} else {
				groupPlan(&cp, p.external)
			}
		case same && hasInternal:
			cp.toSvc, cp.jumpSvc = svcChain, true
		default:
			groupPlan(&cp, p.external)
		}
		p.chains = append(p.chains, chainState{name: extChain, plan: cp})
		for _, a := range external {
			add(setServiceIPs, nftables.SetElement{Key: addrKey(a), VerdictData: verdict(expr.VerdictGoto, extChain)})
		}
		if s.NodePort != 0 {
			add(setNodePorts, nftables.SetElement{Key: append(slices.Clone(proto), port4(s.NodePort)...), VerdictData: verdict(expr.VerdictGoto, extChain)})
		}
	}
	if !hasExternal {
		for _, a := range external {
			add(setNoEndpoints, nftables.SetElement{Key: addrKey(a), VerdictData: noEndpoints})
		}
		if s.NodePort != 0 {
			add(setNoEndpointNodePorts, nftables.SetElement{Key: append(slices.Clone(proto), port4(s.NodePort)...), VerdictData: noEndpoints})
		}
	}
	// loadBalancerSourceRanges: the firewall chain drops new connections
	// to the load-balancer IPs from other sources, with or without
	// endpoints.
	if len(s.SourceRanges) > 0 && len(lbIPs) > 0 {
		fwChain, sources := prefixFirewall+name, prefixSources+name
		p.chains = append(p.chains, chainState{name: fwChain, plan: chainPlan{family: s.Family, sources: sources}})
		for _, a := range lbIPs {
			add(setFirewallIPs, nftables.SetElement{Key: addrKey(a), VerdictData: verdict(expr.VerdictGoto, fwChain)})
		}
		p.elems = append(p.elems, rangeElements(sources, fam, s.SourceRanges)...)
	}
	return p
}

// plainService tells whether s needs no chain of its own: a ClusterIP
// with 1 to maxPick internal endpoints, without affinity and not
// reachable from outside. Most services are; each costs the kernel
// elements only, no chain and no rule.
func plainService(s *Service, externallyReachable bool) bool {
	n := len(dedup(s.Internal))
	return s.ClusterIP.IsValid() && s.Affinity == 0 && !externallyReachable && n > 0 && n <= maxPick
}

// endpointValue is an endpoints map's value of ep: address . port.
func endpointValue(ep Endpoint) []byte { return append(ep.Addr.AsSlice(), port4(ep.Port)...) }

// hairpinKey is the hairpin set's key of an endpoint address.
func hairpinKey(a netip.Addr) []byte { return append(a.AsSlice(), a.AsSlice()...) }
