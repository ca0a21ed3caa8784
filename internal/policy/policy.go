// Package policy computes what Kubernetes NetworkPolicy v1, and the
// admin and baseline tiers of ClusterNetworkPolicy above and below it,
// allow for the pods of one node, apart from the data plane that enforces
// it.
//
// Build takes the cluster's NetworkPolicies, ClusterNetworkPolicies,
// Pods, Namespaces and Nodes and returns a Model: for each local pod and
// direction, the cluster tiers' rules in precedence order, whether the pod
// is isolated and, when it is, the traffic its policies allow, as rules
// over named peer sets. The cluster tiers are described in tiers.go; the
// NetworkPolicy semantics follow. The semantics are the API's (k8s.io/api/networking/v1)
// as sigs.k8s.io/kube-network-policies implements them:
//
//   - a policy selects the pods of its namespace matching its podSelector
//     (empty: all of them); it isolates them for ingress always and for
//     egress when its policyTypes list Egress, or, with no policyTypes,
//     when it has egress rules;
//   - the rules of all the policies selecting a pod in a direction add up;
//     a rule with no from/to allows every peer, one with no ports every
//     port;
//   - a peer is an ipBlock (its CIDR less its excepts, as address
//     intervals) or selects pods: podSelector alone in the policy's
//     namespace, namespaceSelector alone all pods of the namespaces it
//     selects ({} every namespace), both together the pods matching the
//     podSelector in those namespaces;
//   - a port is a number, a number range (endPort) or a container port
//     name, of TCP (the default), UDP or SCTP; a port with no number is
//     every port of its protocol. Named ports resolve on the destination:
//     for ingress the local pod's own container ports, for egress each
//     peer pod's, which may differ from peer to peer;
//   - hostNetwork pods are not policed, and as peers are matched by
//     ipBlock only; pods with no IP, and finished pods (Succeeded,
//     Failed), are neither policed nor peers.
//
// The Model is shaped for an nftables data plane: a verdict map keyed by a
// local pod's address leads to its chain for a direction; each Rule of the
// chain accepts when the peer address is in an AddrSet (and the port in
// its ranges), or when peer address . protocol . port is in an
// EndpointSet. Sets are named by a hash of what selects their members, so
// every pod and policy with the same peers shares one set, and pods coming
// and going change set elements, not rules. The data plane adds what is
// not NetworkPolicy's to say: replies of allowed connections pass
// (conntrack), and so does traffic from the pod's own node (kubelet
// probes).
package policy

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"net/netip"
	"slices"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// Protocol is an IP protocol number, as nftables' meta l4proto matches it.
type Protocol uint8

// The protocols of NetworkPolicy ports.
const (
	TCP  Protocol = 6
	UDP  Protocol = 17
	SCTP Protocol = 132
)

// String returns the protocol's Kubernetes name.
func (p Protocol) String() string {
	switch p {
	case TCP:
		return "TCP"
	case UDP:
		return "UDP"
	case SCTP:
		return "SCTP"
	}
	return fmt.Sprintf("proto-%d", uint8(p))
}

// Model is what NetworkPolicy asks of one node.
type Model struct {
	// Pods are the node's policed pods, isolated or not, ordered by
	// namespace and name.
	Pods []Pod
	// AddrSets are the address sets the pods' rules name, ordered by name.
	AddrSets []AddrSet
	// EndpointSets are the endpoint sets the pods' rules name, ordered by
	// name.
	EndpointSets []EndpointSet
}

// Pod is one local pod's policy.
type Pod struct {
	Namespace string
	Name      string
	// IPs are the pod's addresses, IPv4 first: the keys of its verdicts.
	IPs []netip.Addr
	// Ingress is the traffic to the pod, peers being the sources.
	Ingress Direction
	// Egress is the traffic from the pod, peers being the destinations.
	Egress Direction
}

