package services

import (
	"cmp"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	netutils "k8s.io/utils/net"

	"github.com/podnet/podnet/internal/services/dataplane"
)

// LabelServiceProxyName marks a Service (and its EndpointSlices) as
// handled by another proxy: kube-proxy and podnet leave it alone.
const LabelServiceProxyName = "service.kubernetes.io/service-proxy-name"

// DefaultAffinityTimeout is the ClientIP session affinity timeout of a
// Service that sets none (the API's default, 3 hours).
const DefaultAffinityTimeout = 10800 * time.Second

// Node is what the model needs to know of the node it runs on.
type Node struct {
	// Name is the node's name: an endpoint is local when its nodeName is
	// this.
	Name string
	// Zone is the node's topology.kubernetes.io/zone label ("" for none):
	// zone hints are followed only when it is set.
	Zone string
	// IPs are the node's primary addresses (kube-proxy's node IPs, one
	// per family): when a loadBalancerSourceRanges range holds one, the
	// Service's load-balancer IPs are allowed sources too (a node
	// reaching a load-balancer IP it holds itself), as kube-proxy.
	IPs []netip.Addr
}

// Result is what one Service is on a node.
type Result struct {
	// Ports are the Service's dataplane services, one per port and IP
	// family, ordered by ID; none for a Service the proxy skips.
	Ports []dataplane.Service
	// HealthCheckNodePort is the port of the Service's health check
	// (LoadBalancer with externalTrafficPolicy Local), 0 for none.
	HealthCheckNodePort uint16
	// LocalReady is the number of distinct addresses of the Service's
	// ready endpoints on this node, what its health check reports.
	LocalReady int
	// Endpoints is the number of distinct endpoint addresses this node
	// sends the Service's traffic to.
	Endpoints int
	// IgnoredSourceRanges are the spec.loadBalancerSourceRanges entries
	// that are not CIDRs: skipped, as kube-proxy does.
	IgnoredSourceRanges []string
}

// Build resolves one Service and its EndpointSlices (those labelled with
// its name, of any address type) into what node programs for it, with
// kube-proxy's semantics:
//
//   - ExternalName and headless Services, and those another proxy handles
//     (LabelServiceProxyName), are skipped;
//   - each port in each of the Service's cluster IP families is one
//     dataplane.Service, its endpoints taken from the slices of that
//     address type (merged and deduplicated) and the slice ports of the
//     same name and protocol;
//   - only ready endpoints serve, or when none is, the serving and
//     terminating ones; topology hints restrict them to the node (node
//     hints) or its zone (zone hints) when every ready endpoint has such
//     hints and one is for the node or its zone;
//   - internalTrafficPolicy Local sends cluster IP traffic to the node's
//     own endpoints only, externalTrafficPolicy Local external traffic;
//     without a local endpoint that traffic is dropped, unless the
//     Service has no endpoint at all (rejected);
//   - spec.loadBalancerSourceRanges of each family restrict the sources
//     of that family's load-balancer IPs; entries that are not CIDRs
//     are skipped (IgnoredSourceRanges).
func Build(svc *corev1.Service, epSlices []*discoveryv1.EndpointSlice, node Node) Result {
	if skip(svc) {
		return Result{}
	}
	sorted := slices.Clone(epSlices)
	slices.SortFunc(sorted, func(a, b *discoveryv1.EndpointSlice) int { return cmp.Compare(a.Name, b.Name) })
	var r Result
	if needsHealthCheck(svc) && svc.Spec.HealthCheckNodePort > 0 && svc.Spec.HealthCheckNodePort <= 65535 {
		r.HealthCheckNodePort = uint16(svc.Spec.HealthCheckNodePort)
	}
	r.LocalReady = localReady(sorted, node.Name)
	var ranges map[dataplane.Family][]netip.Prefix
	ranges, r.IgnoredSourceRanges = sourceRanges(svc.Spec.LoadBalancerSourceRanges)
	reached := map[netip.Addr]bool{}
	for _, ip := range clusterIPs(svc) {
		fam := familyOf(ip)
		for i := range svc.Spec.Ports {
			p, ok := buildPort(svc, &svc.Spec.Ports[i], ip, fam, sorted, node)
			if !ok {
				continue
			}
			p.SourceRanges = allowedSources(ranges[fam], p.LoadBalancerIPs, node.IPs)
			used := [][]dataplane.Endpoint{p.Internal, p.External}
			if p.ExternalLocal && (p.NodePort != 0 || len(p.ExternalIPs) > 0 || len(p.LoadBalancerIPs) > 0) {
				used = append(used, p.Cluster) // the short-circuit's
			}
			for _, eps := range used {
				for _, ep := range eps {
					reached[ep.Addr] = true
				}
			}
			r.Ports = append(r.Ports, p)
		}
	}
	r.Endpoints = len(reached)
	slices.SortFunc(r.Ports, func(a, b dataplane.Service) int { return cmp.Compare(a.ID(), b.ID()) })
	return r
}

