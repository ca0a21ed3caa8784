package policy

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
)

// cnp is a ClusterNetworkPolicy of tier ("Admin", "Baseline") and
// priority selecting subject, with rules: ClusterNetworkPolicyIngressRule
// and ClusterNetworkPolicyEgressRule values, in order.
func cnp(name string, tier npav1beta1.Tier, priority int32, subject npav1beta1.ClusterNetworkPolicySubject, rules ...any) *npav1beta1.ClusterNetworkPolicy {
	p := &npav1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       npav1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject},
	}
	for _, r := range rules {
		switch r := r.(type) {
		case npav1beta1.ClusterNetworkPolicyIngressRule:
			p.Spec.Ingress = append(p.Spec.Ingress, r)
		case npav1beta1.ClusterNetworkPolicyEgressRule:
			p.Spec.Egress = append(p.Spec.Egress, r)
		default:
			panic(fmt.Sprintf("rule %T", r))
		}
	}
	return p
}

const (
	admin    = npav1beta1.AdminTier
	baseline = npav1beta1.BaselineTier
	accept   = npav1beta1.ClusterNetworkPolicyRuleActionAccept
	deny     = npav1beta1.ClusterNetworkPolicyRuleActionDeny
	pass     = npav1beta1.ClusterNetworkPolicyRuleActionPass
)

// subjectNS selects the pods of the namespaces with labels kv.
func subjectNS(kv ...string) npav1beta1.ClusterNetworkPolicySubject {
	return npav1beta1.ClusterNetworkPolicySubject{Namespaces: sel(kv...)}
}

// subjectPods selects the pods with labels podKV in the namespaces with
// labels nsKV.
func subjectPods(nsKV, podKV []string) npav1beta1.ClusterNetworkPolicySubject {
	return npav1beta1.ClusterNetworkPolicySubject{Pods: namespaced(nsKV, podKV)}
}

func namespaced(nsKV, podKV []string) *npav1beta1.NamespacedPod {
	return &npav1beta1.NamespacedPod{NamespaceSelector: *sel(nsKV...), PodSelector: *sel(podKV...)}
}

func kv(s ...string) []string { return s }

// from is an ingress rule; peers are ClusterNetworkPolicyEgressPeer
// values whose namespaces and pods make the ingress peers.
func from(action npav1beta1.ClusterNetworkPolicyRuleAction, peers []npav1beta1.ClusterNetworkPolicyEgressPeer, protocols ...npav1beta1.ClusterNetworkPolicyProtocol) npav1beta1.ClusterNetworkPolicyIngressRule {
	r := npav1beta1.ClusterNetworkPolicyIngressRule{Action: action, Protocols: protocols}
	for _, p := range peers {
		r.From = append(r.From, npav1beta1.ClusterNetworkPolicyIngressPeer{Namespaces: p.Namespaces, Pods: p.Pods})
	}
	return r
}

func to(action npav1beta1.ClusterNetworkPolicyRuleAction, peers []npav1beta1.ClusterNetworkPolicyEgressPeer, protocols ...npav1beta1.ClusterNetworkPolicyProtocol) npav1beta1.ClusterNetworkPolicyEgressRule {
	return npav1beta1.ClusterNetworkPolicyEgressRule{Action: action, To: peers, Protocols: protocols}
}

func cpeers(p ...npav1beta1.ClusterNetworkPolicyEgressPeer) []npav1beta1.ClusterNetworkPolicyEgressPeer {
	return p
}

func nsCPeer(kv ...string) npav1beta1.ClusterNetworkPolicyEgressPeer {
	return npav1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: sel(kv...)}
}

func podsCPeer(nsKV, podKV []string) npav1beta1.ClusterNetworkPolicyEgressPeer {
	return npav1beta1.ClusterNetworkPolicyEgressPeer{Pods: namespaced(nsKV, podKV)}
}

func netCPeer(cidrs ...npav1beta1.CIDR) npav1beta1.ClusterNetworkPolicyEgressPeer {
	return npav1beta1.ClusterNetworkPolicyEgressPeer{Networks: cidrs}
}

