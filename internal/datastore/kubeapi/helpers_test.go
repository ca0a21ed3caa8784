package kubeapi

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/kubetest"
	"github.com/podnet/podnet/internal/testing/logtest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// The tests share one real control plane (etcd, kube-apiserver,
// kube-controller-manager with --allocate-node-cidrs, kube-scheduler) in a
// throwaway network namespace, started on first use. The stores under test
// authenticate as a user bound to exactly Rules(), so the tests also prove
// those rules enough. Each test works on Nodes of its own names.
var shared struct {
	once       sync.Once
	err        error
	ns         *netns.Temp
	cp         *kube.ControlPlane
	admin      kubernetes.Interface
	kubeconfig string // the agent user's
}

// agentUser is the identity the stores under test use.
const agentUser = "podnet-agent-test"

func TestMain(m *testing.M) {
	code := m.Run()
	if shared.cp != nil {
		shared.cp.Stop()
	}
	if shared.ns != nil {
		shared.ns.Remove()
	}
	os.Exit(code)
}

// controlPlane starts (once) the shared control plane; it skips the test
// when not root.
func controlPlane(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a control plane in a network namespace")
	}
	shared.once.Do(func() { shared.err = startShared() })
	if shared.err != nil {
		t.Fatal(shared.err)
	}
}

func startShared() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	ns, err := netns.NewTemp("kds")
	if err != nil {
		return err
	}
	shared.ns = ns
	ip, err := addAddress(ns, "cp0", "192.0.2.1/24")
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "kubeapi-test-")
	if err != nil {
		return err
	}
	if shared.cp, err = kubetest.Start(ctx, ns.Path(), ip, dir); err != nil {
		return err
	}
	if shared.admin, err = shared.cp.Client(); err != nil {
		return err
	}
	shared.kubeconfig, err = kubetest.BindUser(ctx, shared.cp, agentUser, Rules())
	return err
}

// addAddress puts addr on a new link (a veth pair: this kernel has no
// dummy links) in ns and returns its IP.
func addAddress(ns *netns.Temp, name, addr string) (net.IP, error) {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return nil, err
	}
	defer h.Close()
	l := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: name + "p"}
	if err := h.LinkAdd(l); err != nil {
		return nil, err
	}
	a, err := netlink.ParseAddr(addr)
	if err != nil {
		return nil, err
	}
	if err := h.AddrAdd(l, a); err != nil {
		return nil, err
	}
	return a.IP, h.LinkSetUp(l)
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// nodeName is a fresh Node name for a test.
func nodeName(prefix string) string {
	var b [3]byte
	rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// createNode creates a Node (podCIDRs set, or left for the controller
// manager), removed when the test ends.
func createNode(t *testing.T, name string, annotations map[string]string, podCIDRs ...string) {
	t.Helper()
	ctx := testCtx(t)
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations},
		Spec:       corev1.NodeSpec{PodCIDRs: podCIDRs},
	}
	if len(podCIDRs) > 0 {
		n.Spec.PodCIDR = podCIDRs[0]
	}
	if _, err := shared.admin.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { deleteNode(t, name) })
}

func deleteNode(t *testing.T, name string) {
	t.Helper()
	err := shared.admin.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{})
	if err != nil && !apierrors.IsNotFound(err) {
		t.Error(err)
	}
}

func getNode(t *testing.T, name string) *corev1.Node {
	t.Helper()
	n, err := shared.admin.CoreV1().Nodes().Get(testCtx(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// v4Cluster and dualCluster are the cluster configurations of the tests
// (the controller manager allocates /24s of 10.244.0.0/16).
var (
	v4Cluster   = cluster.Config{ClusterCIDR: "10.244.0.0/16"}
	dualCluster = cluster.Config{ClusterCIDR: "10.244.0.0/16", ClusterCIDR6: "fd00:10:244::/56"}
)

// openStore opens a store of the agent user for node, closed when the
// test ends; its log is returned.
func openStore(t *testing.T, node string, cl cluster.Config, mutate ...func(*Config)) (*Store, *logtest.Buffer) {
	t.Helper()
	logs := &logtest.Buffer{}
	cfg := Config{
		NodeName: node, Kubeconfig: shared.kubeconfig, Cluster: cl, NetNS: shared.ns.NS,
		Log: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	for _, f := range mutate {
		f(&cfg)
	}
	s, err := Open(testCtx(t), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("store %s log:\n%s", node, logs)
		}
	})
	return s, logs
}

// waitFor polls cond until it holds, failing the test after 60 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 60*time.Second, what, cond)
}

// watcher runs WatchNodes until the test ends and keeps the last set.
type watcher struct {
	mu   sync.Mutex
	last []cluster.Node
	n    int
}

func watchNodes(t *testing.T, s *Store) *watcher {
	t.Helper()
	w := &watcher{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- s.WatchNodes(ctx, func(nodes []cluster.Node) {
			w.mu.Lock()
			defer w.mu.Unlock()
			w.last, w.n = nodes, w.n+1
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchNodes: %v", err)
		}
	})
	return w
}

// node is the watched record of that name.
func (w *watcher) node(name string) (cluster.Node, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, n := range w.last {
		if n.Name == name {
			return n, true
		}
	}
	return cluster.Node{}, false
}

func (w *watcher) calls() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.n
}