// Direction is a pod's policy for ingress or egress.
type Direction struct {
	// Isolated is true when a policy selects the pod for this direction:
	// then only what Rules allow passes (and replies to it).
	Isolated bool
	// Policies are the namespace/name of the policies isolating the pod in
	// this direction, sorted.
	Policies []string
	// Rules are what passes, any one allowing; none with Isolated denies
	// all. They are ordered, and rules of the same peers are merged.
	Rules []Rule
	// Admin are the rules of the admin tier's ClusterNetworkPolicies
	// selecting the pod, in precedence order (priority, then policy name,
	// then rule order): the first that matches decides, before
	// NetworkPolicy; Pass hands the decision over to NetworkPolicy.
	Admin []TierRule
	// Baseline are the rules of the baseline tier's ClusterNetworkPolicies
	// selecting the pod, in precedence order: they decide only when no
	// admin rule did and no NetworkPolicy isolates the pod in this
	// direction (they are left out when one does); with none matching,
	// traffic passes. Their actions are Accept and Deny only: a Pass there
	// hands over to the default, an Accept.
	Baseline []TierRule
}

// Action is what a cluster tier's rule does with the traffic it matches.
type Action uint8

// The actions of ClusterNetworkPolicy rules.
const (
	// Accept passes the traffic (and its replies), deciding for every
	// lower tier.
	Accept Action = iota + 1
	// Deny drops the traffic.
	Deny
	// Pass skips the rest of the admin tier: NetworkPolicy decides, then
	// the baseline tier.
	Pass
)

// String returns the action's API name.
func (a Action) String() string {
	switch a {
	case Accept:
		return "Accept"
	case Deny:
		return "Deny"
	case Pass:
		return "Pass"
	}
	return fmt.Sprintf("action-%d", uint8(a))
}

// TierRule is one rule of a ClusterNetworkPolicy applied to a pod: what it
// matches (as a NetworkPolicy Rule does) and what it does with it.
type TierRule struct {
	// Policy is the ClusterNetworkPolicy's name.
	Policy string
	Action Action
	Rule
}

// Rule allows traffic with a peer.
type Rule struct {
	// Peers is the name of the AddrSet holding the peer addresses; "" with
	// no Endpoints is any address.
	Peers string
	// Ports are the destination ports allowed with Peers; none is every
	// port of every protocol.
	Ports []PortRange
	// Endpoints is the name of the EndpointSet of the peer address .
	// protocol . port allowed (egress to named ports); Peers and Ports are
	// then empty.
	Endpoints string
}

// PortRange is a range of destination ports of one protocol, both ends
// included; 0-65535 is every port of the protocol.
type PortRange struct {
	Protocol Protocol
	From, To uint16
}

// AddrSet is a named set of peer addresses.
type AddrSet struct {
	// Name is a hash of Key: stable across restarts and shared by every
	// rule with the same peers.
	Name string
	// Key says what selects the members, e.g. `pods {app=db} in namespace
	// prod`.
	Key string
	// Ranges are the members as address intervals, sorted, merged, IPv4
	// before IPv6: the data plane splits them into a set per family.
	Ranges []Range
}

// EndpointSet is a named set of peer address . protocol . port.
type EndpointSet struct {
	// Name is a hash of Key, as AddrSet's.
	Name string
	// Key says what selects the members: the peer and the port name.
	Key string
	// Endpoints are the members, sorted.
	Endpoints []Endpoint
}

// Endpoint is a peer pod's address and one of its named container ports.
type Endpoint struct {
	Addr     netip.Addr
	Protocol Protocol
	Port     uint16
}

// Input is what the Model is computed from: the cluster's objects, as
// informers hold them.
type Input struct {
	Policies []*networkingv1.NetworkPolicy
	// ClusterPolicies are the admin and baseline tiers
	// (policy.networking.k8s.io/v1beta1).
	ClusterPolicies []*npav1beta1.ClusterNetworkPolicy
	Pods            []*corev1.Pod
	Namespaces      []*corev1.Namespace
	// Nodes are the cluster's Nodes, whose status.addresses cluster
	// policies' nodes peers match; nil, unknown: those peers fail closed.
	Nodes []*corev1.Node
}

