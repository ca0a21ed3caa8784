package policy

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The tests' node.
const testNode = "n1"

// namespaces are the tests' namespaces: prod and dev labelled, other not.
func namespaces() []*corev1.Namespace {
	return []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "prod", Labels: map[string]string{"env": "prod"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "dev", Labels: map[string]string{"env": "dev"}}},
		{ObjectMeta: metav1.ObjectMeta{Name: "other"}},
	}
}

// pod is a running pod ns/name on node with the IPs and the label app,
// with container ports given as "name/PROTO/number".
func pod(nsName, node, app string, ips []string, ports ...string) *corev1.Pod {
	ns, name, _ := strings.Cut(nsName, "/")
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": app}},
		Spec:       corev1.PodSpec{NodeName: node},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
	for _, ip := range ips {
		p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip})
	}
	if len(ips) > 0 {
		p.Status.PodIP = ips[0]
	}
	c := corev1.Container{Name: "c"}
	for _, s := range ports {
		f := strings.Split(s, "/")
		var n int32
		fmt.Sscan(f[2], &n)
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: f[0], Protocol: corev1.Protocol(f[1]), ContainerPort: n})
	}
	p.Spec.Containers = []corev1.Container{c}
	return p
}

// pods are the tests' pods: on n1 prod/web, prod/db, dev/cli (dual
// stack), a hostNetwork pod and one without an IP; on n2 prod/api,
// dev/web and a finished pod. The port "http" is 80 on prod/web, 8080 on
// prod/api, 8000 on dev/web.
func pods() []*corev1.Pod {
	host := pod("prod/host", testNode, "web", []string{"192.168.0.1"}, "http/TCP/80")
	host.Spec.HostNetwork = true
	done := pod("prod/done", "n2", "web", []string{"10.0.2.9"}, "http/TCP/80")
	done.Status.Phase = corev1.PodSucceeded
	devWeb := pod("dev/web", "n2", "web", []string{"::ffff:10.0.2.2"}, "http/TCP/8000")
	devWeb.Status.PodIPs = nil // an old pod: status.podIP alone
	return []*corev1.Pod{
		pod("prod/web", testNode, "web", []string{"10.0.1.1"}, "http/TCP/80", "metrics/TCP/9090"),
		pod("prod/db", testNode, "db", []string{"10.0.1.2"}, "pg/TCP/5432"),
		pod("dev/cli", testNode, "cli", []string{"fd00::3", "10.0.1.3"}),
		host,
		pod("prod/pending", testNode, "web", nil, "http/TCP/80"),
		pod("prod/api", "n2", "api", []string{"10.0.2.1"}, "http/TCP/8080", "dns/UDP/53"),
		devWeb,
		done,
	}
}

// policy is a NetworkPolicy ns/name with spec.
func policy(nsName string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	ns, name, _ := strings.Cut(nsName, "/")
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Spec: spec}
}

func sel(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

func podPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: sel(kv...)}
}

func nsPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: sel(kv...)}
}

func blockPeer(cidr string, except ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: cidr, Except: except}}
}

// port is a NetworkPolicyPort of proto ("" for the default), port (an
// int, a string or nil) and endPort (0 for none).
func port(proto string, p any, end int32) networkingv1.NetworkPolicyPort {
	var np networkingv1.NetworkPolicyPort
	if proto != "" {
		pr := corev1.Protocol(proto)
		np.Protocol = &pr
	}
	switch v := p.(type) {
	case int:
		is := intstr.FromInt32(int32(v))
		np.Port = &is
	case string:
		is := intstr.FromString(v)
		np.Port = &is
	}
	if end != 0 {
		np.EndPort = &end
	}
	return np
}

func ingress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyIngressRule {
	return networkingv1.NetworkPolicyIngressRule{From: peers, Ports: ports}
}

func egress(peers []networkingv1.NetworkPolicyPeer, ports ...networkingv1.NetworkPolicyPort) networkingv1.NetworkPolicyEgressRule {
	return networkingv1.NetworkPolicyEgressRule{To: peers, Ports: ports}
}

