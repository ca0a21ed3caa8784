package kube

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	npclient "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/internal/netns"
)

// The NetworkPolicy checks: a reachability matrix over pods in three
// namespaces on the three nodes, each serving TCP on two ports and UDP on
// one, probed from every pod to every other pod and port, and compared
// with what the case's own truth table expects — written here from the
// API's documented semantics, never computed by podnet's policy model, so
// that a wrong model shows.

// The matrix's namespaces: short names x, y, z; x and y are team front,
// z team back.
var npNamespaces = []struct {
	short string
	team  string
}{{"x", "front"}, {"y", "front"}, {"z", "back"}}

// Labels of the matrix's namespaces and pods.
const (
	npNSLabel   = "podnet.dev/netpol" // a namespace's short name
	npTeamLabel = "team"
	npPodLabel  = "pod" // a pod's name in its namespace: a, b, c
)

// npNamespace is the API name of the matrix's namespace short.
func npNamespace(short string) string { return "netpol-" + short }

// The matrix's pods in each namespace, and the ports they serve.
var npPodNames = []string{"a", "b", "c"}

// npPort is a port of the matrix's servers.
type npPort struct {
	proto string // tcp or udp
	num   int
}

func (p npPort) String() string { return fmt.Sprintf("%s/%d", p.proto, p.num) }

var (
	tcp80   = npPort{"tcp", 80}
	tcp81   = npPort{"tcp", 81}
	udp53   = npPort{"udp", 53}
	npPorts = []npPort{tcp80, tcp81, udp53}
)

// servePort is the container port name that differs between pods: a and c
// call 80 "serve", b calls 81 so.
const servePort = "serve"

// holdPort is where a pod keeps long-lived TCP connections (a line echo),
// each closed by the server after holdIdle without a line.
const (
	holdPort = 9000
	holdIdle = 5 * time.Minute
)

// Waits of the policy checks.
const (
	// npProbeTimeout bounds one probe: a denied one (dropped) takes all of it.
	npProbeTimeout = time.Second
	// npProbers is how many probes run at once.
	npProbers = 48
	// convergeWait is how long a policy change may take to show in the
	// matrix.
	convergeWait = 30 * time.Second
)

// npPod is a pod of the matrix.
type npPod struct {
	short string // namespace short name
	name  string // a, b, c
	node  string
	ip    net.IP // IPv4
	ip6   net.IP
	ns    *netns.NS
	serve int // the port its "serve" name stands for

	mu sync.Mutex
	// seen counts the source addresses its TCP servers accepted.
	seen map[string]int
}

func (p *npPod) String() string { return p.short + "/" + p.name }

// namespace is the pod's API namespace.
func (p *npPod) namespace() string { return npNamespace(p.short) }

// podName is the pod's API name: unique across the namespaces, as runPods
// wants (its label npPodLabel is its name in the namespace).
func (p *npPod) podName() string { return p.short + "-" + p.name }

// accepted records a TCP connection from source.
func (p *npPod) accepted(source string) {
	p.mu.Lock()
	p.seen[source]++
	p.mu.Unlock()
}

// seenFrom is how many TCP connections came from source.
func (p *npPod) seenFrom(source string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.seen[source]
}

// reach is a case's truth table: whether from reaches to's port.
type reach func(from, to *npPod, port npPort) bool

// allReach is the truth without policy.
func allReach(*npPod, *npPod, npPort) bool { return true }

// npEnv is what the policy checks share.
type npEnv struct {
	c    *cluster
	cnp  npclient.Interface
	pods []*npPod // x/a, x/b, x/c, y/a, …
	// clusterCIDR is the cluster's pod network (podnet's cluster-cidr).
	clusterCIDR string
}

// pod is the matrix's pod "x/a".
func (e *npEnv) pod(name string) *npPod {
	for _, p := range e.pods {
		if p.String() == name {
			return p
		}
	}
	panic("no matrix pod " + name)
}

// testNetworkPolicy: NetworkPolicy and ClusterNetworkPolicy, by real
// traffic: each case applies its policies, waits until the matrix (over
// IPv4; the IPv6 case's over IPv6 too) is the case's truth table, then
// removes them and waits until every pod reaches every pod again.
func testNetworkPolicy(t *testing.T, ctx context.Context, c *cluster) {
	e := newNPEnv(t, ctx, c)
	noPolicy := func(t *testing.T) {
		e.expect(t, ctx, "no policy", allReach)
		if err := e.converge(ctx, allReach, overIPv6); err != nil {
			t.Errorf("no policy, over IPv6: %v", err)
		}
	}
	if !t.Run("NoPolicy", noPolicy) {
		t.Fatal("the matrix is not all-reachable without policy: the probes themselves fail")
	}
	for _, k := range npCases(e) {
		t.Run(k.name, func(t *testing.T) {
			if k.run != nil {
				k.run(t, ctx, e)
				return
			}
			e.apply(t, ctx, k.objects...)
			e.expect(t, ctx, k.name, k.want)
		})
	}
	t.Run("SCTP", func(t *testing.T) {
		if !haveSCTP() {
			t.Skip("the kernel has no SCTP (CONFIG_IP_SCTP unset: no /proc/net/sctp); the tests load no module")
		}
		testNPSCTP(t, ctx, e)
	})
}