// proto is a rule protocol: "TCP/80", "UDP/53-60", "SCTP/9", or a bare
// name for a destination named port.
func proto(s string) npav1beta1.ClusterNetworkPolicyProtocol {
	name, ports, ok := strings.Cut(s, "/")
	if !ok {
		return npav1beta1.ClusterNetworkPolicyProtocol{DestinationNamedPort: s}
	}
	var port npav1beta1.Port
	if lo, hi, isRange := strings.Cut(ports, "-"); isRange {
		port.Range = &npav1beta1.PortRange{}
		fmt.Sscan(lo, &port.Range.Start)
		fmt.Sscan(hi, &port.Range.End)
	} else {
		fmt.Sscan(ports, &port.Number)
	}
	var p npav1beta1.ClusterNetworkPolicyProtocol
	switch name {
	case "TCP":
		p.TCP = &npav1beta1.ClusterNetworkPolicyProtocolTCP{DestinationPort: &port}
	case "UDP":
		p.UDP = &npav1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &port}
	case "SCTP":
		p.SCTP = &npav1beta1.ClusterNetworkPolicyProtocolSCTP{DestinationPort: &port}
	}
	return p
}

// describeTiers renders the tier rules of m's pods, one line per pod,
// direction and tier: "ns/name admin|baseline in|out: policy Action
// rule; ...", a rule as describe renders it.
func describeTiers(t *testing.T, m *Model) []string {
	t.Helper()
	addrs, eps := modelSets(t, m)
	var out []string
	for _, p := range m.Pods {
		for _, d := range []struct {
			name string
			dir  Direction
		}{{"in", p.Ingress}, {"out", p.Egress}} {
			for _, tier := range []struct {
				name  string
				rules []TierRule
			}{{"admin", d.dir.Admin}, {"baseline", d.dir.Baseline}} {
				if len(tier.rules) == 0 {
					continue
				}
				var rules []string
				for _, r := range tier.rules {
					rules = append(rules, fmt.Sprintf("%s %s %s", r.Policy, r.Action, describeRule(t, r.Rule, addrs, eps)))
				}
				out = append(out, fmt.Sprintf("%s/%s %s %s: %s", p.Namespace, p.Name, tier.name, d.name, strings.Join(rules, "; ")))
			}
		}
	}
	return out
}