// Build computes the Model of node (the name pods' spec.nodeName holds)
// from in; a pod whose namespace is missing is taken to have one without
// labels. A policy whose podSelector is invalid is skipped; a peer or port
// of a policy that is invalid matches nothing, the pods it selects staying
// isolated. A cluster policy whose tier or subject is invalid is skipped;
// its invalid or unsupported rule parts fail closed (tiers.go). Each is
// reported in the error, joined, with the Model of all the rest.
func Build(node string, in Input) (*Model, error) {
	policies, pods, namespaces := in.Policies, in.Pods, in.Namespaces
	b := &builder{
		nsLabels:    map[string]labels.Set{},
		addrSets:    map[string]*AddrSet{},
		endpoints:   map[string]*EndpointSet{},
		selected:    map[string]peer{},
		byNamespace: map[string][]*peerPod{},
		nodes:       in.Nodes,
	}
	for _, ns := range namespaces {
		b.nsLabels[ns.Name] = ns.Labels
	}
	var local []*localPod
	for _, p := range pods {
		pp, ok := newPeerPod(p)
		if !ok {
			continue
		}
		b.pods = append(b.pods, pp)
		if p.Spec.NodeName == node {
			local = append(local, &localPod{peerPod: pp})
		}
	}
	slices.SortFunc(b.pods, comparePods)
	for _, pp := range b.pods {
		if _, ok := b.byNamespace[pp.namespace]; !ok {
			b.namespaces = append(b.namespaces, pp.namespace)
		}
		b.byNamespace[pp.namespace] = append(b.byNamespace[pp.namespace], pp)
	}
	slices.SortFunc(local, func(a, b *localPod) int { return comparePods(a.peerPod, b.peerPod) })

	sorted := slices.Clone(policies)
	slices.SortFunc(sorted, func(a, b *networkingv1.NetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	var errs []error
	for _, np := range sorted {
		if err := b.apply(np, local); err != nil {
			errs = append(errs, fmt.Errorf("policy %s/%s: %w", np.Namespace, np.Name, err))
		}
	}
	errs = append(errs, b.applyTiers(in.ClusterPolicies, local)...)

	m := &Model{}
	used := map[string]bool{}
	for _, lp := range local {
		pod := Pod{Namespace: lp.namespace, Name: lp.name, IPs: lp.ips, Ingress: lp.ingress.direction(), Egress: lp.egress.direction()}
		for _, d := range []Direction{pod.Ingress, pod.Egress} {
			for _, r := range d.Rules {
				used[r.Peers], used[r.Endpoints] = true, true
			}
			for _, r := range slices.Concat(d.Admin, d.Baseline) {
				used[r.Peers], used[r.Endpoints] = true, true
			}
		}
		m.Pods = append(m.Pods, pod)
	}
	for name, s := range b.addrSets {
		if used[name] {
			m.AddrSets = append(m.AddrSets, *s)
		}
	}
	for name, s := range b.endpoints {
		if used[name] {
			m.EndpointSets = append(m.EndpointSets, *s)
		}
	}
	slices.SortFunc(m.AddrSets, func(a, b AddrSet) int { return cmp.Compare(a.Name, b.Name) })
	slices.SortFunc(m.EndpointSets, func(a, b EndpointSet) int { return cmp.Compare(a.Name, b.Name) })
	return m, errors.Join(errs...)
}

// peerPod is a pod that can be policed or be a peer.
type peerPod struct {
	namespace, name string
	labels          labels.Set
	ips             []netip.Addr
	// containers are the pod's, for their named ports.
	containers []corev1.Container
}

// localPod is a pod of the node with its directions being built.
type localPod struct {
	*peerPod
	ingress, egress accumulator
}

// newPeerPod returns what policy needs of p, false for a pod that is
// neither policed nor a peer: hostNetwork, finished, or without an IP.
func newPeerPod(p *corev1.Pod) (*peerPod, bool) {
	if p.Spec.HostNetwork || p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed {
		return nil, false
	}
	var ips []netip.Addr
	for _, s := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(s.IP); err == nil && !slices.Contains(ips, a.Unmap()) {
			ips = append(ips, a.Unmap())
		}
	}
	if a, err := netip.ParseAddr(p.Status.PodIP); err == nil && !slices.Contains(ips, a.Unmap()) {
		ips = append(ips, a.Unmap())
	}
	if len(ips) == 0 {
		return nil, false
	}
	slices.SortFunc(ips, netip.Addr.Compare)
	return &peerPod{namespace: p.Namespace, name: p.Name, labels: p.Labels, ips: ips, containers: p.Spec.Containers}, true
}

func comparePods(a, b *peerPod) int {
	return cmp.Or(cmp.Compare(a.namespace, b.namespace), cmp.Compare(a.name, b.name))
}

// builder holds what Build computes once for all policies.
type builder struct {
	nsLabels map[string]labels.Set
	// pods are the peer pods, sorted; byNamespace the same by namespace,
	// the namespaces (of pods) sorted: a selector peer looks at the
	// pods of the namespaces it selects only.
	pods        []*peerPod
	byNamespace map[string][]*peerPod
	namespaces  []string
	addrSets    map[string]*AddrSet
	endpoints   map[string]*EndpointSet
	// selected are the selector peers resolved, by key: policies with
	// the same peers match the pods once.
	selected map[string]peer
	// nodes are Input.Nodes: nil when unknown.
	nodes []*corev1.Node
}

// apply adds np's isolation and rules to the local pods it selects.
func (b *builder) apply(np *networkingv1.NetworkPolicy, local []*localPod) error {
	sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
	if err != nil {
		return fmt.Errorf("podSelector: %w", err)
	}
	var selected []*localPod
	for _, lp := range local {
		if lp.namespace == np.Namespace && sel.Matches(lp.labels) {
			selected = append(selected, lp)
		}
	}
	if len(selected) == 0 {
		return nil
	}
	ingress, egress := policyTypes(&np.Spec)
	id := np.Namespace + "/" + np.Name
	var errs []error
	if ingress {
		for _, lp := range selected {
			lp.ingress.isolate(id)
		}
		for i, r := range np.Spec.Ingress {
			peers, perrs := b.peers(np.Namespace, r.From)
			ports, porterrs := parsePorts(r.Ports)
			errs = append(errs, wrap(append(perrs, porterrs...), "ingress rule %d", i)...)
			for _, lp := range selected {
				lp.ingress.add(b.ingressRules(peers, ports, lp.peerPod, len(r.Ports) == 0))
			}
		}
	}
	if egress {
		for _, lp := range selected {
			lp.egress.isolate(id)
		}
		for i, r := range np.Spec.Egress {
			peers, perrs := b.peers(np.Namespace, r.To)
			ports, porterrs := parsePorts(r.Ports)
			errs = append(errs, wrap(append(perrs, porterrs...), "egress rule %d", i)...)
			rules := b.egressRules(peers, ports, len(r.Ports) == 0)
			for _, lp := range selected {
				lp.egress.add(rules)
			}
		}
	}
	return errors.Join(errs...)
}

// wrap wraps each of errs with a formatted context.
func wrap(errs []error, format string, args ...any) []error {
	out := make([]error, len(errs))
	for i, err := range errs {
		out[i] = fmt.Errorf("%s: %w", fmt.Sprintf(format, args...), err)
	}
	return out
}

// policyTypes returns the directions spec isolates, with the API's
// defaults when it lists none: Ingress always, Egress when it has egress
// rules.
func policyTypes(spec *networkingv1.NetworkPolicySpec) (ingress, egress bool) {
	if len(spec.PolicyTypes) == 0 {
		return true, len(spec.Egress) > 0
	}
	return slices.Contains(spec.PolicyTypes, networkingv1.PolicyTypeIngress),
		slices.Contains(spec.PolicyTypes, networkingv1.PolicyTypeEgress)
}

// peer is one from/to item resolved: its key and how it matches pod
// addresses.
type peer struct {
	key string
	// ipBlock is true for a peer of address ranges (an ipBlock, a
	// cluster policy's networks or nodes); other peers are the addresses
	// of pods.
	ipBlock bool
	ranges  []Range
	pods    []*peerPod
	// all is the peer of a rule with no from/to: any address.
	all bool
}

// peers resolves a rule's from/to; with none, the rule's peer is any
// address. An invalid peer is left out and reported.
func (b *builder) peers(namespace string, items []networkingv1.NetworkPolicyPeer) ([]peer, []error) {
	if len(items) == 0 {
		return []peer{b.anyPeer()}, nil
	}
	var out []peer
	var errs []error
	for i := range items {
		p, err := b.peer(namespace, &items[i])
		if err != nil {
			errs = append(errs, fmt.Errorf("peer %d: %w", i, err))
			continue
		}
		out = append(out, p)
	}
	return out, errs
}

// anyPeer is the peer of every address: a NetworkPolicy rule's with no
// from/to, a failed-closed cluster policy rule's.
func (b *builder) anyPeer() peer {
	return peer{key: "all pods", pods: b.pods, all: true}
}

func (b *builder) peer(namespace string, item *networkingv1.NetworkPolicyPeer) (peer, error) {
	if item.IPBlock != nil {
		return ipBlockPeer(item.IPBlock)
	}
	if item.PodSelector == nil && item.NamespaceSelector == nil {
		return peer{}, errors.New("no ipBlock, podSelector or namespaceSelector")
	}
	var podSel, nsSel labels.Selector
	if item.PodSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(item.PodSelector)
		if err != nil {
			return peer{}, fmt.Errorf("podSelector: %w", err)
		}
		podSel = s
	}
	if item.NamespaceSelector != nil {
		s, err := metav1.LabelSelectorAsSelector(item.NamespaceSelector)
		if err != nil {
			return peer{}, fmt.Errorf("namespaceSelector: %w", err)
		}
		nsSel = s
	}
	return b.selectorPeer(namespace, nsSel, podSel), nil
}