// newNPEnv makes the namespaces and pods of the matrix (pod i of
// namespace j on node (i+j) mod 3: each namespace on every node, each
// pair of namespaces same-node and cross-node) and serves in the pods.
func newNPEnv(t *testing.T, ctx context.Context, c *cluster) *npEnv {
	t.Helper()
	cnp, err := npclient.NewForConfig(c.cp.RESTConfig())
	if err != nil {
		t.Fatal(err)
	}
	e := &npEnv{c: c, cnp: cnp}
	if e.clusterCIDR, err = clusterCIDR(ctx, c); err != nil {
		t.Fatal(err)
	}
	var specs []podSpec
	for j, ns := range npNamespaces {
		name := npNamespace(ns.short)
		_, err := c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: name, Labels: map[string]string{npNSLabel: ns.short, npTeamLabel: ns.team},
		}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("namespace %s: %v", name, err)
		}
		t.Cleanup(func() {
			// The pods are gone by now (runPods' cleanup ran first).
			if err := c.client.CoreV1().Namespaces().Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
				t.Errorf("delete namespace %s: %v", name, err)
			}
		})
		for i, pn := range npPodNames {
			p := &npPod{short: ns.short, name: pn, node: c.names[(i+j)%len(c.names)], serve: 80, seen: map[string]int{}}
			if pn == "b" {
				p.serve = 81
			}
			e.pods = append(e.pods, p)
			specs = append(specs, podSpec{
				name: p.podName(), namespace: name, node: p.node, step: "network-policy",
				labels: map[string]string{npPodLabel: pn},
				ports: []corev1.ContainerPort{
					{Name: servePort, ContainerPort: int32(p.serve), Protocol: corev1.ProtocolTCP},
					{Name: "dns", ContainerPort: 53, Protocol: corev1.ProtocolUDP},
				},
			})
		}
	}
	pods := c.runPods(t, ctx, specs...)
	for _, p := range e.pods {
		kp := pods[p.podName()]
		if kp == nil {
			t.Fatalf("pod %s not running", p)
		}
		p.ip, p.ip6 = podIP(kp), podIP6(kp)
		if p.ip6 == nil {
			t.Fatalf("pod %s has no IPv6 address (pod IPs %v)", p, kp.Status.PodIPs)
		}
		p.ns = c.podNS(t, ctx, kp)
		serveTCP(t, p.ns, p.String(), tcp80.num, p.accepted)
		serveTCP(t, p.ns, p.String(), tcp81.num, p.accepted)
		serveUDP(t, p.ns, p.String(), udp53.num)
	}
	return e
}

// clusterCIDR is podnet's cluster-cidr, from its ConfigMap.
func clusterCIDR(ctx context.Context, c *cluster) (string, error) {
	cm, err := c.client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("podnet's ConfigMap: %w", err)
	}
	var cfg struct {
		ClusterCIDR string `json:"cluster-cidr"`
	}
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		return "", fmt.Errorf("podnet's config.yaml: %w", err)
	}
	if _, _, err := net.ParseCIDR(cfg.ClusterCIDR); err != nil {
		return "", fmt.Errorf("podnet's cluster-cidr: %w", err)
	}
	return cfg.ClusterCIDR, nil
}

// npFamily picks the address of a matrix pod that probes go to: the
// matrix is probed over one family at a time.
type npFamily func(*npPod) net.IP

var (
	overIPv4 npFamily = func(p *npPod) net.IP { return p.ip }
	overIPv6 npFamily = func(p *npPod) net.IP { return p.ip6 }
)

// npCell is one probe of the matrix.
type npCell struct {
	from, to string
	port     npPort
}

// npMatrix says, for each probe, whether it got through.
type npMatrix map[npCell]bool

// want is the matrix truth expects.
func (e *npEnv) want(truth reach) npMatrix {
	m := npMatrix{}
	for _, from := range e.pods {
		for _, to := range e.pods {
			if from == to {
				continue // a pod's traffic to itself never leaves it
			}
			for _, port := range npPorts {
				m[npCell{from.String(), to.String(), port}] = truth(from, to, port)
			}
		}
	}
	return m
}

// observe probes every cell over family, npProbers at a time.
func (e *npEnv) observe(ctx context.Context, family npFamily) npMatrix {
	type job struct {
		from, to *npPod
		port     npPort
	}
	var jobs []job
	for _, from := range e.pods {
		for _, to := range e.pods {
			if from != to {
				for _, port := range npPorts {
					jobs = append(jobs, job{from, to, port})
				}
			}
		}
	}
	m := npMatrix{}
	var mu sync.Mutex
	work := make(chan job)
	var wg sync.WaitGroup
	for range npProbers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				ok := probeAt(ctx, j.from.ns, j.to, family(j.to), j.port) == nil
				mu.Lock()
				m[npCell{j.from.String(), j.to.String(), j.port}] = ok
				mu.Unlock()
			}
		}()
	}
	for _, j := range jobs {
		work <- j
	}
	close(work)
	wg.Wait()
	return m
}

// probe makes one exchange from ns with the matrix pod to on port, at
// its IPv4 address: the answer must come from that pod.
func probe(ctx context.Context, ns *netns.NS, to *npPod, port npPort) error {
	return probeAt(ctx, ns, to, to.ip, port)
}

