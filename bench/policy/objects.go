package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/internal/kube"
)

// The benchmark's objects in the API.
const (
	// probeNamespace holds the real probe pods and the policies about
	// them; peerNamespace the API pods created one by one as their peers.
	probeNamespace = "bench-policy"
	peerNamespace  = "bench-peers"
	// apiNamespaces hold the API-only pods, spread evenly, and the
	// background policies about them.
	apiNamespaces = 10
	// apiApps are the distinct app labels of the API-only pods.
	apiApps = 20
	// probePort is the probe pods' TCP server; peerPort the port the
	// peers policy opens.
	probePort = 8080
	peerPort  = 9090
	// virtualTaint keeps everything but the benchmark's pods off the
	// virtual nodes (the API-only pods tolerate it).
	virtualTaint = "podnet.io/bench-virtual"
	// podsPerVirtual is the API-only pods on a virtual node, addressed
	// .2 … .251 of its /24 podCIDR.
	podsPerVirtual = 250
	// apiWorkers create objects in parallel.
	apiWorkers = 32
)

// apiNamespace is the namespace of the i-th API-only pod or background
// policy.
func apiNamespace(i int) string { return "bench-api-" + strconv.Itoa(i%apiNamespaces) }

// appOf is the app label of the i-th API-only pod.
func appOf(i int) string { return "a-" + strconv.Itoa(i%apiApps) }

// parallel runs f(i) for i in [from, to) on apiWorkers goroutines and
// returns the first error.
func parallel(ctx context.Context, from, to int, f func(ctx context.Context, i int) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs := make(chan int)
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for range apiWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range jobs {
				if err := f(ctx, i); err != nil {
					once.Do(func() { first = err; cancel() })
				}
			}
		}()
	}
feed:
	for i := from; i < to; i++ {
		select {
		case jobs <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(jobs)
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// apiObjects creates and tracks what the benchmark puts into the API.
type apiObjects struct {
	c kubernetes.Interface
	// virtual are the virtual nodes' names and podCIDRs.
	virtual []virtualNode
	// next is the next address handed out (addr).
	next int
}

// virtualNode is a Node object with no kubelet behind it.
type virtualNode struct {
	Name    string       `json:"name"`
	PodCIDR netip.Prefix `json:"podCIDR"`
}

// networkPolicySetting is the network-policy key of the agents'
// configuration in podnet's ConfigMap (deploy/podnet.yaml), "absent"
// when it has none.
func (a *apiObjects) networkPolicySetting(ctx context.Context) (string, error) {
	cm, err := a.c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("podnet's configuration: %w", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		return "", fmt.Errorf("podnet's configuration: config.yaml: %w", err)
	}
	v, ok := cfg["network-policy"]
	if !ok {
		return "absent", nil
	}
	return fmt.Sprint(v), nil
}

// createNamespaces creates the probe, peer and API-only pods'
// namespaces.
func (a *apiObjects) createNamespaces(ctx context.Context) error {
	names := []string{probeNamespace, peerNamespace}
	for i := range apiNamespaces {
		names = append(names, apiNamespace(i))
	}
	for _, n := range names {
		if _, err := a.c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("namespace %s: %w", n, err)
		}
	}
	return nil
}

// createVirtualNodes creates count Node objects that no kubelet runs:
// tainted NoSchedule and NoExecute (the API-only pods tolerate it), never
// Ready, and no podnet peer (no podnet annotations: no agent routes to
// them). kube-controller-manager allocates each a podCIDR of the cluster
// CIDR, as for any Node, so their pods' addresses clash with no real
// node's; it waits for those.
func (a *apiObjects) createVirtualNodes(ctx context.Context, count int) error {
	for j := range count {
		name := "bench-virtual-" + strconv.Itoa(j)
		n := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{virtualTaint: "true"}},
			Spec: corev1.NodeSpec{Taints: []corev1.Taint{
				{Key: virtualTaint, Effect: corev1.TaintEffectNoSchedule},
				{Key: virtualTaint, Effect: corev1.TaintEffectNoExecute},
			}},
		}
		if _, err := a.c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("virtual node %s: %w", name, err)
		}
	}
	for j := range count {
		name := "bench-virtual-" + strconv.Itoa(j)
		cidr, err := waitPodCIDR(ctx, a.c, name)
		if err != nil {
			return err
		}
		if cidr.Bits() > 24 || !cidr.Addr().Is4() {
			return fmt.Errorf("virtual node %s: podCIDR %s is no IPv4 /24 or larger", name, cidr)
		}
		a.virtual = append(a.virtual, virtualNode{Name: name, PodCIDR: cidr})
	}
	return nil
}