func peers(p ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyPeer { return p }

// describe renders the isolated directions of m's pods, one line each:
// "ns/name in|out [policies]: rule; rule", a rule being its peers ("*"
// any, {} none) and ports, or its endpoints, "deny" for no rule.
func describe(t *testing.T, m *Model) []string {
	t.Helper()
	addrs, eps := modelSets(t, m)
	var out []string
	for _, p := range m.Pods {
		for _, d := range []struct {
			name string
			dir  Direction
		}{{"in", p.Ingress}, {"out", p.Egress}} {
			if !d.dir.Isolated {
				continue
			}
			var rules []string
			for _, r := range d.dir.Rules {
				rules = append(rules, describeRule(t, r, addrs, eps))
			}
			if len(rules) == 0 {
				rules = []string{"deny"}
			}
			out = append(out, fmt.Sprintf("%s/%s %s %v: %s", p.Namespace, p.Name, d.name, d.dir.Policies, strings.Join(rules, "; ")))
		}
	}
	return out
}

// modelSets returns m's sets by name, checking their names.
func modelSets(t *testing.T, m *Model) (map[string]AddrSet, map[string]EndpointSet) {
	t.Helper()
	addrs := map[string]AddrSet{}
	for _, s := range m.AddrSets {
		if s.Name != setName(s.Key) {
			t.Errorf("set %s: name is not the hash of its key %q", s.Name, s.Key)
		}
		addrs[s.Name] = s
	}
	eps := map[string]EndpointSet{}
	for _, s := range m.EndpointSets {
		if s.Name != setName(s.Key) {
			t.Errorf("set %s: name is not the hash of its key %q", s.Name, s.Key)
		}
		eps[s.Name] = s
	}
	return addrs, eps
}

func describeRule(t *testing.T, r Rule, addrs map[string]AddrSet, eps map[string]EndpointSet) string {
	t.Helper()
	if r.Endpoints != "" {
		s, ok := eps[r.Endpoints]
		if !ok {
			t.Errorf("rule names endpoint set %s, not in the model", r.Endpoints)
		}
		var e []string
		for _, ep := range s.Endpoints {
			e = append(e, fmt.Sprintf("%s.%s/%d", ep.Addr, ep.Protocol, ep.Port))
		}
		return "to {" + strings.Join(e, ",") + "}"
	}
	peer := "*"
	if r.Peers != "" {
		s, ok := addrs[r.Peers]
		if !ok {
			t.Errorf("rule names address set %s, not in the model", r.Peers)
		}
		var a []string
		for _, rg := range s.Ranges {
			if rg.From == rg.To {
				a = append(a, rg.From.String())
			} else {
				a = append(a, rg.From.String()+"-"+rg.To.String())
			}
		}
		peer = "{" + strings.Join(a, ",") + "}"
	}
	for _, p := range r.Ports {
		peer += fmt.Sprintf(" %s/%d", p.Protocol, p.From)
		if p.To != p.From {
			peer += fmt.Sprintf("-%d", p.To)
		}
	}
	return peer
}

func TestBuild(t *testing.T) {
	denyAll := networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}}
	web := *sel("app", "web")
	for _, tc := range []struct {
		name     string
		policies []*networkingv1.NetworkPolicy
		want     []string
	}{{
		name: "no policy isolates nothing",
	}, {
		name:     "policyTypes default: ingress only, hostNetwork and IP-less pods not policed",
		policies: []*networkingv1.NetworkPolicy{policy("prod/deny", denyAll)},
		want:     []string{"prod/db in [prod/deny]: deny", "prod/web in [prod/deny]: deny"},
	}, {
		name: "policyTypes default: egress when there are egress rules",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Egress: []networkingv1.NetworkPolicyEgressRule{egress(peers(podPeer("app", "api")))},
		})},
		want: []string{"prod/web in [prod/p]: deny", "prod/web out [prod/p]: {10.0.2.1}"},
	}, {
		name: "egress isolation only when asked",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
		})},
		want: []string{"prod/web out [prod/p]: deny"},
	}, {
		name: "policyTypes Ingress ignores egress rules",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
			Egress: []networkingv1.NetworkPolicyEgressRule{egress(nil)},
		})},
		want: []string{"prod/web in [prod/p]: deny"},
	}, {
		name: "podSelector peer: the policy's namespace; hostNetwork and finished pods are not peers",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(podPeer("app", "web")))},
		})},
		want: []string{"prod/web in [prod/p]: {10.0.1.1}"},
	}, {
		name: "podSelector {} peer: every pod of the namespace",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(podPeer()))},
		})},
		want: []string{"prod/web in [prod/p]: {10.0.1.1-10.0.1.2,10.0.2.1}"},
	}, {
		name: "namespaceSelector peer: every pod of the namespaces",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer("env", "dev")))},
		})},
		want: []string{"prod/web in [prod/p]: {10.0.1.3,10.0.2.2,fd00::3}"},
	}, {
		name: "namespaceSelector {}: every namespace",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer()))},
		})},
		want: []string{"prod/web in [prod/p]: {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3}"},
	}, {
		name: "both selectors in one peer: the pods in the namespaces",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(networkingv1.NetworkPolicyPeer{
				NamespaceSelector: sel(), PodSelector: sel("app", "web"),
			}))},
		})},
		want: []string{"prod/web in [prod/p]: {10.0.1.1,10.0.2.2}"},
	}, {
		name: "selectors as separate peers: either",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer("env", "dev"), podPeer("app", "api")))},
		})},
		want: []string{"prod/web in [prod/p]: " + byName(setName("pods in namespaces {env=dev}"), "{10.0.1.3,10.0.2.2,fd00::3}",
			setName("pods {app=api} in namespace prod"), "{10.0.2.1}")},
	}, {
		name: "ipBlock with except, hostNetwork pods matched by address",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(peers(blockPeer("10.0.0.0/16", "10.0.2.128/25", "10.0.1.0/24"))),
				ingress(peers(blockPeer("192.168.0.1/32")), port("", 80, 0)),
			},
		})},
		want: []string{"prod/web in [prod/p]: " + byName(
			setName("ipBlock 10.0.0.0/16 except [10.0.1.0/24 10.0.2.128/25]"), "{10.0.0.0-10.0.0.255,10.0.2.0-10.0.2.127,10.0.3.0-10.0.255.255}",
			setName("ipBlock 192.168.0.1/32"), "{192.168.0.1} TCP/80")},
	}, {
		name: "ingress named port resolves on the local pod; unresolved, the rule allows nothing",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{}, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil, port("", "http", 0))},
		})},
		want: []string{"prod/db in [prod/p]: deny", "prod/web in [prod/p]: * TCP/80"},
	}, {
		name: "egress named port resolves on each peer pod",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(peers(nsPeer()), port("TCP", "http", 0), port("", 443, 0)),
				egress(peers(nsPeer()), port("TCP", "http", 0)),
			},
		})},
		want: []string{"prod/web out [prod/p]: {10.0.1.1-10.0.1.3,10.0.2.1-10.0.2.2,fd00::3} TCP/443; to {10.0.1.1.TCP/80,10.0.2.1.TCP/8080,10.0.2.2.TCP/8000}"},
	}, {
		name: "egress named port to any peer and to an ipBlock; the protocol must match",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeEgress},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				egress(nil, port("UDP", "dns", 0), port("TCP", "dns", 0)),
				egress(peers(blockPeer("10.0.2.0/31")), port("", "http", 0)),
			},
		})},
		want: []string{"prod/web out [prod/p]: " + byName(
			setName("all pods port dns/UDP"), "to {10.0.2.1.UDP/53}", setName("all pods port dns/TCP"), "to {}",
			setName("ipBlock 10.0.2.0/31 port http/TCP"), "to {10.0.2.1.TCP/8080}")},
	}, {
		name: "endPort, SCTP, UDP, every port of a protocol, merged",
		policies: []*networkingv1.NetworkPolicy{policy("prod/p", networkingv1.NetworkPolicySpec{
			PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(nil,
				port("TCP", 8000, 8100), port("TCP", 8050, 8200), port("TCP", 8201, 0), port("SCTP", 9999, 0), port("UDP", nil, 0))},
		})},
		want: []string{"prod/web in [prod/p]: * TCP/8000-8201 UDP/0-65535 SCTP/9999"},
	}, {
		name: "several policies add up",
		policies: []*networkingv1.NetworkPolicy{
			policy("prod/p2", networkingv1.NetworkPolicySpec{
				PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(podPeer("app", "api")), port("", 443, 0))},
			}),
			policy("prod/p1", networkingv1.NetworkPolicySpec{
				PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(podPeer("app", "api")), port("", 80, 0))},
			}),
			policy("prod/deny", denyAll),
			policy("dev/elsewhere", denyAll),
			policy("other/nolocalpod", denyAll),
		},
		want: []string{"dev/cli in [dev/elsewhere]: deny", "prod/db in [prod/deny]: deny", "prod/web in [prod/deny prod/p1 prod/p2]: {10.0.2.1} TCP/80 TCP/443"},
	}, {
		name: "a rule with no ports makes the peer's every port; allow-all wins",
		policies: []*networkingv1.NetworkPolicy{
			policy("prod/p1", networkingv1.NetworkPolicySpec{
				PodSelector: web, Ingress: []networkingv1.NetworkPolicyIngressRule{
					ingress(peers(podPeer("app", "api")), port("", 80, 0)), ingress(peers(podPeer("app", "api"))),
				},
			}),
			policy("prod/p2", networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{}, Ingress: []networkingv1.NetworkPolicyIngressRule{{}},
				Egress: []networkingv1.NetworkPolicyEgressRule{egress(peers(podPeer("app", "api"))), egress(nil, port("", 53, 0)), {}},
			}),
		},
		want: []string{
			"prod/db in [prod/p2]: *", "prod/db out [prod/p2]: *",
			"prod/web in [prod/p1 prod/p2]: *", "prod/web out [prod/p2]: *",
		},
	}, {
		name: "a local pod of another namespace is not selected",
		policies: []*networkingv1.NetworkPolicy{policy("dev/p", networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{}, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(podPeer()))},
		})},
		want: []string{"dev/cli in [dev/p]: {10.0.1.3,10.0.2.2,fd00::3}"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Build(testNode, Input{Policies: tc.policies, Pods: pods(), Namespaces: namespaces()})
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(t, m); !reflect.DeepEqual(got, tc.want) {
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

// byName joins described rules, given as pairs of set name and rule, in
// the order of their set names, a Direction's order within a kind.
func byName(pairs ...string) string {
	type rule struct{ name, text string }
	var rs []rule
	for i := 0; i+1 < len(pairs); i += 2 {
		rs = append(rs, rule{pairs[i], pairs[i+1]})
	}
	slices.SortFunc(rs, func(a, b rule) int { return strings.Compare(a.name, b.name) })
	var out []string
	for _, r := range rs {
		out = append(out, r.text)
	}
	return strings.Join(out, "; ")
}

func TestBuildInvalid(t *testing.T) {
	bad := []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Bogus"}}
	policies := []*networkingv1.NetworkPolicy{
		policy("prod/badselector", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{MatchExpressions: bad}}),
		policy("prod/badpeer", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "web"),
			Ingress: []networkingv1.NetworkPolicyIngressRule{
				ingress(peers(blockPeer("10.0.0.0/33"), podPeer("app", "api"), networkingv1.NetworkPolicyPeer{PodSelector: &metav1.LabelSelector{MatchExpressions: bad}}, networkingv1.NetworkPolicyPeer{},
					networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{MatchExpressions: bad}}, blockPeer("10.0.0.0/8", "10.1.0.0/33"))),
				ingress(nil, port("ICMP", 1, 0), port("", 70000, 0), port("", 90, 80)),
			},
		}),
	}
	m, err := Build(testNode, Input{Policies: policies, Pods: pods(), Namespaces: namespaces()})
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		"policy prod/badselector: podSelector", "policy prod/badpeer: ingress rule 0: peer 0: ipBlock cidr",
		"ingress rule 0: peer 2: podSelector", "ingress rule 0: peer 3: no ipBlock",
		"ingress rule 0: peer 4: namespaceSelector", "ingress rule 0: peer 5: ipBlock except",
		`ingress rule 1: port 0: protocol "ICMP"`, "ingress rule 1: port 1: 70000 out of range", "ingress rule 1: port 2: endPort 80 out of range",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	want := []string{"prod/web in [prod/badpeer]: {10.0.2.1}"}
	if got := describe(t, m); !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}