// selectorPeer returns the peer of the pods matching podSel (nil: every
// pod) in the namespaces matching nsSel, or with nsSel nil in namespace
// (podSel is then set).
// Its key depends on what it selects only, so NetworkPolicy and
// ClusterNetworkPolicy peers selecting alike share it, and its set.
func (b *builder) selectorPeer(namespace string, nsSel, podSel labels.Selector) peer {
	if podSel != nil && podSel.Empty() && nsSel != nil {
		podSel = nil
	}
	var p peer
	switch {
	case nsSel == nil:
		p.key = fmt.Sprintf("pods {%s} in namespace %s", podSel, namespace)
	case podSel == nil:
		p.key = fmt.Sprintf("pods in namespaces {%s}", nsSel)
	default:
		p.key = fmt.Sprintf("pods {%s} in namespaces {%s}", podSel, nsSel)
	}
	if cached, ok := b.selected[p.key]; ok {
		return cached
	}
	add := func(ns string) {
		for _, pp := range b.byNamespace[ns] {
			if podSel == nil || podSel.Matches(pp.labels) {
				p.pods = append(p.pods, pp)
			}
		}
	}
	if nsSel == nil {
		add(namespace)
	} else {
		for _, ns := range b.namespaces {
			if nsSel.Matches(b.nsLabels[ns]) {
				add(ns)
			}
		}
	}
	b.selected[p.key] = p
	return p
}