// skip reports a Service the proxy does not program.
func skip(svc *corev1.Service) bool {
	if _, ok := svc.Labels[LabelServiceProxyName]; ok {
		return true
	}
	return svc.Spec.Type == corev1.ServiceTypeExternalName || svc.Spec.ClusterIP == "" || svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// clusterIPs are the Service's valid cluster IPs, one per family.
func clusterIPs(svc *corev1.Service) []netip.Addr {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 {
		ips = []string{svc.Spec.ClusterIP}
	}
	var out []netip.Addr
	seen := map[dataplane.Family]bool{}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s)
		if err != nil || seen[familyOf(ip)] {
			continue
		}
		ip = ip.Unmap()
		seen[familyOf(ip)] = true
		out = append(out, ip)
	}
	return out
}

func familyOf(ip netip.Addr) dataplane.Family {
	if ip.Unmap().Is4() {
		return dataplane.IPv4
	}
	return dataplane.IPv6
}

// addrsOf are the valid addresses of ss in family fam.
func addrsOf(ss []string, fam dataplane.Family) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if ip, err := netip.ParseAddr(s); err == nil && familyOf(ip) == fam {
			out = append(out, ip.Unmap())
		}
	}
	return out
}

// externallyAccessible is a Service reached from outside the cluster
// (kube-proxy's apiservice.ExternallyAccessible).
func externallyAccessible(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer || svc.Spec.Type == corev1.ServiceTypeNodePort ||
		svc.Spec.Type == corev1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0
}

// externalPolicyLocal is externalTrafficPolicy Local on a Service it
// applies to.
func externalPolicyLocal(svc *corev1.Service) bool {
	return externallyAccessible(svc) && svc.Spec.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal
}

func internalPolicyLocal(svc *corev1.Service) bool {
	p := svc.Spec.InternalTrafficPolicy
	return p != nil && *p == corev1.ServiceInternalTrafficPolicyLocal
}

// needsHealthCheck is a Service whose health check node port the proxy
// serves: a LoadBalancer with externalTrafficPolicy Local.
func needsHealthCheck(svc *corev1.Service) bool {
	return svc.Spec.Type == corev1.ServiceTypeLoadBalancer && externalPolicyLocal(svc)
}

// protocols maps the API's protocols to the dataplane's.
var protocols = map[corev1.Protocol]dataplane.Protocol{
	corev1.ProtocolTCP: dataplane.TCP, corev1.ProtocolUDP: dataplane.UDP, corev1.ProtocolSCTP: dataplane.SCTP,
}

// buildPort is the dataplane service of one port of svc in the family of
// clusterIP; false for a port it cannot program.
func buildPort(svc *corev1.Service, sp *corev1.ServicePort, clusterIP netip.Addr, fam dataplane.Family, epSlices []*discoveryv1.EndpointSlice, node Node) (dataplane.Service, bool) {
	proto, ok := protocols[cmp.Or(sp.Protocol, corev1.ProtocolTCP)]
	if !ok || sp.Port <= 0 || sp.Port > 65535 || sp.NodePort < 0 || sp.NodePort > 65535 {
		return dataplane.Service{}, false
	}
	s := dataplane.Service{
		Namespace: svc.Namespace, Name: svc.Name, PortName: sp.Name, Protocol: proto, Family: fam,
		ClusterIP: clusterIP, Port: uint16(sp.Port), NodePort: uint16(sp.NodePort),
		ExternalIPs:     addrsOf(svc.Spec.ExternalIPs, fam),
		LoadBalancerIPs: loadBalancerIPs(svc, fam),
		ExternalLocal:   externalPolicyLocal(svc),
	}
	if svc.Spec.SessionAffinity == corev1.ServiceAffinityClientIP {
		s.Affinity = DefaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil && *c.ClientIP.TimeoutSeconds > 0 {
			s.Affinity = time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
		}
	}
	accessible := s.NodePort != 0 || len(s.ExternalIPs) > 0 || len(s.LoadBalancerIPs) > 0
	eps := endpointsOf(epSlices, sp, fam, node.Name)
	cluster, local := categorize(eps, internalPolicyLocal(svc), s.ExternalLocal, accessible, node)
	s.Internal, s.Cluster = cluster, cluster
	if internalPolicyLocal(svc) {
		s.Internal = local
	}
	if accessible {
		s.External = cluster
		if s.ExternalLocal {
			s.External = local
		}
	}
	return s, true
}