// probeAt is probe at the pod's address ip.
func probeAt(ctx context.Context, ns *netns.NS, to *npPod, ip net.IP, port npPort) error {
	ctx, cancel := context.WithTimeout(ctx, npProbeTimeout)
	defer cancel()
	r, err := ask(ctx, ns, port.proto, net.JoinHostPort(ip.String(), fmt.Sprint(port.num)))
	if err == nil && r.backend != to.String() {
		err = fmt.Errorf("answered by %s, not %s", r, to)
	}
	return err
}

// expect waits until the observed matrix (over IPv4) is truth's, for
// up to convergeWait; if it never is, the test fails showing both.
func (e *npEnv) expect(t *testing.T, ctx context.Context, what string, truth reach) {
	t.Helper()
	if err := e.converge(ctx, truth, overIPv4); err != nil {
		t.Errorf("%s: %v", what, err)
	}
}

// converge waits until the matrix observed over family is truth's; the
// error shows the matrices.
func (e *npEnv) converge(ctx context.Context, truth reach, family npFamily) error {
	want := e.want(truth)
	var got npMatrix
	start := time.Now()
	rounds := 0
	// Each round runs under ctx, not poll's deadline: a round cut short
	// would show probes failing for want of time.
	err := poll(ctx, convergeWait, "the matrix", func(context.Context) error {
		rounds++
		got = e.observe(ctx, family)
		if n := len(e.diff(want, got)); n > 0 {
			return fmt.Errorf("%d cells differ", n)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("%w (after %d rounds in %s)\nwant:\n%s\ngot:\n%s\ndiffering (first 20):\n  %s", err, rounds,
			time.Since(start).Round(time.Millisecond), e.format(want), e.format(got), strings.Join(first(e.diff(want, got), 20), "\n  "))
	}
	return nil
}

// diff lists the cells where got is not want.
func (e *npEnv) diff(want, got npMatrix) []string {
	var d []string
	for _, from := range e.pods {
		for _, to := range e.pods {
			for _, port := range npPorts {
				k := npCell{from.String(), to.String(), port}
				w, ok := want[k]
				if ok && got[k] != w {
					d = append(d, fmt.Sprintf("%s → %s %s: want %s, got %s", from, to, port, reachWord(w), reachWord(got[k])))
				}
			}
		}
	}
	return d
}

func reachWord(ok bool) string {
	if ok {
		return "reached"
	}
	return "denied"
}

// format prints a matrix compactly: a row per source, a column per
// destination, each cell one character per port (tcp/80 tcp/81 udp/53):
// + reached, . denied.
func (e *npEnv) format(m npMatrix) string {
	var b strings.Builder
	b.WriteString("  from\\to")
	for _, to := range e.pods {
		fmt.Fprintf(&b, " %-3s", to)
	}
	b.WriteString("   (per cell: tcp/80 tcp/81 udp/53; + reached, . denied)\n")
	for _, from := range e.pods {
		fmt.Fprintf(&b, "  %-7s", from)
		for _, to := range e.pods {
			b.WriteByte(' ')
			for _, port := range npPorts {
				switch ok, probed := m[npCell{from.String(), to.String(), port}]; {
				case !probed:
					b.WriteByte(' ')
				case ok:
					b.WriteByte('+')
				default:
					b.WriteByte('.')
				}
			}
		}
		b.WriteByte('\n')
	}
	return b.String()
}

// apply creates NetworkPolicies and ClusterNetworkPolicies; when t ends
// they are deleted and every pod must reach every pod again.
func (e *npEnv) apply(t *testing.T, ctx context.Context, objects ...any) {
	t.Helper()
	var netpols []*networkingv1.NetworkPolicy
	var cnps []string
	t.Cleanup(func() {
		ctx := context.Background()
		for _, np := range netpols {
			if err := e.c.client.NetworkingV1().NetworkPolicies(np.Namespace).Delete(ctx, np.Name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete NetworkPolicy %s/%s: %v", np.Namespace, np.Name, err)
			}
		}
		for _, name := range cnps {
			if err := e.cnp.PolicyV1beta1().ClusterNetworkPolicies().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
				t.Errorf("delete ClusterNetworkPolicy %s: %v", name, err)
			}
		}
		if err := e.converge(ctx, allReach, overIPv4); err != nil {
			t.Errorf("policies removed: every pod does not reach every pod again: %v", err)
		}
	})
	for _, o := range objects {
		switch o := o.(type) {
		case *networkingv1.NetworkPolicy:
			if _, err := e.c.client.NetworkingV1().NetworkPolicies(o.Namespace).Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create NetworkPolicy %s/%s: %v", o.Namespace, o.Name, err)
			}
			netpols = append(netpols, o)
		case *npav1beta1.ClusterNetworkPolicy:
			if _, err := e.cnp.PolicyV1beta1().ClusterNetworkPolicies().Create(ctx, o, metav1.CreateOptions{}); err != nil {
				t.Fatalf("create ClusterNetworkPolicy %s: %v", o.Name, err)
			}
			cnps = append(cnps, o.Name)
		default:
			t.Fatalf("apply: %T is no policy", o)
		}
	}
}

// label sets (value non-empty) or removes (empty) a label of a pod.
func (e *npEnv) label(ctx context.Context, p *npPod, key, value string) error {
	var v any = value
	if value == "" {
		v = nil // a merge patch's null removes
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{key: v}}})
	if err != nil {
		return err
	}
	_, err = e.c.client.CoreV1().Pods(p.namespace()).Patch(ctx, p.podName(), types.MergePatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("label %s %s=%q: %w", p, key, value, err)
	}
	return nil
}