func TestBuildTiers(t *testing.T) {
	prodWeb := subjectPods(kv("env", "prod"), kv("app", "web"))
	for _, tc := range []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		cnps     []*npav1beta1.ClusterNetworkPolicy
		nodes    []*corev1.Node
		want     []string
	}{{
		name: "no cluster policy",
	}, {
		name: "subject namespaces; peer namespaces; hostNetwork pods are neither",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("deny-dev", admin, 10, subjectNS("env", "prod"),
			from(deny, cpeers(nsCPeer("env", "dev"))), to(accept, cpeers(nsCPeer("env", "prod"))))},
		want: []string{
			"prod/db admin in: deny-dev Deny {10.0.1.3,10.0.2.2,fd00::3}", "prod/db admin out: deny-dev Accept {10.0.1.1-10.0.1.2,10.0.2.1}",
			"prod/web admin in: deny-dev Deny {10.0.1.3,10.0.2.2,fd00::3}", "prod/web admin out: deny-dev Accept {10.0.1.1-10.0.1.2,10.0.2.1}",
		},
	}, {
		name: "subject pods; peer pods; a policy without egress rules leaves egress alone",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("web", admin, 10, subjectPods(nil, kv("app", "web")),
			from(accept, cpeers(podsCPeer(nil, kv("app", "api")), podsCPeer(kv("env", "dev"), nil))))},
		want: []string{"prod/web admin in: web Accept {10.0.2.1}; web Accept {10.0.1.3,10.0.2.2,fd00::3}"},
	}, {
		name: "priority orders policies, then the name; rules in their order",
		cnps: []*npav1beta1.ClusterNetworkPolicy{
			cnp("c", admin, 20, prodWeb, from(deny, cpeers(nsCPeer()))),
			cnp("z", admin, 5, prodWeb, from(pass, cpeers(nsCPeer("env", "dev"))), from(deny, cpeers(nsCPeer("env", "prod")))),
			cnp("a", admin, 5, prodWeb, from(accept, cpeers(podsCPeer(nil, kv("app", "api"))))),
		},
		want: []string{"prod/web admin in: a Accept {10.0.2.1}; z Pass {10.0.1.3,10.0.2.2,fd00::3}; z Deny {10.0.1.1-10.0.1.2,10.0.2.1}; c Deny {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3}"},
	}, {
		name: "baseline apart from admin; Pass in baseline accepts; no baseline where NetworkPolicy isolates",
		policies: []*networkingv1.NetworkPolicy{policy("prod/db-deny", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"), PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		})},
		cnps: []*npav1beta1.ClusterNetworkPolicy{
			cnp("base", baseline, 1, subjectNS("env", "prod"), from(pass, cpeers(nsCPeer("env", "prod"))), from(deny, cpeers(nsCPeer())),
				to(deny, cpeers(netCPeer("10.0.2.0/24")))),
			cnp("adm", admin, 1000, subjectNS("env", "prod"), from(pass, cpeers(nsCPeer("env", "dev")))),
		},
		want: []string{
			"prod/db admin in: adm Pass {10.0.1.3,10.0.2.2,fd00::3}",
			"prod/db baseline out: base Deny {10.0.2.0-10.0.2.255}",
			"prod/web admin in: adm Pass {10.0.1.3,10.0.2.2,fd00::3}",
			"prod/web baseline in: base Accept {10.0.1.1-10.0.1.2,10.0.2.1}; base Deny {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3}",
			"prod/web baseline out: base Deny {10.0.2.0-10.0.2.255}",
		},
	}, {
		name: "networks: several CIDRs, both families, in one set",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("ext", admin, 1, prodWeb,
			to(deny, cpeers(netCPeer("fd00::/64", "10.0.0.0/24", "10.0.1.0/24", "10.0.0.0/24")), proto("TCP/443")))},
		want: []string{"prod/web admin out: ext Deny {10.0.0.0-10.0.1.255,fd00::-fd00::ffff:ffff:ffff:ffff} TCP/443"},
	}, {
		name: "nodes: their addresses; an invalid selector fails closed",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("nodes", admin, 1, prodWeb,
			to(accept, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{Nodes: sel("zone", "a")}), proto("TCP/10250")),
			to(deny, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{Nodes: sel()})),
			to(pass, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{Nodes: &metav1.LabelSelector{
				MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "zone", Operator: "Bogus"}},
			}})),
		)},
		nodes: []*corev1.Node{
			{ObjectMeta: metav1.ObjectMeta{Name: "n1", Labels: map[string]string{"zone": "a"}}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "192.168.0.1"}, {Type: corev1.NodeInternalIP, Address: "fd01::1"}, {Type: corev1.NodeHostName, Address: "n1"},
			}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "n2"}, Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: "192.168.0.2"}, {Type: corev1.NodeExternalIP, Address: "::ffff:203.0.113.2"},
			}}},
		},
		want: []string{"prod/web admin out: nodes Accept {192.168.0.1,fd01::1} TCP/10250; nodes Deny {192.168.0.1-192.168.0.2,203.0.113.2,fd01::1}; nodes Deny *"},
	}, {
		name: "ports: numbers, ranges, UDP, SCTP; ingress named ports of any protocol on the subject pod",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("ports", admin, 1, subjectNS("env", "prod"),
			from(accept, cpeers(nsCPeer()), proto("TCP/8000"), proto("TCP/7000-7999"), proto("UDP/53"), proto("SCTP/9999")),
			from(deny, cpeers(nsCPeer()), proto("http")),
		)},
		want: []string{
			"prod/db admin in: ports Accept {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3} TCP/7000-8000 UDP/53 SCTP/9999",
			"prod/web admin in: ports Accept {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3} TCP/7000-8000 UDP/53 SCTP/9999; ports Deny {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3} TCP/80",
		},
	}, {
		name: "egress named ports resolve on each peer, of any protocol",
		cnps: []*npav1beta1.ClusterNetworkPolicy{cnp("named", admin, 1, prodWeb,
			to(accept, cpeers(nsCPeer()), proto("http"), proto("dns"), proto("TCP/443")))},
		want: []string{"prod/web admin out: named Accept {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3} TCP/443; " + byName(
			setName("pods in namespaces {} port http"), "named Accept to {10.0.1.1.TCP/80,10.0.2.1.TCP/8080,10.0.2.2.TCP/8000}",
			setName("pods in namespaces {} port dns"), "named Accept to {10.0.2.1.UDP/53}")},
	}, {
		name: "fail closed: an invalid or unsupported peer matches nothing in Accept, everything in Deny and Pass, which deny",
		cnps: []*npav1beta1.ClusterNetworkPolicy{
			cnp("a-accept", admin, 1, prodWeb,
				to(accept, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{Nodes: sel()}, nsCPeer("env", "dev"))),
				to(accept, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []npav1beta1.DomainName{"example.com"}})),
				to(accept, nil),
				from(accept, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{})),
			),
			cnp("b-deny", admin, 2, prodWeb, to(deny, cpeers(netCPeer("10.0.0.1/8")), proto("TCP/80"))),
			cnp("c-pass", admin, 3, prodWeb, to(pass, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []npav1beta1.DomainName{"example.com"}}))),
			cnp("d-base", baseline, 1, prodWeb, from(pass, cpeers(podsCPeer(nil, nil), npav1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: sel(), Pods: namespaced(nil, nil)}), proto("UDP/53"))),
		},
		want: []string{
			"prod/web baseline in: d-base Deny * UDP/53",
			"prod/web admin out: a-accept Accept {10.0.1.3,10.0.2.2,fd00::3}; b-deny Deny * TCP/80; c-pass Deny *",
		},
	}, {
		name: "fail closed: an invalid protocol matches no port in Accept, every port in Deny; an unknown action denies what it matches",
		cnps: []*npav1beta1.ClusterNetworkPolicy{
			cnp("a", admin, 1, prodWeb,
				from(accept, cpeers(nsCPeer("env", "dev")), proto("TCP/0")),
				from(accept, cpeers(nsCPeer("env", "dev")), npav1beta1.ClusterNetworkPolicyProtocol{}, proto("UDP/53")),
				from(deny, cpeers(nsCPeer("env", "dev")), proto("UDP/60-50")),
				from("Log", cpeers(podsCPeer(nil, kv("app", "api"))), proto("TCP/80")),
			),
		},
		want: []string{"prod/web admin in: " + strings.Join([]string{
			"a Accept {10.0.1.3,10.0.2.2,fd00::3} UDP/53", "a Deny {10.0.1.3,10.0.2.2,fd00::3}", "a Deny {10.0.2.1} TCP/80",
		}, "; ")},
	}, {
		name: "rules after one matching all traffic are left out",
		cnps: []*npav1beta1.ClusterNetworkPolicy{
			cnp("a", admin, 1, prodWeb, from(deny, cpeers(npav1beta1.ClusterNetworkPolicyEgressPeer{}))),
			cnp("b", admin, 2, prodWeb, from(accept, cpeers(nsCPeer()))),
		},
		want: []string{"prod/web admin in: a Deny *"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, _ := Build(testNode, Input{Policies: tc.policies, ClusterPolicies: tc.cnps, Pods: pods(), Namespaces: namespaces(), Nodes: tc.nodes})
			if got := describeTiers(t, m); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got\n\t%s\nwant\n\t%s", strings.Join(got, "\n\t"), strings.Join(tc.want, "\n\t"))
			}
			var names []string
			for _, p := range m.Pods {
				names = append(names, p.Namespace+"/"+p.Name)
			}
			if want := []string{"dev/cli", "prod/db", "prod/web"}; !slices.Equal(names, want) {
				t.Errorf("policed pods %v, want %v", names, want)
			}
		})
	}
}