// sourceRanges parses spec.loadBalancerSourceRanges as kube-proxy does
// (spaces trimmed, IPv4 octets with leading zeros read as decimal), by
// family; the entries that are not CIDRs are returned apart (empty ones
// are ignored silently).
func sourceRanges(ss []string) (map[dataplane.Family][]netip.Prefix, []string) {
	var ranges map[dataplane.Family][]netip.Prefix
	var ignored []string
	for _, s := range ss {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		_, n, err := netutils.ParseCIDRSloppy(s)
		p, ok := netip.Prefix{}, false
		if err == nil {
			p, ok = prefixOf(n)
		}
		if !ok || !p.IsValid() {
			ignored = append(ignored, s)
			continue
		}
		if ranges == nil {
			ranges = map[dataplane.Family][]netip.Prefix{}
		}
		fam := familyOf(p.Addr())
		if !slices.Contains(ranges[fam], p) {
			ranges[fam] = append(ranges[fam], p)
		}
	}
	return ranges, ignored
}

// allowedSources are the sources allowed to reach the load-balancer
// IPs lbIPs: the ranges, and lbIPs themselves when a range holds one of
// the node's addresses (kube-proxy's rule for load balancers whose IP is
// a local address of the node: its own connections come from that IP).
// None without load-balancer IPs or ranges.
func allowedSources(ranges []netip.Prefix, lbIPs, nodeIPs []netip.Addr) []netip.Prefix {
	if len(ranges) == 0 || len(lbIPs) == 0 {
		return nil
	}
	out := slices.Clone(ranges)
	if slices.ContainsFunc(ranges, func(p netip.Prefix) bool { return slices.ContainsFunc(nodeIPs, p.Contains) }) {
		for _, a := range lbIPs {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// loadBalancerIPs are the Service's load-balancer ingress IPs in fam,
// but those of ipMode Proxy: that load balancer proxies to the node
// ports itself and its IP must not be captured on the nodes.
func loadBalancerIPs(svc *corev1.Service, fam dataplane.Family) []netip.Addr {
	var ips []string
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" && (ing.IPMode == nil || *ing.IPMode == corev1.LoadBalancerIPModeVIP) {
			ips = append(ips, ing.IP)
		}
	}
	return addrsOf(ips, fam)
}

// endpoint is one endpoint of a service port with what decides whether
// it serves.
type endpoint struct {
	dataplane.Endpoint
	local, ready, serving, terminating bool
	zones                              []string // hints.forZones
	nodes                              []string // hints.forNodes
}

// endpointsOf are the endpoints of service port sp in family fam in the
// Service's slices: the slices of that address type, their ports of sp's
// name and protocol, deduplicated by address and port (a local duplicate
// wins, then one not known to be remote), ordered.
func endpointsOf(epSlices []*discoveryv1.EndpointSlice, sp *corev1.ServicePort, fam dataplane.Family, nodeName string) []endpoint {
	want := discoveryv1.AddressTypeIPv4
	if fam == dataplane.IPv6 {
		want = discoveryv1.AddressTypeIPv6
	}
	proto := cmp.Or(sp.Protocol, corev1.ProtocolTCP)
	byKey := map[netip.AddrPort]endpoint{}
	for _, sl := range epSlices {
		if sl.AddressType != want {
			continue
		}
		for _, p := range sl.Ports {
			if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 || deref(p.Name) != sp.Name || cmp.Or(deref(p.Protocol), corev1.ProtocolTCP) != proto {
				continue
			}
			for i := range sl.Endpoints {
				ep, ok := newEndpoint(&sl.Endpoints[i], uint16(*p.Port), fam, nodeName)
				if !ok {
					continue
				}
				k := netip.AddrPortFrom(ep.Addr, ep.Port)
				if old, dup := byKey[k]; !dup || ep.local || old.Remote && !ep.Remote {
					byKey[k] = ep
				}
			}
		}
	}
	out := make([]endpoint, 0, len(byKey))
	for _, ep := range byKey {
		out = append(out, ep)
	}
	slices.SortFunc(out, func(a, b endpoint) int { return compareEndpoints(a.Endpoint, b.Endpoint) })
	return out
}

func compareEndpoints(a, b dataplane.Endpoint) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Port, b.Port))
}