// The policies' building blocks.

func matchLabels(kv ...string) *metav1.LabelSelector {
	s := &metav1.LabelSelector{MatchLabels: map[string]string{}}
	for i := 0; i+1 < len(kv); i += 2 {
		s.MatchLabels[kv[i]] = kv[i+1]
	}
	return s
}

// netpol is a NetworkPolicy in the matrix's namespace short.
func netpol(short, name string, spec networkingv1.NetworkPolicySpec) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: npNamespace(short)}, Spec: spec}
}

var (
	ingressOnly = []networkingv1.PolicyType{networkingv1.PolicyTypeIngress}
	egressOnly  = []networkingv1.PolicyType{networkingv1.PolicyTypeEgress}
)

func podPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{PodSelector: matchLabels(kv...)}
}

func nsPeer(kv ...string) networkingv1.NetworkPolicyPeer {
	return networkingv1.NetworkPolicyPeer{NamespaceSelector: matchLabels(kv...)}
}

func from(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyIngressRule {
	return []networkingv1.NetworkPolicyIngressRule{{From: peers}}
}

func to(peers ...networkingv1.NetworkPolicyPeer) []networkingv1.NetworkPolicyEgressRule {
	return []networkingv1.NetworkPolicyEgressRule{{To: peers}}
}

func npPortOf(proto corev1.Protocol, port any, end int32) networkingv1.NetworkPolicyPort {
	var p networkingv1.NetworkPolicyPort
	p.Protocol = &proto
	switch v := port.(type) {
	case int:
		n := intstr.FromInt32(int32(v))
		p.Port = &n
	case string:
		n := intstr.FromString(v)
		p.Port = &n
	}
	if end != 0 {
		p.EndPort = &end
	}
	return p
}

// cnp is a ClusterNetworkPolicy of tier at priority.
func cnp(name string, tier npav1beta1.Tier, priority int32, subject npav1beta1.ClusterNetworkPolicySubject, ingress ...npav1beta1.ClusterNetworkPolicyIngressRule) *npav1beta1.ClusterNetworkPolicy {
	return &npav1beta1.ClusterNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec:       npav1beta1.ClusterNetworkPolicySpec{Tier: tier, Priority: priority, Subject: subject, Ingress: ingress},
	}
}

// podsOf selects the pods labelled pod=name in the matrix's namespace
// short, as a ClusterNetworkPolicy subject.
func podsOf(short, name string) npav1beta1.ClusterNetworkPolicySubject {
	return npav1beta1.ClusterNetworkPolicySubject{Pods: &npav1beta1.NamespacedPod{
		NamespaceSelector: *matchLabels(npNSLabel, short), PodSelector: *matchLabels(npPodLabel, name),
	}}
}

// cnpFrom is a ClusterNetworkPolicy ingress rule from the namespaces
// matching the labels.
func cnpFrom(name string, action npav1beta1.ClusterNetworkPolicyRuleAction, nsLabels ...string) npav1beta1.ClusterNetworkPolicyIngressRule {
	return npav1beta1.ClusterNetworkPolicyIngressRule{Name: name, Action: action,
		From: []npav1beta1.ClusterNetworkPolicyIngressPeer{{Namespaces: matchLabels(nsLabels...)}}}
}

// npCase is a check of the matrix: the policies made, the truth then; or
// its own run.
type npCase struct {
	name    string
	objects []any
	want    reach
	run     func(t *testing.T, ctx context.Context, e *npEnv)
}

// is tells whether p is the matrix pod "x/a".
func is(p *npPod, name string) bool { return p.String() == name }