// waitPodCIDR waits up to a minute for the Node name's first podCIDR.
func waitPodCIDR(ctx context.Context, c kubernetes.Interface, name string) (netip.Prefix, error) {
	deadline := time.Now().Add(time.Minute)
	for {
		n, err := c.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && len(n.Spec.PodCIDRs) > 0 {
			p, err := netip.ParsePrefix(n.Spec.PodCIDRs[0])
			if err != nil {
				return netip.Prefix{}, fmt.Errorf("node %s: podCIDR %q: %w", name, n.Spec.PodCIDRs[0], err)
			}
			return p, nil
		}
		if time.Now().After(deadline) {
			return netip.Prefix{}, fmt.Errorf("node %s: no podCIDR from kube-controller-manager after a minute (last error: %v)", name, err)
		}
		if err := benchlab.Pause(ctx, 100*time.Millisecond); err != nil {
			return netip.Prefix{}, err
		}
	}
}

// addr hands out the next API-only pod's node and address: .2 … .251 of
// the virtual nodes' podCIDRs, one node after the other.
func (a *apiObjects) addr() (string, netip.Addr, error) {
	j, k := a.next/podsPerVirtual, a.next%podsPerVirtual
	if j >= len(a.virtual) {
		return "", netip.Addr{}, fmt.Errorf("the %d virtual nodes hold no more than %d pods", len(a.virtual), len(a.virtual)*podsPerVirtual)
	}
	a.next++
	b := a.virtual[j].PodCIDR.Masked().Addr().As4()
	b[3] += byte(2 + k)
	return a.virtual[j].Name, netip.AddrFrom4(b), nil
}

// apiPod is an API-only pod: bound to a virtual node (no scheduler, no
// kubelet), tolerating every taint (the node lifecycle controller taints
// a node that never reports as unreachable: its pods are not evicted),
// with a named container port as a real pod would declare.
func apiPod(namespace, name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Labels: labels},
		Spec: corev1.PodSpec{
			NodeName:    node,
			Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists}},
			Containers: []corev1.Container{{
				Name: "app", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}},
			}},
		},
	}
}

// createAPIPod creates the pod p and writes its status as a kubelet would
// once its sandbox runs (phase Running, Ready, podIP ip) through the
// status subresource.
func (a *apiObjects) createAPIPod(ctx context.Context, p *corev1.Pod, ip netip.Addr) error {
	pods := a.c.CoreV1().Pods(p.Namespace)
	created, err := pods.Create(ctx, p, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	now := metav1.Now()
	created.Status = corev1.PodStatus{
		Phase:      corev1.PodRunning,
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now}},
		PodIP:      ip.String(),
		PodIPs:     []corev1.PodIP{{IP: ip.String()}},
		StartTime:  &now,
	}
	if _, err := pods.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// createAPIPods creates the API-only pods 0 … n-1, in parallel:
// api-i in apiNamespace(i), app appOf(i).
func (a *apiObjects) createAPIPods(ctx context.Context, n int) error {
	type placed struct {
		node string
		ip   netip.Addr
	}
	at := make([]placed, n)
	for i := range at {
		var err error
		if at[i].node, at[i].ip, err = a.addr(); err != nil {
			return err
		}
	}
	return parallel(ctx, 0, n, func(ctx context.Context, i int) error {
		p := apiPod(apiNamespace(i), "api-"+strconv.Itoa(i), at[i].node, map[string]string{"app": appOf(i)})
		return a.createAPIPod(ctx, p, at[i].ip)
	})
}

// createPeer creates the API-only pod name in peerNamespace, one the
// peers policy selects, and returns its address.
func (a *apiObjects) createPeer(ctx context.Context, name string) (netip.Addr, error) {
	node, ip, err := a.addr()
	if err != nil {
		return netip.Addr{}, err
	}
	return ip, a.createAPIPod(ctx, apiPod(peerNamespace, name, node, map[string]string{"role": "peer"}), ip)
}

