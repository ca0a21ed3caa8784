package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// The cluster's shape: 3 nodes, the lab's Deployment of 9 pods; the
// cluster is dual-stack (IPv4 primary).
const (
	nodeCount   = 3
	podsPerNode = 3
)

// upTimeout bounds the lab's Up: a cold kube.Build takes most of it.
const upTimeout = 20 * time.Minute

// kubeProxyEnv, when set, picks the lab's kube-proxy (lab.Spec.KubeProxy:
// iptables, nftables or none) over its default.
const kubeProxyEnv = "PODNET_TEST_KUBE_PROXY"

// testNamespace holds the pods and Services the tests make.
const testNamespace = "podnet-test"

// cluster is the package's one lab, and what the tests keep open of it.
type cluster struct {
	lab    *lab.Lab
	client kubernetes.Interface
	cp     *kube.ControlPlane
	// nodes are the lab's nodes by name (the Kubernetes Nodes' names).
	nodes map[string]*lab.Node
	// names are the node names in order: n1, n2, n3.
	names []string
	// kn are the nodes' Kubernetes components (their directories).
	kn map[string]*kube.Node
	// netns are the nodes' network namespaces, open until teardown.
	netns map[string]*netns.Temp
}

// upCluster builds the lab, removes it when t ends (also on failure) and
// checks that nothing of it is left.
func upCluster(t *testing.T) *cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a Kubernetes cluster in network and mount namespaces it creates (run as root, e.g. make test under sudo)")
	}
	var b [3]byte
	_, _ = rand.Read(b[:])
	name := "k" + hex.EncodeToString(b[:])
	base := t.TempDir()
	spec := lab.Spec{Nodes: nodeCount, PodsPerNode: podsPerNode, Kubernetes: true, IPv6: true, KubeProxy: kube.ProxyMode(os.Getenv(kubeProxyEnv))}
	l, err := lab.New(base, name, spec, bins, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{lab: l, nodes: map[string]*lab.Node{}, kn: map[string]*kube.Node{}, netns: map[string]*netns.Temp{}}
	t.Cleanup(func() {
		start := time.Now()
		for _, ns := range c.netns {
			ns.Close()
		}
		if t.Failed() {
			c.dumpLogs(t)
		}
		var cgroups []string
		for _, kn := range c.kn {
			cgroups = append(cgroups, kn.CgroupRoot())
		}
		if err := lab.Down(base, name); err != nil {
			t.Errorf("lab down: %v", err)
		}
		assertGone(t, base, name, cgroups)
		t.Logf("timing: teardown %s", time.Since(start).Round(time.Millisecond))
	})
	ctx, cancel := context.WithTimeout(context.Background(), upTimeout)
	defer cancel()
	start := time.Now()
	if err := l.Up(ctx); err != nil {
		t.Fatalf("lab up: %v", err)
	}
	t.Logf("timing: cluster up %s (kube-proxy: %s)", time.Since(start).Round(time.Millisecond), l.Spec.KubeProxy)
	if c.client, err = l.Client(); err != nil {
		t.Fatal(err)
	}
	if c.cp, err = l.ControlPlane(); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		c.nodes[n.Name] = n
		c.names = append(c.names, n.Name)
		if c.kn[n.Name], err = l.KubeNode(n.Name); err != nil {
			t.Fatal(err)
		}
		if c.netns[n.Name], err = netns.OpenNamed(n.NS); err != nil {
			t.Fatal(err)
		}
	}
	if len(c.names) != nodeCount {
		t.Fatalf("the lab has nodes %v, want %d", c.names, nodeCount)
	}
	_, err = c.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: testNamespace}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("namespace %s: %v", testNamespace, err)
	}
	return c
}

// nodeNS is the node's network namespace.
func (c *cluster) nodeNS(name string) *netns.NS { return c.netns[name].NS }

// nodeIP is the node's underlay address.
func (c *cluster) nodeIP(name string) net.IP { return net.ParseIP(c.nodes[name].IP).To4() }

// nodeIP6 is the node's underlay IPv6 address.
func (c *cluster) nodeIP6(name string) net.IP { return net.ParseIP(c.nodes[name].IP6) }

// ipamDir is where the plugins keep the node's IPAM state (the
// ConfigMap's ipam-dir, in the node's own /run/podnet).
func (c *cluster) ipamDir(name string) string {
	return filepath.Join(c.kn[name].FS(), "run/podnet/ipam")
}

// dumpLogs logs the tails of the components' logs of a failed run.
func (c *cluster) dumpLogs(t *testing.T) {
	for _, name := range c.names {
		for _, comp := range []string{"kubelet", "containerd"} {
			b, _ := os.ReadFile(c.kn[name].LogPath(comp))
			t.Logf("%s log of %s:\n%s", comp, name, kube.Tail(b, 15))
		}
	}
	if c.client != nil { // nil when the lab never came up
		c.logPods(t, context.Background(), "app.kubernetes.io/name=podnet", 15)
	}
}

// logPods logs the tail of the logs of each kube-system pod the selector
// picks, one by one: a pod whose node is gone from the API (its logs
// unreachable) does not hide the others'.
func (c *cluster) logPods(t *testing.T, ctx context.Context, selector string, tail int64) {
	pods, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		t.Logf("pods %s: %v", selector, err)
		return
	}
	for _, p := range pods.Items {
		for _, ctr := range p.Spec.Containers {
			b, err := c.client.CoreV1().Pods(p.Namespace).GetLogs(p.Name, &corev1.PodLogOptions{Container: ctr.Name, TailLines: &tail}).DoRaw(ctx)
			if err != nil {
				t.Logf("logs of %s/%s on %s: %v", p.Name, ctr.Name, p.Spec.NodeName, err)
				continue
			}
			t.Logf("logs of %s/%s on %s:\n%s", p.Name, ctr.Name, p.Spec.NodeName, strings.TrimSpace(string(b)))
		}
	}
}

// assertGone checks that nothing of the lab is left: no namespace, no
// process, no mount, no cgroup of its nodes, no state.
func assertGone(t *testing.T, base, name string, cgroups []string) {
	t.Helper()
	entries, _ := os.ReadDir(netns.RunDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pl-"+name+"-") {
			t.Errorf("namespace %s left after lab down", e.Name())
		}
	}
	dir := filepath.Join(base, name)
	if mounts, err := kube.MountsUnder("/proc/self/mountinfo", dir); err != nil || len(mounts) > 0 {
		t.Errorf("mounts left under %s after lab down: %v (%v)", dir, mounts, err)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			t.Errorf("process %s of lab %s left after lab down: %q", p.Name(), name, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	for _, cg := range cgroups {
		v1, _ := filepath.Glob("/sys/fs/cgroup/*" + cg)
		v2, _ := filepath.Glob("/sys/fs/cgroup" + cg)
		if left := append(v1, v2...); len(left) > 0 {
			t.Errorf("cgroups of lab %s left after lab down: %v", name, left)
		}
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("state dir of lab %s left after lab down (%v)", name, err)
	}
}

// pollStep is how often conditions are polled.
const pollStep = 200 * time.Millisecond

// poll calls cond until it returns nil or timeout passes; the error says
// what cond reported last.
func poll(ctx context.Context, timeout time.Duration, what string, cond func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := cond(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not after %s: %w", what, timeout, err)
		case <-time.After(pollStep):
		}
	}
}

// testWriter sends the lab's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