// npCases are the checks, each with its truth table from the API's
// documentation (networking.k8s.io/v1 NetworkPolicy, policy.networking.k8s.io/v1beta1
// ClusterNetworkPolicy).
func npCases(e *npEnv) []npCase {
	all := &metav1.LabelSelector{}
	return []npCase{
		{name: "DefaultDenyIngress",
			objects: []any{netpol("x", "deny-ingress", networkingv1.NetworkPolicySpec{PodSelector: *all, PolicyTypes: ingressOnly})},
			want:    func(_, to *npPod, _ npPort) bool { return to.short != "x" }},
		{name: "DefaultDenyEgress",
			objects: []any{netpol("x", "deny-egress", networkingv1.NetworkPolicySpec{PodSelector: *all, PolicyTypes: egressOnly})},
			want:    func(from, _ *npPod, _ npPort) bool { return from.short != "x" }},
		{name: "FromPodSelector",
			objects: []any{netpol("x", "from-b", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: from(podPeer(npPodLabel, "b"))})},
			// podSelector alone: pods of the policy's own namespace only.
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || is(from, "x/b") }},
		{name: "FromNamespaceSelector",
			objects: []any{netpol("x", "from-front", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: from(nsPeer(npTeamLabel, "front"))})},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short != "z" }},
		{name: "PodAndNamespaceSelectorTogether",
			objects: []any{netpol("x", "from-front-b", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: matchLabels(npTeamLabel, "front"), PodSelector: matchLabels(npPodLabel, "b")})})},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short != "z" && from.name == "b" }},
		{name: "PodAndNamespaceSelectorAsTwoPeers",
			objects: []any{netpol("x", "from-back-or-c", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: from(nsPeer(npTeamLabel, "back"), podPeer(npPodLabel, "c"))})},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short == "z" || is(from, "x/c") }},
		{name: "AllNamespacesSelector",
			objects: []any{netpol("x", "from-any-c", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: all, PodSelector: matchLabels(npPodLabel, "c")})})},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.name == "c" }},
		{name: "IPBlockExcept",
			objects: []any{
				netpol("x", "from-cluster-but-yb", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
					Ingress: from(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: e.clusterCIDR, Except: []string{e.pod("y/b").ip.String() + "/32"}}})}),
				netpol("x", "to-cluster-but-zc", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "b"), PolicyTypes: egressOnly,
					Egress: to(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: e.clusterCIDR, Except: []string{e.pod("z/c").ip.String() + "/32"}}})}),
			},
			want: func(from, to *npPod, _ npPort) bool {
				return !(is(to, "x/a") && is(from, "y/b")) && !(is(from, "x/b") && is(to, "z/c"))
			}},
		{name: "PortNumber",
			objects: []any{netpol("x", "tcp-81", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolTCP, 81, 0)}}}})},
			want: func(_, to *npPod, port npPort) bool { return !is(to, "x/a") || port == tcp81 }},
		{name: "NamedPortIngress",
			objects: []any{netpol("x", "serve-in", networkingv1.NetworkPolicySpec{PodSelector: *all,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolTCP, servePort, 0)}}}})},
			// "serve" is each destination pod's own: 80 on x/a and x/c, 81 on x/b.
			want: func(_, to *npPod, port npPort) bool { return to.short != "x" || port == npPort{"tcp", to.serve} }},
		{name: "NamedPortEgress",
			objects: []any{netpol("x", "serve-out", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), PolicyTypes: egressOnly,
				Egress: []networkingv1.NetworkPolicyEgressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolTCP, servePort, 0)}}}})},
			// Resolved on each peer: 81 towards the b pods, 80 towards the others.
			want: func(from, to *npPod, port npPort) bool { return !is(from, "x/a") || port == npPort{"tcp", to.serve} }},
		{name: "EndPortRange",
			objects: []any{netpol("x", "tcp-81-1000", networkingv1.NetworkPolicySpec{PodSelector: *all,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolTCP, 81, 1000)}}}})},
			want: func(_, to *npPod, port npPort) bool { return to.short != "x" || port == tcp81 }},
		{name: "UDP",
			objects: []any{netpol("y", "udp-53", networkingv1.NetworkPolicySpec{PodSelector: *all,
				Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolUDP, 53, 0)}}}})},
			want: func(_, to *npPod, port npPort) bool { return to.short != "y" || port == udp53 }},
		{name: "PoliciesAddUp",
			objects: []any{
				netpol("x", "from-b", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: from(podPeer(npPodLabel, "b"))}),
				netpol("x", "from-back", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: from(nsPeer(npTeamLabel, "back"))}),
				netpol("x", "tcp-81", networkingv1.NetworkPolicySpec{PodSelector: *all,
					Ingress: []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolTCP, 81, 0)}}}}),
			},
			want: func(from, to *npPod, port npPort) bool {
				if to.short != "x" {
					return true
				}
				return port == tcp81 || is(to, "x/a") && (is(from, "x/b") || from.short == "z")
			}},
		{name: "EgressOnlyKeepsIngressOpen",
			objects: []any{netpol("x", "to-front", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), PolicyTypes: egressOnly,
				Egress: to(nsPeer(npTeamLabel, "front"))})},
			want: func(from, to *npPod, _ npPort) bool { return !is(from, "x/a") || to.short != "z" }},
		{name: "LabelChanges", run: testNPLabelChanges},
		{name: "EstablishedConnections", run: testNPEstablished},
		{name: "FromNodes", run: testNPFromNodes},
		{name: "NewPodFirstPacket", run: testNPNewPod},
		{name: "ClusterIPService", run: testNPService},
		{name: "IPv6", run: testNPIPv6},
		{name: "AdminDenyOverridesAllow",
			objects: []any{
				netpol("x", "allow-all", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: []networkingv1.NetworkPolicyIngressRule{{}}}),
				cnp("deny-back-to-xa", npav1beta1.AdminTier, 10, podsOf("x", "a"), cnpFrom("deny-back", npav1beta1.ClusterNetworkPolicyRuleActionDeny, npTeamLabel, "back")),
			},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short != "z" }},
		{name: "AdminPassToNetworkPolicy",
			objects: []any{
				netpol("x", "from-y", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: from(nsPeer(npNSLabel, "y"))}),
				cnp("pass-to-xa", npav1beta1.AdminTier, 10, podsOf("x", "a"), cnpFrom("pass-all", npav1beta1.ClusterNetworkPolicyRuleActionPass)),
				// Below the Pass: never reached for x/a.
				cnp("deny-to-xa", npav1beta1.AdminTier, 20, podsOf("x", "a"), cnpFrom("deny-all", npav1beta1.ClusterNetworkPolicyRuleActionDeny)),
			},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short == "y" }},
		{name: "AdminAcceptOverridesDeny",
			objects: []any{
				netpol("x", "deny-ingress", networkingv1.NetworkPolicySpec{PodSelector: *all, PolicyTypes: ingressOnly}),
				cnp("accept-back-to-x", npav1beta1.AdminTier, 10, npav1beta1.ClusterNetworkPolicySubject{Namespaces: matchLabels(npNSLabel, "x")},
					cnpFrom("accept-back", npav1beta1.ClusterNetworkPolicyRuleActionAccept, npTeamLabel, "back")),
			},
			want: func(from, to *npPod, _ npPort) bool { return to.short != "x" || from.short == "z" }},
		{name: "BaselineDenyOnlyUnisolated",
			objects: []any{
				netpol("x", "a-from-b", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: from(podPeer(npPodLabel, "b"))}),
				cnp("baseline-deny-x", npav1beta1.BaselineTier, 10, npav1beta1.ClusterNetworkPolicySubject{Namespaces: matchLabels(npNSLabel, "x")},
					cnpFrom("deny-all", npav1beta1.ClusterNetworkPolicyRuleActionDeny)),
			},
			// x/a is isolated by NetworkPolicy, which decides for it; x/b and
			// x/c are not: the baseline's Deny does.
			want: func(from, to *npPod, _ npPort) bool { return to.short != "x" || is(to, "x/a") && is(from, "x/b") }},
		{name: "AdminPriority",
			objects: []any{
				// Named so that name order and priority order disagree.
				cnp("a-deny-to-xa", npav1beta1.AdminTier, 20, podsOf("x", "a"), cnpFrom("deny-all", npav1beta1.ClusterNetworkPolicyRuleActionDeny)),
				cnp("b-accept-back-to-xa", npav1beta1.AdminTier, 10, podsOf("x", "a"), cnpFrom("accept-back", npav1beta1.ClusterNetworkPolicyRuleActionAccept, npTeamLabel, "back")),
			},
			want: func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short == "z" }},
	}
}