// ipBlockPeer resolves an ipBlock into its address intervals.
func ipBlockPeer(block *networkingv1.IPBlock) (peer, error) {
	cidr, err := netip.ParsePrefix(block.CIDR)
	if err != nil {
		return peer{}, fmt.Errorf("ipBlock cidr: %w", err)
	}
	cidr = cidr.Masked()
	var except []netip.Prefix
	for _, s := range block.Except {
		e, err := netip.ParsePrefix(s)
		if err != nil {
			return peer{}, fmt.Errorf("ipBlock except: %w", err)
		}
		except = append(except, e.Masked())
	}
	slices.SortFunc(except, netip.Prefix.Compare)
	except = slices.Compact(except)
	key := "ipBlock " + cidr.String()
	if len(except) > 0 {
		key += fmt.Sprintf(" except %v", except)
	}
	return peer{key: key, ipBlock: true, ranges: subtract(prefixRange(cidr), except)}, nil
}

// matches returns the addresses of pp that p holds.
func (p *peer) matches(pp *peerPod) []netip.Addr {
	if !p.ipBlock {
		return pp.ips
	}
	var out []netip.Addr
	for _, a := range pp.ips {
		if containsAddr(p.ranges, a) {
			out = append(out, a)
		}
	}
	return out
}

// addrSet returns the name of the AddrSet of p's addresses, "" for any
// address.
func (b *builder) addrSet(p peer) string {
	if p.all {
		return ""
	}
	name := setName(p.key)
	if _, ok := b.addrSets[name]; !ok {
		s := &AddrSet{Name: name, Key: p.key, Ranges: p.ranges}
		if !p.ipBlock {
			n := 0
			for _, pp := range p.pods {
				n += len(pp.ips)
			}
			rs := slices.Grow([]Range(nil), n) // nil for no pods, as before any append
			for _, pp := range p.pods {
				for _, a := range pp.ips {
					rs = append(rs, Range{From: a, To: a})
				}
			}
			s.Ranges = mergeRanges(rs)
		}
		b.addrSets[name] = s
	}
	return name
}

