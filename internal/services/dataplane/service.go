// Package dataplane programs podnet's service proxy into the kernel: one
// nftables table that sends traffic for Services to their endpoints, as
// kube-proxy's nftables mode does, in one transaction per sync and
// incrementally (only the elements and chains that changed).
//
// Its input is the node's desired services, already resolved from the
// Kubernetes objects (package services does that): which endpoints serve
// internal traffic and which serve external traffic is decided there,
// how packets get to them is decided here.
//
// # The table
//
// One inet table, podnet-services, with kube-proxy's hooks and
// priorities (nftables mode) and per-family sets and maps (names end in
// 4 or 6). The per-packet work does not grow with the number of
// services: every decision is a hash lookup.
//
//   - nat-prerouting and nat-output (dstnat) jump to services, which marks
//     traffic to a ClusterIP from outside the cluster CIDRs for
//     masquerade (@cluster-ips), then dispatches "ip daddr . meta l4proto
//     . th dport" through the verdict map @service-ips (ClusterIPs,
//     external and load-balancer IPs) and, on a local destination address
//     (fib daddr type local, not loopback; inside @nodeport-addresses when
//     Config.NodePortAddresses is set), "meta l4proto . th dport" through
//     @service-nodeports.
//   - A plain service port (a ClusterIP only, no affinity, 1 to 32
//     endpoints: most services) has no chain of its own: its @service-ips
//     element goes to the shared pick chain of its endpoint count and
//     family, pick4-<n> (pick4-1 … pick4-32, pick6-…), whose one rule
//     DNATs to "ip daddr . meta l4proto . th dport . numgen random mod n"
//     in @service-endpoints4: the endpoints are found under the packet's
//     own destination, ClusterIP . proto . port . slot. Such a service is
//     elements only (dispatch, @cluster-ips, one per endpoint), no chain,
//     no rule: 10,000 services of which a tenth have a node port take
//     2,072 chains and 3,585 rules instead of 11,008 and 12,521, and
//     adding one writes no chain for the kernel to create and check.
//   - Every other service port has a chain per family, svc-<namespace>/
//     <name>/<port>/<protocol>/<family>, that picks an internal endpoint:
//     "numgen random mod n" gives a slot, and the endpoint of group .
//     slot in an endpoints map is the DNAT target (dnat to <group> .
//     <slot> map @endpoints4-<group mod 64>). With ClientIP affinity, one
//     rule per slot first looks the client up in @affinity (group . slot
//     . client, updated with the timeout on every new connection) and a
//     new client is added there. A service whose endpoint count or
//     features change moves between the two layouts in one sync.
//   - A service with endpoints reachable from outside (node port,
//     external or load-balancer IPs) has an ext-… chain: under
//     externalTrafficPolicy Cluster it marks for masquerade and goes to
//     the service chain (or picks among its own external endpoints);
//     under Local, traffic from the cluster CIDRs goes to the cluster's
//     endpoints (Cluster: the service chain when they are the internal
//     ones, else a chain cluster-… of their own, as kube-proxy's
//     short-circuit ignores internalTrafficPolicy), traffic from the
//     node itself is marked and goes there too, and the rest picks a
//     local (External) endpoint, keeping its source.
//   - filter-input, filter-forward and filter-output (priority dstnat-10,
//     new connections) look the untranslated destination up in
//     @no-endpoint-services and @no-endpoint-nodeports: services without
//     any endpoint go to reject-chain (TCP reset, ICMP port unreachable);
//     a traffic policy Local without a local endpoint (but endpoints
//     elsewhere) drops: the ClusterIP under internalTrafficPolicy Local,
//     the external addresses under externalTrafficPolicy Local (what
//     the ext-… chain did not short-circuit), as kube-proxy.
//   - loadBalancerSourceRanges: filter-prerouting and filter-output
//     (priority dstnat-10, before DNAT, new connections) look "ip daddr
//     . meta l4proto . th dport" up in the verdict map @firewall-ips,
//     which holds the load-balancer IPs of the services with ranges and
//     goes to the service's firewall-… chain: "ip saddr !=
//     @sources-<the service> drop", an interval set of the ranges per
//     service (a change of ranges writes its elements only). Traffic
//     from outside and from the node's pods is checked in prerouting,
//     the node's own in output; node ports and external IPs are not
//     restricted, as with kube-proxy.
//   - nat-postrouting (srcnat) masquerades (fully random) the packets
//     carrying MasqueradeMark, clearing it, and the DNATed connections of
//     an endpoint to itself (hairpin: "ip saddr . ip daddr @hairpin").
//     @hairpin holds the endpoints whose own connections this node may
//     DNAT: those not known to be on another node (Endpoint.Remote), and
//     every endpoint of an externalTrafficPolicy Local short-circuit,
//     which serves pods of other nodes coming to this node's addresses. A
//     pod of another node reaches a ClusterIP through its own node's
//     proxy: at 10,000 services × 5 endpoints on other nodes, the set
//     holds the node's own endpoints, not 50,000 addresses.
//
// The first Sync of a Table deletes and rewrites the table in one
// transaction, so established connections (their conntrack entries)
// keep flowing across an agent restart; later ones diff the desired
// services against what they programmed and write only the chains and
// elements that changed, in one transaction (nft.Batch: one
// acknowledgement per batch, not per object). Update is the same told
// only the services changed and removed: its cost follows the change,
// not the number of services (the controller's path after its first
// sync). Group numbers and slots are kept across syncs, so an endpoint
// added or removed changes one or two map elements (and the dispatch
// element or the chain of its service, which picks among one more or
// one fewer).
//
// Adding a chain, a rule or a jump/goto element makes the kernel check
// the whole table for loops at the commit, a walk of every chain and
// verdict-map element reachable from the base chains: that walk, not
// the change, is what grew with the number of services; plain services
// keep it to the dispatch elements.
package dataplane