// testNPLabelChanges: labels put on and taken off pods move them into and
// out of a policy's subjects and peers, for new connections.
func testNPLabelChanges(t *testing.T, ctx context.Context, e *npEnv) {
	const guard, role = "guard", "role"
	guarded, clients := map[string]bool{}, map[string]bool{}
	t.Cleanup(func() {
		for _, p := range e.pods {
			for _, k := range []string{guard, role} {
				if err := e.label(context.Background(), p, k, ""); err != nil {
					t.Error(err)
				}
			}
		}
	})
	e.apply(t, ctx, netpol("x", "guarded", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(guard, "on"),
		Ingress: from(networkingv1.NetworkPolicyPeer{NamespaceSelector: &metav1.LabelSelector{}, PodSelector: matchLabels(role, "client")})}))
	truth := func(from, to *npPod, _ npPort) bool { return !guarded[to.String()] || clients[from.String()] }
	var held net.Conn
	for _, step := range []struct {
		pod, key, value string
	}{
		{"x/a", guard, "on"},    // x/a isolated: no client yet
		{"y/b", role, "client"}, // y/b a client of x/a
		{"x/b", guard, "on"},    // x/b isolated too
		{"z/c", role, "client"}, // another client, from the other team
		{"y/b", role, ""},       // y/b no client any more
		{"x/a", guard, ""},      // x/a open again
	} {
		p := e.pod(step.pod)
		if err := e.label(ctx, p, step.key, step.value); err != nil {
			t.Fatal(err)
		}
		set := map[string]map[string]bool{guard: guarded, role: clients}[step.key]
		set[step.pod] = step.value != ""
		e.expect(t, ctx, fmt.Sprintf("after %s %s=%q", step.pod, step.key, step.value), truth)
		switch {
		case step.pod == "y/b" && step.value != "":
			// y/b, now a client, opens a connection to x/a that lasts.
			held = e.hold(t, ctx, e.pod("y/b"), e.pod("x/a"))
		case step.pod == "y/b" && held != nil:
			// y/b is no client any more: new connections are denied (the
			// matrix), the one it opened lives on.
			if err := lineRoundTrip(held, "y/b no client any more"); err != nil {
				t.Errorf("y/b → x/a, established while y/b was a client, once it is not: %v", err)
			}
		}
	}
}

// hold opens a TCP connection from one matrix pod to another's holdPort,
// where a line echo serves until t ends, and checks a first exchange; the
// connection is closed when t ends.
func (e *npEnv) hold(t *testing.T, ctx context.Context, client, server *npPod) net.Conn {
	t.Helper()
	holdEcho(t, server.ns, holdPort)
	addr := net.JoinHostPort(server.ip.String(), fmt.Sprint(holdPort))
	conn, err := client.ns.DialContext(ctx, &net.Dialer{Timeout: askTimeout}, "tcp", addr)
	if err != nil {
		t.Fatalf("%s → %s: %v", client, addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	if err := lineRoundTrip(conn, "hello"); err != nil {
		t.Fatalf("%s → %s: %v", client, addr, err)
	}
	return conn
}

// testNPEstablished: a policy acts on new connections; a TCP connection
// established while it was allowed lives on when a policy denying it is
// added, and when the policy is removed (NetworkPolicy leaves existing
// connections to the implementation; podnet's data plane accepts ct state
// established,related before any policy: docs/networkpolicy.md).
func testNPEstablished(t *testing.T, ctx context.Context, e *npEnv) {
	server, client := e.pod("x/a"), e.pod("y/a")
	conn := e.hold(t, ctx, client, server)
	addr := net.JoinHostPort(server.ip.String(), fmt.Sprint(holdPort))
	exchange := func(what string) {
		t.Helper()
		if err := lineRoundTrip(conn, what); err != nil {
			t.Errorf("the connection %s → %s established before, %s: %v", client, addr, what, err)
		}
	}
	deny := netpol("x", "deny-ingress", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}, PolicyTypes: ingressOnly})
	e.apply(t, ctx, deny)
	e.expect(t, ctx, "x denies ingress", func(_, to *npPod, _ npPort) bool { return to.short != "x" })
	exchange("x denies ingress")
	if c, err := client.ns.DialContext(ctx, &net.Dialer{Timeout: npProbeTimeout}, "tcp", addr); err == nil {
		c.Close()
		t.Errorf("a new connection %s → %s passed the default deny", client, addr)
	}
	if err := e.c.client.NetworkingV1().NetworkPolicies(deny.Namespace).Delete(ctx, deny.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	e.expect(t, ctx, "policy removed", allReach)
	exchange("policy removed")
}

// holdEcho echoes lines on every TCP connection to port inside ns, for as
// long as the connection lasts, until the test ends.
func holdEcho(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	var ln net.Listener
	if err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	}); err != nil {
		t.Fatalf("listen on %d: %v", port, err)
	}
	var conns sync.WaitGroup
	t.Cleanup(func() { ln.Close(); conns.Wait() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			go func() {
				defer conns.Done()
				defer c.Close()
				buf := make([]byte, 256)
				for {
					_ = c.SetReadDeadline(time.Now().Add(holdIdle))
					n, err := c.Read(buf)
					if err != nil {
						return
					}
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
			}()
		}
	}()
}