// endpointSet returns the name of the EndpointSet of the addresses of p's
// pods with their container port called port of protocol proto (0: of
// any protocol).
func (b *builder) endpointSet(p peer, port string, proto Protocol) string {
	key := fmt.Sprintf("%s port %s/%s", p.key, port, proto)
	if proto == 0 {
		key = fmt.Sprintf("%s port %s", p.key, port)
	}
	name := setName(key)
	if _, ok := b.endpoints[name]; ok {
		return name
	}
	s := &EndpointSet{Name: name, Key: key}
	pods := p.pods
	if p.ipBlock {
		pods = b.pods
	}
	for _, pp := range pods {
		addrs := p.matches(pp)
		for cpProto, number := range pp.namedPorts(port, proto) {
			for _, a := range addrs {
				s.Endpoints = append(s.Endpoints, Endpoint{Addr: a, Protocol: cpProto, Port: number})
			}
		}
	}
	slices.SortFunc(s.Endpoints, compareEndpoints)
	s.Endpoints = slices.Compact(s.Endpoints)
	b.endpoints[name] = s
	return name
}

// namedPorts yields the protocol and number of each of pp's container
// ports called name, of proto (0: any), whose number is valid.
func (pp *peerPod) namedPorts(name string, proto Protocol) iter.Seq2[Protocol, uint16] {
	return func(yield func(Protocol, uint16) bool) {
		for _, c := range pp.containers {
			for _, cp := range c.Ports {
				cpProto := protocolOf(cp.Protocol)
				ok := cp.Name == name && cpProto != 0 && (proto == 0 || cpProto == proto) && cp.ContainerPort >= 1 && cp.ContainerPort <= 65535
				if ok && !yield(cpProto, uint16(cp.ContainerPort)) {
					return
				}
			}
		}
	}
}

func compareEndpoints(a, b Endpoint) int {
	return cmp.Or(a.Addr.Compare(b.Addr), cmp.Compare(a.Protocol, b.Protocol), cmp.Compare(a.Port, b.Port))
}