import (
	"net/netip"
	"time"
)

// Protocol is a service port's transport protocol.
type Protocol string

// The protocols a service port may have.
const (
	TCP  Protocol = "TCP"
	UDP  Protocol = "UDP"
	SCTP Protocol = "SCTP"
)

// Family is an IP family: 4 or 6.
type Family int

// The IP families.
const (
	IPv4 Family = 4
	IPv6 Family = 6
)

// Service is one port of one Service in one IP family: a dual-stack
// Service with two ports is four Services here.
type Service struct {
	// Namespace and Name are the Service's, PortName its port's name
	// ("" for an unnamed port); with Protocol and Family they identify
	// the Service here (ID).
	Namespace, Name, PortName string
	Protocol                  Protocol
	Family                    Family

	// ClusterIP is the service's cluster IP in Family; invalid (the zero
	// Addr) for a Service without one (headless: nothing is programmed
	// for its ClusterIP).
	ClusterIP netip.Addr
	// Port is the service port.
	Port uint16
	// NodePort is the port opened on the node's addresses, 0 for none.
	NodePort uint16
	// ExternalIPs are spec.externalIPs, LoadBalancerIPs the
	// status.loadBalancer.ingress IPs, both in Family.
	ExternalIPs, LoadBalancerIPs []netip.Addr

	// ExternalLocal is externalTrafficPolicy Local: external traffic
	// (NodePort, external and load-balancer IPs) keeps its source address
	// and goes only to External (the node's local endpoints), and is
	// dropped when there are none; traffic to those addresses from the
	// node's own pods or the node itself is internal (Internal endpoints,
	// masqueraded from the node), as kube-proxy does.
	ExternalLocal bool
	// Affinity is the ClientIP session affinity timeout; 0 is none.
	Affinity time.Duration

	// Internal are the endpoints of traffic to the ClusterIP (the
	// cluster's, or the node's own under internalTrafficPolicy Local),
	// External those of external traffic (the same as Internal unless
	// ExternalLocal), Cluster every usable endpoint of the cluster
	// (kube-proxy's cluster endpoints). Under ExternalLocal, external
	// traffic from the cluster's pods and from the node itself goes to
	// Cluster (kube-proxy's short-circuit: no traffic policy applies to
	// it). A Service with no endpoint in any of the three rejects its
	// traffic (ICMP unreachable, TCP reset); one with endpoints drops
	// the traffic whose own set is empty (a traffic policy Local without
	// a local endpoint), as kube-proxy does.
	Internal, External, Cluster []Endpoint

	// SourceRanges are spec.loadBalancerSourceRanges in Family: new
	// connections to a LoadBalancerIPs address from a source outside
	// them are dropped (before DNAT: from outside, from the node's pods
	// and from the node itself); empty: any source. NodePorts and
	// ExternalIPs are not restricted, as with kube-proxy.
	SourceRanges []netip.Prefix
}

// hasEndpoints tells whether s has a usable endpoint anywhere in the
// cluster (kube-proxy's hasEndpoints): without, its traffic is rejected
// rather than dropped.
func (s *Service) hasEndpoints() bool {
	return len(s.Internal) > 0 || len(s.External) > 0 || len(s.Cluster) > 0
}

// ID identifies a Service: "namespace/name:port/protocol/family".
func (s *Service) ID() string {
	return s.Namespace + "/" + s.Name + ":" + s.PortName + "/" + string(s.Protocol) + "/" + familyName(s.Family)
}

func familyName(f Family) string {
	if f == IPv6 {
		return "ipv6"
	}
	return "ipv4"
}

// Endpoint is one endpoint of a Service: an address and port in the
// Service's family.
type Endpoint struct {
	Addr netip.Addr
	Port uint16
	// Remote: the endpoint is known to be on another node (its
	// EndpointSlice's nodeName is another node's). Its connections to
	// itself through the service are DNATed on its own node, so this
	// node's hairpin set leaves it out. The zero value, on this node or
	// on an unknown one, is the safe one: in the set.
	Remote bool
}
