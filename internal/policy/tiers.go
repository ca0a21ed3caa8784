package policy

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// This file computes the cluster tiers: the ClusterNetworkPolicies
// (policy.networking.k8s.io/v1beta1) of the Admin tier, above
// NetworkPolicy, and of the Baseline tier, below it. A policy's rules go,
// in precedence order, to the Admin or Baseline rules of the local pods
// its subject selects, each rule resolved into TierRules as NetworkPolicy
// rules are into Rules, sharing their sets.
//
// Precedence: a lower spec.priority first; at equal priorities, which the
// API leaves to the implementation, by policy name; within a policy, its
// rules in order.
//
// Fail closed, as the API asks of a peer it cannot interpret: a peer or
// protocol that is invalid (none or several of its fields set, a selector,
// CIDR or port the API's validation rejects) or unsupported (domainNames;
// nodes when Input.Nodes is nil) is reported in Build's error, and then in an Accept rule
// it matches nothing; in a Deny or Pass rule it matches everything (a
// peer: any address; a protocol: every port) and the rule denies. A rule
// with no from/to fails closed alike; one with an unknown action denies
// what it matches.
//
// Pass in the Baseline tier hands the connection to the default, which
// accepts it: it is an Accept there. Baseline rules are left out of a
// direction NetworkPolicy isolates, where they never decide.

// tierRule is a ClusterNetworkPolicy rule's parts, parsed, for either
// direction.
type tierRule struct {
	action Action
	// peers are the valid peers; failed is true when one is invalid or
	// unsupported (or there is none).
	peers  []peer
	failed bool
	// ports are the valid ports; anyPort is true with no protocols;
	// portFailed when one of them is invalid.
	ports      []policyPort
	anyPort    bool
	portFailed bool
}

// applyTiers adds the cluster policies' rules to the local pods they
// select, in precedence order. A policy whose tier or subject is invalid
// is skipped and reported; its invalid rule parts fail closed and are
// reported.
func (b *builder) applyTiers(cnps []*npav1beta1.ClusterNetworkPolicy, local []*localPod) []error {
	sorted := slices.Clone(cnps)
	slices.SortFunc(sorted, func(a, b *npav1beta1.ClusterNetworkPolicy) int {
		return cmp.Or(cmp.Compare(a.Spec.Priority, b.Spec.Priority), cmp.Compare(a.Name, b.Name))
	})
	var errs []error
	for _, cnp := range sorted {
		if err := b.applyTier(cnp, local); err != nil {
			errs = append(errs, fmt.Errorf("cluster network policy %s: %w", cnp.Name, err))
		}
	}
	return errs
}

// applyTier adds cnp's rules to the local pods its subject selects.
func (b *builder) applyTier(cnp *npav1beta1.ClusterNetworkPolicy, local []*localPod) error {
	tier := cnp.Spec.Tier
	if tier != npav1beta1.AdminTier && tier != npav1beta1.BaselineTier {
		return fmt.Errorf("tier %q is neither %s nor %s", tier, npav1beta1.AdminTier, npav1beta1.BaselineTier)
	}
	selected, err := b.subject(&cnp.Spec.Subject, local)
	if err != nil || len(selected) == 0 {
		return err
	}
	var errs []error
	for i, r := range cnp.Spec.Ingress {
		tr, rerrs := b.parseTierRule(tier, r.Action, len(r.From), func(j int) (peer, error) { return b.ingressPeer(&r.From[j]) }, r.Protocols)
		errs = append(errs, wrap(rerrs, "ingress rule %s", ruleName(i, r.Name))...)
		for _, lp := range selected {
			lp.ingress.addTier(tier, tierRules(cnp.Name, tr.action, b.ingressRules(tr.peers, tr.ports, lp.peerPod, tr.anyPort)))
		}
	}
	for i, r := range cnp.Spec.Egress {
		tr, rerrs := b.parseTierRule(tier, r.Action, len(r.To), func(j int) (peer, error) { return b.egressPeer(&r.To[j]) }, r.Protocols)
		errs = append(errs, wrap(rerrs, "egress rule %s", ruleName(i, r.Name))...)
		rules := tierRules(cnp.Name, tr.action, b.egressRules(tr.peers, tr.ports, tr.anyPort))
		for _, lp := range selected {
			lp.egress.addTier(tier, rules)
		}
	}
	return errors.Join(errs...)
}

// ruleName names a rule in errors: its index, and its name if it has one.
func ruleName(i int, name string) string {
	if name == "" {
		return fmt.Sprint(i)
	}
	return fmt.Sprintf("%d (%s)", i, name)
}

// tierRules gives rules policy's action, their ports merged.
func tierRules(policy string, action Action, rules []Rule) []TierRule {
	out := make([]TierRule, len(rules))
	for i, r := range rules {
		if len(r.Ports) > 0 {
			r.Ports = mergePorts(slices.Clone(r.Ports))
		}
		out[i] = TierRule{Policy: policy, Action: action, Rule: r}
	}
	return out
}