// lineRoundTrip sends a line on conn and reads it back.
func lineRoundTrip(conn net.Conn, msg string) error {
	msg = strings.ReplaceAll(msg, "\n", " ") + "\n"
	_ = conn.SetDeadline(time.Now().Add(askTimeout))
	if _, err := conn.Write([]byte(msg)); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	buf := make([]byte, len(msg))
	for n := 0; n < len(buf); {
		m, err := conn.Read(buf[n:])
		if err != nil {
			return fmt.Errorf("read: %w", err)
		}
		n += m
	}
	if string(buf) != msg {
		return fmt.Errorf("echoed %q, want %q", buf, msg)
	}
	return nil
}

// testNPFromNodes: a pod that NetworkPolicy isolates for ingress is still
// reached from its own node (kubelet's probes: the node's own traffic is
// never evaluated; a hostNetwork pod has the node's network namespace, so
// this is also a hostNetwork pod's traffic), not from the other nodes,
// which are addresses like any other (docs/networkpolicy.md).
func testNPFromNodes(t *testing.T, ctx context.Context, e *npEnv) {
	nodeReaches := func(node string, p *npPod) error {
		return probe(ctx, e.c.nodeNS(node), p, tcp80)
	}
	var xs []*npPod
	for _, p := range e.pods {
		if p.short == "x" {
			xs = append(xs, p)
		}
	}
	for _, p := range xs {
		for _, n := range e.c.names {
			if err := poll(ctx, convergeWait, fmt.Sprintf("node %s → %s", n, p), func(context.Context) error { return nodeReaches(n, p) }); err != nil {
				t.Fatalf("without policy: %v", err)
			}
		}
	}
	e.apply(t, ctx, netpol("x", "deny-ingress", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}, PolicyTypes: ingressOnly}))
	e.expect(t, ctx, "x denies ingress", func(_, to *npPod, _ npPort) bool { return to.short != "x" })
	for _, p := range xs {
		for _, n := range e.c.names {
			err := nodeReaches(n, p)
			switch {
			case n == p.node && err != nil:
				t.Errorf("node %s → its own pod %s (isolated): %v; want reached (kubelet probes)", n, p, err)
			case n != p.node && err == nil:
				t.Errorf("node %s → %s on %s (isolated, no rule for nodes): reached, want denied", n, p, p.node)
			}
		}
	}
}