func TestBuildSharesSetsAndIsDeterministic(t *testing.T) {
	policies := []*networkingv1.NetworkPolicy{
		policy("prod/a", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "web"), Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer("env", "dev")))},
		}),
		policy("prod/b", networkingv1.NetworkPolicySpec{
			PodSelector: *sel("app", "db"), Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer("env", "dev")), port("", 5432, 0))},
		}),
		policy("dev/c", networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{}, Ingress: []networkingv1.NetworkPolicyIngressRule{ingress(peers(nsPeer("env", "dev")))},
		}),
	}
	first, err := Build(testNode, Input{Policies: policies, Pods: pods(), Namespaces: namespaces()})
	if err != nil {
		t.Fatal(err)
	}
	if len(first.AddrSets) != 1 || first.AddrSets[0].Key != "pods in namespaces {env=dev}" {
		t.Fatalf("address sets %+v, want the one of namespace env=dev shared", first.AddrSets)
	}
	name := first.AddrSets[0].Name
	for _, p := range first.Pods {
		if p.Ingress.Rules[0].Peers != name {
			t.Errorf("%s/%s: rules %+v, want set %s", p.Namespace, p.Name, p.Ingress.Rules, name)
		}
	}
	if first.Pods[0].IPs[0] != netip.MustParseAddr("10.0.1.3") {
		t.Errorf("dev/cli addresses %v, want IPv4 first", first.Pods[0].IPs)
	}

	r := rand.New(rand.NewPCG(1, 2))
	for range 20 {
		ps, pp, ns := slices.Clone(policies), pods(), namespaces()
		r.Shuffle(len(ps), func(i, j int) { ps[i], ps[j] = ps[j], ps[i] })
		r.Shuffle(len(pp), func(i, j int) { pp[i], pp[j] = pp[j], pp[i] })
		r.Shuffle(len(ns), func(i, j int) { ns[i], ns[j] = ns[j], ns[i] })
		m, err := Build(testNode, Input{Policies: ps, Pods: pp, Namespaces: ns})
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(m, first) {
			t.Fatalf("shuffled input gives\n%+v\nwant\n%+v", m, first)
		}
	}

	// A pod coming changes the set's elements, not its name.
	more := append(pods(), pod("dev/new", "n2", "x", []string{"10.0.2.3"}))
	m, err := Build(testNode, Input{Policies: policies, Pods: more, Namespaces: namespaces()})
	if err != nil {
		t.Fatal(err)
	}
	if m.AddrSets[0].Name != name || !reflect.DeepEqual(m.Pods, first.Pods) {
		t.Errorf("a new peer changed the rules: %+v", m)
	}
	if got := len(m.AddrSets[0].Ranges); got != 3 {
		t.Errorf("set ranges %v, want 10.0.1.3, 10.0.2.2-10.0.2.3, fd00::3", m.AddrSets[0].Ranges)
	}
}