// newEndpoint reads one slice endpoint: its first address, which must be
// of family fam, and its conditions as the API defines them (ready and
// serving unless false, terminating only if true).
func newEndpoint(e *discoveryv1.Endpoint, port uint16, fam dataplane.Family, nodeName string) (endpoint, bool) {
	if len(e.Addresses) == 0 {
		return endpoint{}, false
	}
	ip, err := netip.ParseAddr(e.Addresses[0])
	if err != nil || familyOf(ip) != fam {
		return endpoint{}, false
	}
	ep := endpoint{
		Endpoint: dataplane.Endpoint{
			Addr: ip.Unmap(), Port: port,
			Remote: e.NodeName != nil && *e.NodeName != "" && *e.NodeName != nodeName,
		},
		local:       e.NodeName != nil && *e.NodeName == nodeName,
		ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
		serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
		terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
	}
	if e.Hints != nil {
		for _, z := range e.Hints.ForZones {
			ep.zones = append(ep.zones, z.Name)
		}
		for _, n := range e.Hints.ForNodes {
			ep.nodes = append(ep.nodes, n.Name)
		}
	}
	return ep, true
}

// categorize is kube-proxy's CategorizeEndpoints: the endpoints of
// cluster-wide traffic (topology applied, falling back to serving and
// terminating ones; also when no traffic policy uses them: whether
// there are any decides between dropping and rejecting, kube-proxy's
// hasEndpoints) and of node-local traffic (ready local ones, else
// serving and terminating local ones), computed only when a traffic
// policy uses it.
func categorize(eps []endpoint, internalLocal, externalLocal, accessible bool, node Node) (cluster, local []dataplane.Endpoint) {
	forTopology := topologyFilter(eps, node)
	cluster = pick(eps, func(ep endpoint) bool { return ep.ready && forTopology(ep) })
	if len(cluster) == 0 {
		cluster = pick(eps, func(ep endpoint) bool { return ep.serving && ep.terminating })
	}
	if internalLocal || externalLocal && accessible {
		local = pick(eps, func(ep endpoint) bool { return ep.local && ep.ready })
		if len(local) == 0 {
			local = pick(eps, func(ep endpoint) bool { return ep.local && ep.serving && ep.terminating })
		}
	}
	return cluster, local
}

// topologyFilter is kube-proxy's topologyModeFromHints: node hints
// (trafficDistribution PreferSameNode) when every ready endpoint has
// some and one is for this node, else zone hints (PreferClose,
// PreferSameZone, topology-aware routing) when every ready endpoint has
// some, the node has a zone and one is for it, else every endpoint.
func topologyFilter(eps []endpoint, node Node) func(endpoint) bool {
	allNodes, forNode := true, false
	allZones, forZone := true, false
	for _, ep := range eps {
		if !ep.ready {
			continue
		}
		allNodes = allNodes && len(ep.nodes) > 0
		forNode = forNode || slices.Contains(ep.nodes, node.Name)
		allZones = allZones && len(ep.zones) > 0
		forZone = forZone || node.Zone != "" && slices.Contains(ep.zones, node.Zone)
	}
	switch {
	case allNodes && forNode:
		return func(ep endpoint) bool { return slices.Contains(ep.nodes, node.Name) }
	case allZones && forZone:
		return func(ep endpoint) bool { return slices.Contains(ep.zones, node.Zone) }
	}
	return func(endpoint) bool { return true }
}

func pick(eps []endpoint, keep func(endpoint) bool) []dataplane.Endpoint {
	var out []dataplane.Endpoint
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep.Endpoint)
		}
	}
	return out
}

// localReady counts the distinct addresses of the ready endpoints on
// node in the slices.
func localReady(epSlices []*discoveryv1.EndpointSlice, nodeName string) int {
	seen := map[netip.Addr]bool{}
	for _, sl := range epSlices {
		if sl.AddressType != discoveryv1.AddressTypeIPv4 && sl.AddressType != discoveryv1.AddressTypeIPv6 {
			continue
		}
		for _, e := range sl.Endpoints {
			if len(e.Addresses) == 0 || e.NodeName == nil || *e.NodeName != nodeName || e.Conditions.Ready != nil && !*e.Conditions.Ready {
				continue
			}
			if ip, err := netip.ParseAddr(e.Addresses[0]); err == nil {
				seen[ip.Unmap()] = true
			}
		}
	}
	return len(seen)
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