// testNPNewPod: a pod created into a namespace whose policy isolates it
// for egress is isolated from its very first packet: it connects in a
// tight loop, from its container's start, to a pod its policy denies
// (which must never see it) and to one it allows (which must, showing
// that the loop ran).
func testNPNewPod(t *testing.T, ctx context.Context, e *npEnv) {
	denied, allowed := e.pod("y/a"), e.pod("y/b")
	e.apply(t, ctx, netpol("x", "egress-to-yb", networkingv1.NetworkPolicySpec{PodSelector: metav1.LabelSelector{}, PolicyTypes: egressOnly,
		Egress: to(networkingv1.NetworkPolicyPeer{NamespaceSelector: matchLabels(npNSLabel, "y"), PodSelector: matchLabels(npPodLabel, "b")})}))
	e.expect(t, ctx, "x's egress only to y/b", func(from, to *npPod, _ npPort) bool { return from.short != "x" || is(to, "y/b") })
	// Four loops at the denied pod, one (paced) at the allowed one.
	loop := func(ip net.IP, pace string) string {
		return fmt.Sprintf("while :; do nc -w 1 %s 80 </dev/null; %s done >/dev/null 2>&1", ip, pace)
	}
	script := strings.Repeat("("+loop(denied.ip, "")+") & ", 4) + loop(allowed.ip, "sleep 1;")
	const newcomer = "newcomer"
	pods := e.c.runPods(t, ctx, podSpec{name: newcomer, namespace: npNamespace("x"), node: denied.node, step: "network-policy",
		labels: map[string]string{npPodLabel: newcomer}, script: script})
	src := podIP(pods[newcomer]).String()
	const tries = 5
	err := poll(ctx, convergeWait, fmt.Sprintf("%s's loop reaching %s", newcomer, allowed), func(context.Context) error {
		if n := allowed.seenFrom(src); n < tries {
			return fmt.Errorf("%s saw %d connections from %s, want %d", allowed, n, src, tries)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	if n := denied.seenFrom(src); n > 0 {
		t.Errorf("%s (denied to %s by its namespace's policy) saw %d connections from it: an unprotected window", denied, newcomer, n)
	} else {
		t.Logf("%s: %d connections to %s, none to %s", newcomer, allowed.seenFrom(src), allowed, denied)
	}
}

// testNPService: a ClusterIP Service in front of an isolated pod obeys
// the pod's policy: the service proxy's translation comes before it.
func testNPService(t *testing.T, ctx context.Context, e *npEnv) {
	backend := e.pod("x/a")
	svc, err := e.c.client.CoreV1().Services(backend.namespace()).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "guarded"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{npPodLabel: backend.name},
			Ports:    []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: svcPort, TargetPort: intstr.FromInt32(int32(tcp80.num))}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.c.client.CoreV1().Services(svc.Namespace).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete service %s: %v", svc.Name, err)
		}
	})
	addr := clusterAddr(svc)
	var clients []*npPod
	for _, p := range e.pods {
		if p != backend {
			clients = append(clients, p)
		}
	}
	// viaService is the clients reaching the ClusterIP.
	viaService := func(ctx context.Context) map[string]bool {
		got := map[string]bool{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, p := range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx, cancel := context.WithTimeout(ctx, npProbeTimeout)
				defer cancel()
				r, err := ask(ctx, p.ns, "tcp", addr)
				mu.Lock()
				got[p.String()] = err == nil && r.backend == backend.String()
				mu.Unlock()
			}()
		}
		wg.Wait()
		return got
	}
	check := func(what string, want func(*npPod) bool) {
		t.Helper()
		var got map[string]bool
		err := poll(ctx, programWait, "the ClusterIP "+addr+" "+what, func(context.Context) error {
			got = viaService(ctx)
			var wrong []string
			for _, p := range clients {
				if got[p.String()] != want(p) {
					wrong = append(wrong, fmt.Sprintf("%s: want %s, got %s", p, reachWord(want(p)), reachWord(got[p.String()])))
				}
			}
			if len(wrong) > 0 {
				return fmt.Errorf("%s", strings.Join(wrong, "; "))
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
	check("without policy", func(*npPod) bool { return true })
	e.apply(t, ctx, netpol("x", "a-from-y", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"), Ingress: from(nsPeer(npNSLabel, "y"))}))
	e.expect(t, ctx, "x/a only from y", func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || from.short == "y" })
	check("with x/a's policy", func(p *npPod) bool { return p.short == "y" })
}

// testNPIPv6: policy over IPv6 (the cluster is dual-stack): x/a admits
// an IPv6 ipBlock, y/b's IPv6 address, and a pod selector, x/c. Over
// IPv6 (the whole matrix), y/b and x/c reach x/a and no other pod does;
// over IPv4 the ipBlock matches nothing (y/b's IPv4 address is not in
// it), and only x/c reaches x/a.
func testNPIPv6(t *testing.T, ctx context.Context, e *npEnv) {
	yb := e.pod("y/b")
	e.apply(t, ctx, netpol("x", "a-from-yb6-or-c", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
		Ingress: from(networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: yb.ip6.String() + "/128"}}, podPeer(npPodLabel, "c"))}))
	v6 := func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || is(from, "y/b") || is(from, "x/c") }
	if err := e.converge(ctx, v6, overIPv6); err != nil {
		t.Errorf("over IPv6: %v", err)
	}
	e.expect(t, ctx, "over IPv4", func(from, to *npPod, _ npPort) bool { return !is(to, "x/a") || is(from, "x/c") })
}

// testNPSCTP: SCTP ports in policy, where the kernel has SCTP: x/a serves
// SCTP on backendPort, allowed only from y/a.
func testNPSCTP(t *testing.T, ctx context.Context, e *npEnv) {
	server := e.pod("x/a")
	serveSCTP(t, server.ns, server.String())
	addr := net.JoinHostPort(server.ip.String(), fmt.Sprint(backendPort))
	e.apply(t, ctx, netpol("x", "sctp-from-ya", networkingv1.NetworkPolicySpec{PodSelector: *matchLabels(npPodLabel, "a"),
		Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{NamespaceSelector: matchLabels(npNSLabel, "y"), PodSelector: matchLabels(npPodLabel, "a")}},
			Ports: []networkingv1.NetworkPolicyPort{npPortOf(corev1.ProtocolSCTP, backendPort, 0)}}}}))
	e.expect(t, ctx, "x/a: SCTP only", func(_, to *npPod, _ npPort) bool { return !is(to, "x/a") })
	for _, p := range []*npPod{e.pod("y/a"), e.pod("z/a")} {
		want := is(p, "y/a")
		err := poll(ctx, convergeWait, fmt.Sprintf("SCTP %s → %s %s", p, addr, reachWord(want)), func(context.Context) error {
			_, err := askSCTP(p.ns, addr)
			if (err == nil) != want {
				return fmt.Errorf("%s (%v)", reachWord(err == nil), err)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	}
}