func TestProtocolString(t *testing.T) {
	for p, want := range map[Protocol]string{TCP: "TCP", UDP: "UDP", SCTP: "SCTP", 1: "proto-1"} {
		if got := p.String(); got != want {
			t.Errorf("%d: %q, want %q", uint8(p), got, want)
		}
	}
}

func TestRanges(t *testing.T) {
	a := netip.MustParseAddr
	for _, tc := range []struct {
		cidr   string
		except []string
		want   []Range
	}{
		{"10.0.0.0/30", nil, []Range{{a("10.0.0.0"), a("10.0.0.3")}}},
		{"10.0.0.0/30", []string{"10.0.0.0/31"}, []Range{{a("10.0.0.2"), a("10.0.0.3")}}},
		{"10.0.0.0/30", []string{"10.0.0.1/32", "fd00::/8"}, []Range{{a("10.0.0.0"), a("10.0.0.0")}, {a("10.0.0.2"), a("10.0.0.3")}}},
		{"10.0.0.0/30", []string{"0.0.0.0/0"}, nil},
		{"0.0.0.0/0", nil, []Range{{a("0.0.0.0"), a("255.255.255.255")}}},
		{"fd00::/120", []string{"fd00::80/121"}, []Range{{a("fd00::"), a("fd00::7f")}}},
	} {
		var except []netip.Prefix
		for _, e := range tc.except {
			except = append(except, netip.MustParsePrefix(e))
		}
		if got := subtract(prefixRange(netip.MustParsePrefix(tc.cidr)), except); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s except %v: %v, want %v", tc.cidr, tc.except, got, tc.want)
		}
	}

	merged := mergeRanges([]Range{
		{a("fd00::1"), a("fd00::1")}, {a("255.255.255.255"), a("255.255.255.255")}, {a("10.0.0.3"), a("10.0.0.9")},
		{a("10.0.0.1"), a("10.0.0.2")}, {a("10.0.0.5"), a("10.0.0.6")}, {a("::"), a("::")},
	})
	want := []Range{{a("10.0.0.1"), a("10.0.0.9")}, {a("255.255.255.255"), a("255.255.255.255")}, {a("::"), a("::")}, {a("fd00::1"), a("fd00::1")}}
	if !reflect.DeepEqual(merged, want) {
		t.Errorf("merged %v, want %v", merged, want)
	}
	if !containsAddr(want, a("10.0.0.4")) || containsAddr(want, a("10.0.0.10")) || containsAddr(want, a("::1")) {
		t.Error("containsAddr is wrong")
	}

	ports := mergePorts([]PortRange{{UDP, 53, 53}, {TCP, 80, 80}, {TCP, 81, 90}, {TCP, 65535, 65535}, {TCP, 0, 65535}, {SCTP, 1, 1}})
	if want := []PortRange{{TCP, 0, 65535}, {UDP, 53, 53}, {SCTP, 1, 1}}; !reflect.DeepEqual(ports, want) {
		t.Errorf("merged ports %v, want %v", ports, want)
	}
}
