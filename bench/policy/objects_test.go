package main

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/testing/kubetest"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// TestAPIObjects fills a real API server as the benchmark does at full
// scale — 1,000 API-only pods on virtual nodes, their status written,
// peer pods, 1,000 background policies and the probe pods' — and checks
// what the agents would see: every pod Running with an address of its
// own virtual node's podCIDR, no address twice, every policy accepted by
// the API's validation.
func TestAPIObjects(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a control plane")
	}
	ns := nfttest.NS(t, "bpol-cp")
	ip := net.IPv4(192, 0, 2, 1)
	if err := ns.AddLoopbackAddr(netip.AddrFrom4([4]byte(ip.To4()))); err != nil {
		t.Fatal(err)
	}
	cp, _ := kubetest.ControlPlane(t, ns.Path(), ip)
	rc := cp.RESTConfig()
	rc.QPS, rc.Burst = 2000, 4000
	c, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	const pods, peers, policies = 1000, 3, 1000
	a := &apiObjects{c: c}
	if err := a.createNamespaces(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.createVirtualNodes(ctx, (pods+peers+podsPerVirtual-1)/podsPerVirtual); err != nil {
		t.Fatal(err)
	}
	if len(a.virtual) != 5 {
		t.Fatalf("virtual nodes %v, want 5", a.virtual)
	}
	if err := a.createAPIPods(ctx, pods); err != nil {
		t.Fatal(err)
	}
	for i := range peers {
		if _, err := a.createPeer(ctx, "peer-"+string(rune('a'+i))); err != nil {
			t.Fatal(err)
		}
	}

	cidrs := map[string]netip.Prefix{}
	for _, v := range a.virtual {
		cidrs[v.Name] = v.PodCIDR
	}
	list, err := c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]string{}
	count := 0
	for _, p := range list.Items {
		if !strings.HasPrefix(p.Namespace, "bench-") {
			continue
		}
		count++
		where := p.Namespace + "/" + p.Name
		ip, err := netip.ParseAddr(p.Status.PodIP)
		if err != nil || p.Status.Phase != corev1.PodRunning || len(p.Status.PodIPs) != 1 {
			t.Errorf("%s: phase %s, podIP %q, podIPs %v: not a running pod with one address", where, p.Status.Phase, p.Status.PodIP, p.Status.PodIPs)
			continue
		}
		if cidr, ok := cidrs[p.Spec.NodeName]; !ok || !cidr.Contains(ip) {
			t.Errorf("%s: %s on %s, not in that virtual node's podCIDR %s", where, ip, p.Spec.NodeName, cidr)
		}
		if other, dup := seen[ip.String()]; dup {
			t.Errorf("%s and %s both have %s", where, other, ip)
		}
		seen[ip.String()] = where
	}
	if count != pods+peers {
		t.Errorf("%d benchmark pods, want %d", count, pods+peers)
	}

	for _, p := range []func(context.Context) error{
		func(ctx context.Context) error { return a.growBackground(ctx, 0, policies) },
		func(ctx context.Context) error { return a.createPolicy(ctx, isolatePolicy()) },
		func(ctx context.Context) error { return a.createPolicy(ctx, peersPolicy()) },
		func(ctx context.Context) error { return a.createPolicy(ctx, allowProbesPolicy("allow-pair")) },
	} {
		if err := p(ctx); err != nil {
			t.Fatal(err)
		}
	}
	np, err := c.NetworkingV1().NetworkPolicies(metav1.NamespaceAll).List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(np.Items) != policies+3 {
		t.Errorf("%d NetworkPolicies, want %d", len(np.Items), policies+3)
	}
	if err := a.deleteAllPolicies(ctx); err != nil {
		t.Fatal(err)
	}
	if np, err = c.NetworkingV1().NetworkPolicies(metav1.NamespaceAll).List(ctx, metav1.ListOptions{}); err != nil || len(np.Items) != 0 {
		t.Errorf("after deleteAllPolicies: %d NetworkPolicies (%v), want none", len(np.Items), err)
	}
}

// TestAddr hands out the virtual nodes' addresses: .2 … .251 of each
// podCIDR, one node after the other, and refuses past the last.
func TestAddr(t *testing.T) {
	a := &apiObjects{virtual: []virtualNode{
		{Name: "v0", PodCIDR: netip.MustParsePrefix("10.244.7.0/24")},
		{Name: "v1", PodCIDR: netip.MustParsePrefix("10.244.9.0/24")},
	}}
	for _, tc := range []struct {
		next int
		node string
		ip   string
	}{
		{0, "v0", "10.244.7.2"},
		{249, "v0", "10.244.7.251"},
		{250, "v1", "10.244.9.2"},
		{499, "v1", "10.244.9.251"},
		{500, "", ""},
	} {
		a.next = tc.next
		node, ip, err := a.addr()
		if tc.node == "" {
			if err == nil {
				t.Errorf("addr() #%d = %s %s, want an error", tc.next, node, ip)
			}
			continue
		}
		if err != nil || node != tc.node || ip.String() != tc.ip {
			t.Errorf("addr() #%d = %s %s, %v; want %s %s", tc.next, node, ip, err, tc.node, tc.ip)
		}
	}
}