// Policies.

var tcp = corev1.ProtocolTCP

func port(p int) []networkingv1.NetworkPolicyPort {
	v := intstr.FromInt32(int32(p))
	return []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &v}}
}

func selector(kv ...string) *metav1.LabelSelector {
	m := map[string]string{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[kv[i]] = kv[i+1]
	}
	return &metav1.LabelSelector{MatchLabels: m}
}

// probesSelector selects the probe pods.
var probesSelector = selector("bench", "probe")

// isolatePolicy isolates the probe pods for ingress, allowing nothing.
func isolatePolicy() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNamespace, Name: "isolate"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *probesSelector,
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
}

// allowProbesPolicy lets the probe pods reach each other's server.
func allowProbesPolicy(name string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNamespace, Name: name},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *probesSelector,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From:  []networkingv1.NetworkPolicyPeer{{PodSelector: probesSelector}},
				Ports: port(probePort),
			}},
		},
	}
}

// peersPolicy lets the peer pods (role=peer in peerNamespace) reach the
// probe pods on peerPort: every node with a probe pod holds their
// addresses in a set.
func peersPolicy() *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: probeNamespace, Name: "peers"},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *probesSelector,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{
				From: []networkingv1.NetworkPolicyPeer{{
					NamespaceSelector: selector(corev1.LabelMetadataName, peerNamespace),
					PodSelector:       selector("role", "peer"),
				}},
				Ports: port(peerPort),
			}},
		},
	}
}

// backgroundPolicy is the k-th of the policies about the API-only pods:
// in apiNamespace(k), selecting one app's pods, allowing ingress from
// the next app's pods on a port (every third rule across namespaces,
// every fifth on the named port), and every fourth isolating egress too,
// to an ipBlock with an except.
func backgroundPolicy(k int) *networkingv1.NetworkPolicy {
	from := networkingv1.NetworkPolicyPeer{PodSelector: selector("app", appOf(k+1))}
	if k%3 == 0 {
		from.NamespaceSelector = &metav1.LabelSelector{}
	}
	ports := port(1000 + k%1000)
	if k%5 == 0 {
		named := intstr.FromString("http")
		ports = []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &named}}
	}
	p := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: apiNamespace(k), Name: "bg-" + strconv.Itoa(k)},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: *selector("app", appOf(k)),
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{from}, Ports: ports}},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		},
	}
	if k%4 == 0 {
		p.Spec.PolicyTypes = append(p.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
		p.Spec.Egress = []networkingv1.NetworkPolicyEgressRule{{
			To:    []networkingv1.NetworkPolicyPeer{{IPBlock: &networkingv1.IPBlock{CIDR: "10.0.0.0/8", Except: []string{"10.1.0.0/16"}}}},
			Ports: port(443),
		}}
	}
	return p
}

// createPolicy creates p.
func (a *apiObjects) createPolicy(ctx context.Context, p *networkingv1.NetworkPolicy) error {
	if _, err := a.c.NetworkingV1().NetworkPolicies(p.Namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("networkpolicy %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// deletePolicy deletes the policy namespace/name.
func (a *apiObjects) deletePolicy(ctx context.Context, namespace, name string) error {
	if err := a.c.NetworkingV1().NetworkPolicies(namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		return fmt.Errorf("delete networkpolicy %s/%s: %w", namespace, name, err)
	}
	return nil
}

// growBackground creates the background policies from … to-1.
func (a *apiObjects) growBackground(ctx context.Context, from, to int) error {
	return parallel(ctx, from, to, func(ctx context.Context, k int) error { return a.createPolicy(ctx, backgroundPolicy(k)) })
}

// deleteAllPolicies deletes every NetworkPolicy of the benchmark's
// namespaces.
func (a *apiObjects) deleteAllPolicies(ctx context.Context) error {
	var errs []error
	namespaces := []string{probeNamespace}
	for i := range apiNamespaces {
		namespaces = append(namespaces, apiNamespace(i))
	}
	for _, ns := range namespaces {
		if err := a.c.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, metav1.DeleteOptions{}, metav1.ListOptions{}); err != nil {
			errs = append(errs, fmt.Errorf("delete the networkpolicies of %s: %w", ns, err))
		}
	}
	return errors.Join(errs...)
}