func TestBuildTiersInvalid(t *testing.T) {
	bad := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}}
	prodWeb := subjectPods(kv("env", "prod"), kv("app", "web"))
	both := proto("TCP/80")
	both.UDP = &npav1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &npav1beta1.Port{Number: 53}}
	cnps := []*npav1beta1.ClusterNetworkPolicy{
		cnp("badtier", "Developer", 1, prodWeb, from(deny, cpeers(nsCPeer()))),
		cnp("nosubject", admin, 1, npav1beta1.ClusterNetworkPolicySubject{}),
		cnp("twosubjects", admin, 1, npav1beta1.ClusterNetworkPolicySubject{Namespaces: sel(), Pods: namespaced(nil, nil)}),
		cnp("badsubjectns", admin, 1, npav1beta1.ClusterNetworkPolicySubject{Namespaces: bad}),
		cnp("badsubjectpods", admin, 1, npav1beta1.ClusterNetworkPolicySubject{Pods: &npav1beta1.NamespacedPod{PodSelector: *bad}}),
		cnp("badrules", admin, 1, prodWeb,
			from(accept, cpeers(
				npav1beta1.ClusterNetworkPolicyEgressPeer{},
				npav1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: sel(), Pods: namespaced(nil, nil)},
				npav1beta1.ClusterNetworkPolicyEgressPeer{Namespaces: bad},
				npav1beta1.ClusterNetworkPolicyEgressPeer{Pods: &npav1beta1.NamespacedPod{NamespaceSelector: *bad}},
			)),
			to(accept, cpeers(
				netCPeer("10.0.0.0/33"), netCPeer("10.0.0.1/8"), npav1beta1.ClusterNetworkPolicyEgressPeer{Nodes: sel()},
				npav1beta1.ClusterNetworkPolicyEgressPeer{DomainNames: []npav1beta1.DomainName{"example.com"}},
			), npav1beta1.ClusterNetworkPolicyProtocol{}, both,
				npav1beta1.ClusterNetworkPolicyProtocol{TCP: &npav1beta1.ClusterNetworkPolicyProtocolTCP{}},
				npav1beta1.ClusterNetworkPolicyProtocol{UDP: &npav1beta1.ClusterNetworkPolicyProtocolUDP{DestinationPort: &npav1beta1.Port{Number: 1, Range: &npav1beta1.PortRange{Start: 1, End: 2}}}},
				proto("SCTP/70000"), proto("TCP/0-80"), proto("TCP/80-80"),
			),
			npav1beta1.ClusterNetworkPolicyEgressRule{Name: "named", Action: "Drop", To: cpeers(nsCPeer())},
		),
	}
	m, err := Build(testNode, Input{ClusterPolicies: cnps, Pods: pods(), Namespaces: namespaces()})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		`cluster network policy badtier: tier "Developer"`,
		"cluster network policy nosubject: subject: neither",
		"cluster network policy twosubjects: subject: both",
		"cluster network policy badsubjectns: subject namespaces:",
		"cluster network policy badsubjectpods: subject pods podSelector:",
		"badrules: ingress rule 0: peer 0: no namespaces, pods, networks, nodes or domainNames",
		"ingress rule 0: peer 1: more than one of",
		"ingress rule 0: peer 2: namespaces:",
		"ingress rule 0: peer 3: pods namespaceSelector:",
		"egress rule 0: peer 0: networks:",
		"egress rule 0: peer 1: networks: 10.0.0.1/8 is not a network address (10.0.0.0/8)",
		"egress rule 0: peer 2: nodes peers: the nodes are not known",
		"egress rule 0: peer 3: domainNames peers are not supported",
		"egress rule 0: protocol 0: no tcp, udp, sctp or destinationNamedPort",
		"egress rule 0: protocol 1: more than one of tcp",
		"egress rule 0: protocol 2: TCP: no destinationPort",
		"egress rule 0: protocol 3: UDP: both number and range",
		"egress rule 0: protocol 4: SCTP: port 70000 out of range",
		"egress rule 0: protocol 5: TCP: range 0-80",
		"egress rule 0: protocol 6: TCP: range 80-80",
		`egress rule 1 (named): action "Drop"`,
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	want := []string{"prod/web admin out: badrules Deny {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3}"}
	if got := describeTiers(t, m); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestBuildTiersShareSetsAndAreDeterministic(t *testing.T) {
	policies := []*networkingv1.NetworkPolicy{policy("prod/np", networkingv1.NetworkPolicySpec{
		PodSelector: *sel("app", "web"),
		Ingress: []networkingv1.NetworkPolicyIngressRule{
			ingress(peers(nsPeer("env", "dev"))),
			ingress(peers(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(), PodSelector: sel("app", "api")})),
			ingress(peers(networkingv1.NetworkPolicyPeer{NamespaceSelector: sel("env", "prod"), PodSelector: sel()})),
			ingress(peers(blockPeer("10.0.2.0/24"))),
		},
	})}
	cnps := []*npav1beta1.ClusterNetworkPolicy{
		cnp("dev", admin, 1, subjectNS(), from(deny, cpeers(nsCPeer("env", "dev")))),
		cnp("api", admin, 1, subjectNS(), from(accept, cpeers(podsCPeer(nil, kv("app", "api"))))),
		cnp("prod", baseline, 1, subjectNS(), from(accept, cpeers(podsCPeer(kv("env", "prod"), nil))), to(deny, cpeers(netCPeer("10.0.2.0/24")))),
		cnp("prod2", baseline, 1, subjectNS(), from(deny, cpeers(nsCPeer("env", "prod")))),
	}
	first, err := Build(testNode, Input{Policies: policies, ClusterPolicies: cnps, Pods: pods(), Namespaces: namespaces()})
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, s := range first.AddrSets {
		keys = append(keys, s.Key)
	}
	slices.Sort(keys)
	want := []string{"ipBlock 10.0.2.0/24", "pods in namespaces {env=dev}", "pods in namespaces {env=prod}", "pods {app=api} in namespaces {}"}
	if !slices.Equal(keys, want) {
		t.Errorf("address sets %q, want %q, each shared by NetworkPolicy and cluster policy", keys, want)
	}

	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		cs := slices.Clone(cnps)
		r.Shuffle(len(cs), func(i, j int) { cs[i], cs[j] = cs[j], cs[i] })
		m, err := Build(testNode, Input{Policies: policies, ClusterPolicies: cs, Pods: pods(), Namespaces: namespaces()})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m, first) {
			t.Fatalf("shuffled input gives\n%+v\nwant\n%+v", m, first)
		}
	}
}

func TestActionString(t *testing.T) {
	for a, want := range map[Action]string{Accept: "Accept", Deny: "Deny", Pass: "Pass", 0: "action-0"} {
		if got := a.String(); got != want {
			t.Errorf("%d: %q, want %q", uint8(a), got, want)
		}
	}
}