// subject returns the local pods s selects.
func (b *builder) subject(s *npav1beta1.ClusterNetworkPolicySubject, local []*localPod) ([]*localPod, error) {
	var p peer
	switch {
	case s.Namespaces != nil && s.Pods != nil:
		return nil, errors.New("subject: both namespaces and pods")
	case s.Namespaces != nil:
		nsSel, err := selector(s.Namespaces, "subject namespaces")
		if err != nil {
			return nil, err
		}
		p = b.selectorPeer("", nsSel, nil)
	case s.Pods != nil:
		nsSel, podSel, err := namespacedPod(s.Pods, "subject pods")
		if err != nil {
			return nil, err
		}
		p = b.selectorPeer("", nsSel, podSel)
	default:
		return nil, errors.New("subject: neither namespaces nor pods")
	}
	var selected []*localPod
	for _, lp := range local {
		if _, ok := slices.BinarySearchFunc(p.pods, lp.peerPod, comparePods); ok {
			selected = append(selected, lp)
		}
	}
	return selected, nil
}

// parseTierRule parses a rule with n peers, resolve(i) resolving the i-th,
// and protocols, and settles its action: Pass is an Accept in the Baseline
// tier, and a rule with an invalid part that does not accept is a Deny.
func (b *builder) parseTierRule(tier npav1beta1.Tier, action npav1beta1.ClusterNetworkPolicyRuleAction, n int,
	resolve func(int) (peer, error), protocols []npav1beta1.ClusterNetworkPolicyProtocol) (tierRule, []error) {
	var tr tierRule
	var errs []error
	switch action {
	case npav1beta1.ClusterNetworkPolicyRuleActionAccept:
		tr.action = Accept
	case npav1beta1.ClusterNetworkPolicyRuleActionDeny:
		tr.action = Deny
	case npav1beta1.ClusterNetworkPolicyRuleActionPass:
		tr.action = Pass
		if tier == npav1beta1.BaselineTier {
			tr.action = Accept
		}
	default:
		tr.action = Deny
		errs = append(errs, fmt.Errorf("action %q", action))
	}
	if n == 0 {
		tr.failed = true
		errs = append(errs, errors.New("no peers"))
	}
	for i := range n {
		p, err := resolve(i)
		if err != nil {
			tr.failed = true
			errs = append(errs, fmt.Errorf("peer %d: %w", i, err))
			continue
		}
		tr.peers = append(tr.peers, p)
	}
	tr.anyPort = len(protocols) == 0
	for i := range protocols {
		p, err := tierPort(&protocols[i])
		if err != nil {
			tr.portFailed = true
			errs = append(errs, fmt.Errorf("protocol %d: %w", i, err))
			continue
		}
		tr.ports = append(tr.ports, p)
	}
	if action != npav1beta1.ClusterNetworkPolicyRuleActionAccept && (tr.failed || tr.portFailed) {
		tr.action = Deny
		if tr.failed {
			tr.peers = []peer{b.anyPeer()}
		}
		if tr.portFailed {
			tr.ports, tr.anyPort = nil, true
		}
	}
	return tr, errs
}

// ingressPeer resolves a source peer: exactly one of namespaces and pods.
func (b *builder) ingressPeer(p *npav1beta1.ClusterNetworkPolicyIngressPeer) (peer, error) {
	return b.egressPeer(&npav1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: p.Namespaces, Pods: p.Pods})
}

// egressPeer resolves a destination peer: exactly one of namespaces, pods,
// networks and nodes; domainNames are not supported.
func (b *builder) egressPeer(p *npav1beta1.ClusterNetworkPolicyEgressPeer) (peer, error) {
	set := 0
	for _, s := range []bool{p.Namespaces != nil, p.Pods != nil, len(p.Networks) > 0, p.Nodes != nil, len(p.DomainNames) > 0} {
		if s {
			set++
		}
	}
	switch {
	case set == 0:
		return peer{}, errors.New("no namespaces, pods, networks, nodes or domainNames: a field this version does not know?")
	case set > 1:
		return peer{}, errors.New("more than one of namespaces, pods, networks, nodes and domainNames")
	case len(p.DomainNames) > 0:
		return peer{}, errors.New("domainNames peers are not supported")
	case p.Namespaces != nil:
		nsSel, err := selector(p.Namespaces, "namespaces")
		if err != nil {
			return peer{}, err
		}
		return b.selectorPeer("", nsSel, nil), nil
	case p.Pods != nil:
		nsSel, podSel, err := namespacedPod(p.Pods, "pods")
		if err != nil {
			return peer{}, err
		}
		return b.selectorPeer("", nsSel, podSel), nil
	case p.Nodes != nil:
		return b.nodesPeer(p.Nodes)
	}
	return networksPeer(p.Networks)
}