// setName is the stable name of the set selected by key.
func setName(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "np-" + hex.EncodeToString(sum[:8])
}

// policyPort is a parsed port: a range, or a name (of a container port
// of rng.Protocol, 0 for any protocol).
type policyPort struct {
	rng  PortRange
	name string
}

// parsePorts parses a rule's ports; an invalid one is left out and
// reported.
func parsePorts(ports []networkingv1.NetworkPolicyPort) ([]policyPort, []error) {
	var out []policyPort
	var errs []error
	for i, p := range ports {
		proto := TCP
		if p.Protocol != nil {
			proto = protocolOf(*p.Protocol)
		}
		if proto == 0 {
			errs = append(errs, fmt.Errorf("port %d: protocol %q", i, *p.Protocol))
			continue
		}
		pp := policyPort{rng: PortRange{Protocol: proto, From: 0, To: 65535}}
		switch {
		case p.Port == nil:
		case p.Port.Type == intstr.String:
			pp.name = p.Port.StrVal
		case p.Port.IntVal < 1 || p.Port.IntVal > 65535:
			errs = append(errs, fmt.Errorf("port %d: %d out of range", i, p.Port.IntVal))
			continue
		default:
			pp.rng.From, pp.rng.To = uint16(p.Port.IntVal), uint16(p.Port.IntVal)
			if p.EndPort != nil {
				if *p.EndPort < p.Port.IntVal || *p.EndPort > 65535 {
					errs = append(errs, fmt.Errorf("port %d: endPort %d out of range", i, *p.EndPort))
					continue
				}
				pp.rng.To = uint16(*p.EndPort)
			}
		}
		out = append(out, pp)
	}
	return out, errs
}

// protocolOf returns the number of a Kubernetes protocol ("" is TCP), 0
// for an unknown one.
func protocolOf(p corev1.Protocol) Protocol {
	switch p {
	case corev1.ProtocolTCP, "":
		return TCP
	case corev1.ProtocolUDP:
		return UDP
	case corev1.ProtocolSCTP:
		return SCTP
	}
	return 0
}

// ingressRules are the rules of one ingress rule for the local pod lp:
// named ports resolve on lp's container ports. anyPort is true for a rule
// with no ports; a rule whose ports all fail to resolve allows nothing.
func (b *builder) ingressRules(peers []peer, ports []policyPort, lp *peerPod, anyPort bool) []Rule {
	var rngs []PortRange
	for _, p := range ports {
		if p.name == "" {
			rngs = append(rngs, p.rng)
			continue
		}
		for proto, number := range lp.namedPorts(p.name, p.rng.Protocol) {
			rngs = append(rngs, PortRange{Protocol: proto, From: number, To: number})
		}
	}
	if !anyPort && len(rngs) == 0 {
		return nil
	}
	out := make([]Rule, 0, len(peers))
	for _, pe := range peers {
		out = append(out, Rule{Peers: b.addrSet(pe), Ports: rngs})
	}
	return out
}

// egressRules are the rules of one egress rule, the same for every pod it
// selects: numbered ports with each peer's addresses, named ports as each
// peer pod's endpoints. anyPort is true for a rule with no ports; a rule
// whose ports are all invalid allows nothing.
func (b *builder) egressRules(peers []peer, ports []policyPort, anyPort bool) []Rule {
	var rngs []PortRange
	var named []Rule
	for _, p := range ports {
		if p.name == "" {
			rngs = append(rngs, p.rng)
			continue
		}
		for _, pe := range peers {
			named = append(named, Rule{Endpoints: b.endpointSet(pe, p.name, p.rng.Protocol)})
		}
	}
	var out []Rule
	if anyPort || len(rngs) > 0 {
		for _, pe := range peers {
			out = append(out, Rule{Peers: b.addrSet(pe), Ports: rngs})
		}
	}
	return append(out, named...)
}