// selector parses a label selector, what names it in errors.
func selector(s *metav1.LabelSelector, what string) (labels.Selector, error) {
	sel, err := metav1.LabelSelectorAsSelector(s)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return sel, nil
}

// namespacedPod parses a NamespacedPod's selectors.
func namespacedPod(p *npav1beta1.NamespacedPod, what string) (nsSel, podSel labels.Selector, err error) {
	if nsSel, err = selector(&p.NamespaceSelector, what+" namespaceSelector"); err != nil {
		return nil, nil, err
	}
	if podSel, err = selector(&p.PodSelector, what+" podSelector"); err != nil {
		return nil, nil, err
	}
	return nsSel, podSel, nil
}

// nodesPeer resolves a node selector into the addresses of the nodes it
// selects, those of their status.addresses that are IP addresses.
func (b *builder) nodesPeer(s *metav1.LabelSelector) (peer, error) {
	if b.nodes == nil {
		return peer{}, errors.New("nodes peers: the nodes are not known")
	}
	sel, err := selector(s, "nodes")
	if err != nil {
		return peer{}, err
	}
	p := peer{key: fmt.Sprintf("nodes {%s}", sel), ipBlock: true}
	for _, n := range b.nodes {
		if !sel.Matches(labels.Set(n.Labels)) {
			continue
		}
		for _, a := range n.Status.Addresses {
			if ip, err := netip.ParseAddr(a.Address); err == nil {
				p.ranges = append(p.ranges, Range{From: ip.Unmap(), To: ip.Unmap()})
			}
		}
	}
	p.ranges = mergeRanges(p.ranges)
	return p, nil
}

// networksPeer resolves CIDRs into their addresses; one CIDR is the peer
// of a NetworkPolicy ipBlock of it, sharing its set.
func networksPeer(networks []npav1beta1.CIDR) (peer, error) {
	var prefixes []netip.Prefix
	for _, n := range networks {
		p, err := netip.ParsePrefix(string(n))
		if err != nil {
			return peer{}, fmt.Errorf("networks: %w", err)
		}
		if p != p.Masked() {
			return peer{}, fmt.Errorf("networks: %s is not a network address (%s)", p, p.Masked())
		}
		prefixes = append(prefixes, p)
	}
	slices.SortFunc(prefixes, netip.Prefix.Compare)
	prefixes = slices.Compact(prefixes)
	p := peer{key: "ipBlock", ipBlock: true}
	for _, pf := range prefixes {
		p.key += " " + pf.String()
		p.ranges = append(p.ranges, prefixRange(pf))
	}
	p.ranges = mergeRanges(p.ranges)
	return p, nil
}

// tierPort parses a rule's protocol: exactly one of a TCP, UDP or SCTP
// destination port (a number or a range) and a destination named port,
// of any protocol.
func tierPort(p *npav1beta1.ClusterNetworkPolicyProtocol) (policyPort, error) {
	// proto is one field set; proto 0 the named port.
	type proto struct {
		proto Protocol
		port  *npav1beta1.Port
	}
	var found []proto
	if p.TCP != nil {
		found = append(found, proto{TCP, p.TCP.DestinationPort})
	}
	if p.UDP != nil {
		found = append(found, proto{UDP, p.UDP.DestinationPort})
	}
	if p.SCTP != nil {
		found = append(found, proto{SCTP, p.SCTP.DestinationPort})
	}
	if p.DestinationNamedPort != "" {
		found = append(found, proto{})
	}
	switch {
	case len(found) == 0:
		return policyPort{}, errors.New("no tcp, udp, sctp or destinationNamedPort: a field this version does not know?")
	case len(found) > 1:
		return policyPort{}, errors.New("more than one of tcp, udp, sctp and destinationNamedPort")
	case found[0].proto == 0:
		return policyPort{name: p.DestinationNamedPort}, nil
	}
	f := found[0]
	switch port := f.port; {
	case port == nil:
		return policyPort{}, fmt.Errorf("%s: no destinationPort", f.proto)
	case port.Range != nil && port.Number != 0:
		return policyPort{}, fmt.Errorf("%s: both number and range", f.proto)
	case port.Range != nil:
		r := port.Range
		if r.Start < 1 || r.End > 65535 || r.Start >= r.End {
			return policyPort{}, fmt.Errorf("%s: range %d-%d: not 1 <= start < end <= 65535", f.proto, r.Start, r.End)
		}
		return policyPort{rng: PortRange{Protocol: f.proto, From: uint16(r.Start), To: uint16(r.End)}}, nil
	case port.Number < 1 || port.Number > 65535:
		return policyPort{}, fmt.Errorf("%s: port %d out of range", f.proto, port.Number)
	default:
		return policyPort{rng: PortRange{Protocol: f.proto, From: uint16(port.Number), To: uint16(port.Number)}}, nil
	}
}
