package enforce

import (
	"context"
	"log/slog"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	npaclientset "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/policy/dataplane"
	"github.com/podnet/podnet/internal/policy/gate"
	"github.com/podnet/podnet/internal/testing/kubetest"
	"github.com/podnet/podnet/internal/testing/logtest"
	"github.com/podnet/podnet/internal/testing/nfttest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// waitFor polls cond until it holds, failing the test after 60 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 60*time.Second, what, cond)
}

// running is a controller running for the node n1.
type running struct {
	env    controller.Env
	reg    *prometheus.Registry
	health *controller.Health
	stop   func()
}

// start runs a controller of cfg for the node n1 of nc, its node's pod
// subnet 10.244.1.0/24, until stop or the test's end.
func start(t *testing.T, nc *kubetest.NodeCluster, cfg Config) *running {
	t.Helper()
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := kubeapi.Open(context.Background(), kubeapi.Config{NodeName: "n1", Kubeconfig: nc.Kubeconfig, NetNS: nc.Node.NS, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	rc := store.RESTConfig()
	rc.ContentType, rc.AcceptContentTypes = "application/json", ""
	cnp, err := npaclientset.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	env := controller.NewEnv()
	reg := prometheus.NewRegistry()
	env.Log, env.Metrics, env.NodeName, env.NetNS = log, reg, "n1", nc.Node.NS
	env.Cluster = cluster.Config{ClusterCIDR: "10.244.0.0/16"}
	env.Resync = 30 * time.Second
	env.Self.Set(cluster.Node{Name: "n1", Subnet: &net.IPNet{IP: net.IPv4(10, 244, 1, 0).To4(), Mask: net.CIDRMask(24, 32)}})
	c := New(env, store.Clientset(), cnp, cfg)
	ctx, cancel := context.WithCancel(context.Background())
	h := &controller.Health{}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	t.Cleanup(func() {
		stop()
		if t.Failed() {
			t.Logf("controller log:\n%s", logs)
		}
	})
	return &running{env: env, reg: reg, health: h, stop: stop}
}

// settled is the controller's readiness and env.Policy.
func (r *running) settled() (ready, enforced, set bool) {
	ready, _ = r.health.State()
	enforced, set, _ = r.env.Policy.Load()
	return ready, enforced, set
}

// gauge is the value of a gauge of the registry with the label.
func (r *running) gauge(t *testing.T, name, label, value string) float64 {
	t.Helper()
	mfs, err := r.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetGauge().GetValue()
				}
			}
		}
	}
	return -1
}

// kernel reads the node's policy table.
type kernel struct {
	t    *testing.T
	conn *nftables.Conn
}

func newKernel(t *testing.T, nc *kubetest.NodeCluster) *kernel {
	conn, err := nftables.New(nftables.WithNetNSFd(nc.Node.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	return &kernel{t: t, conn: conn}
}

var policyTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: dataplane.TableName}

// hasChain reports whether the table has the chain.
func (k *kernel) hasChain(name string) bool {
	chains, err := k.conn.ListChainsOfTableFamily(nftables.TableFamilyINet)
	if err != nil {
		return false
	}
	for _, ch := range chains {
		if ch.Table.Name == dataplane.TableName && ch.Name == name {
			return true
		}
	}
	return false
}

// setsHolding are the sets of the table with the element a (a single
// address, or the start of an interval).
func (k *kernel) setsHolding(a netip.Addr) []string {
	sets, err := k.conn.GetSets(policyTable)
	if err != nil {
		return nil
	}
	var out []string
	for _, s := range sets {
		elems, err := k.conn.GetSetElements(s)
		if err != nil {
			continue
		}
		for _, e := range elems {
			if ip, ok := netip.AddrFromSlice(e.Key); ok && ip == a && !e.IntervalEnd {
				out = append(out, s.Name)
			}
		}
	}
	return out
}

func testPod(name, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "a", Labels: labels},
		Spec: corev1.PodSpec{NodeName: node, Containers: []corev1.Container{{
			Name: "c", Image: "registry.k8s.io/pause:3.10",
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
		}}},
	}
}

// TestController runs the controller against a real API server, from a
// node namespace, with exactly kubeapi.Rules() and no ClusterNetworkPolicy
// CRD: it enforces once synced and says so through env.Policy; the gate
// answers only once the new pod's addresses are in the kernel; a
// NetworkPolicy gives the pod its chain; a peer's labels move its address
// in and out of the peer set; a restart keeps the table; the feature off
// removes it.
func TestController(t *testing.T) {
	nc := kubetest.StartNodeCluster(t, "pol", kubeapi.Rules())
	ctx := context.Background()
	for _, n := range []string{"n1", "n2"} {
		if _, err := nc.Admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: n}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := nc.Admin.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	k := newKernel(t, nc)
	sock := filepath.Join(t.TempDir(), "policy.sock")
	r := start(t, nc, Config{Enabled: true, Gate: sock})
	waitFor(t, "the first sync", func() bool {
		ready, enforced, set := r.settled()
		return ready && enforced && set
	})
	if !nfttest.HasTable(t, nc.Node, nftables.TableFamilyINet, dataplane.TableName) {
		t.Fatal("no policy table after the first sync")
	}

	t.Run("gate", func(t *testing.T) {
		// The kubelet has not written the pod's status: only the gate
		// knows its address.
		web, err := nc.Admin.CoreV1().Pods("a").Create(ctx, testPod("web", "n1", map[string]string{"app": "web"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ip := netip.MustParseAddr("10.244.1.5")
		nctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		if err := gate.Notify(nctx, sock, gate.Pod{Namespace: "a", Name: "web", UID: string(web.UID), IPs: []netip.Addr{ip}}); err != nil {
			t.Fatalf("Notify: %v", err)
		}
		// At once: the answer means the kernel has it.
		if !slices.Contains(k.setsHolding(ip), "ingress4") || !slices.Contains(k.setsHolding(ip), "egress4") {
			t.Fatalf("Notify returned before the verdict maps hold %s: %v", ip, k.setsHolding(ip))
		}
		// A pod the agent never hears of in time (the API server away) is
		// admitted, but stays out of the verdict maps: the fail-closed
		// drop holds its traffic until its Pod object arrives.
		ghost := netip.MustParseAddr("10.244.1.6")
		if err := gate.Notify(nctx, sock, gate.Pod{Namespace: "a", Name: "ghost", UID: "no-such-uid", IPs: []netip.Addr{ghost}}); err != nil {
			t.Errorf("Notify of a pod with no Pod object: %v", err)
		}
		if held := k.setsHolding(ghost); slices.Contains(held, "ingress4") || slices.Contains(held, "egress4") {
			t.Errorf("a pod with no Pod object is in the verdict maps: %v", held)
		}
		// Bad input is refused, clearly.
		if err := gate.Notify(nctx, sock, gate.Pod{Name: "x"}); err == nil {
			t.Error("Notify without namespace and uid succeeded")
		}
	})

	t.Run("policy", func(t *testing.T) {
		// The kubelet writes web's status: the gate's address is no
		// longer needed.
		web, err := nc.Admin.CoreV1().Pods("a").Get(ctx, "web", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		web.Status.PodIP, web.Status.PodIPs = "10.244.1.5", []corev1.PodIP{{IP: "10.244.1.5"}}
		if _, err := nc.Admin.CoreV1().Pods("a").UpdateStatus(ctx, web, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		np := &networkingv1.NetworkPolicy{
			ObjectMeta: metav1.ObjectMeta{Name: "allow-client", Namespace: "a"},
			Spec: networkingv1.NetworkPolicySpec{
				PodSelector: metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
				Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
					PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "client"}},
				}}}},
			},
		}
		if _, err := nc.Admin.NetworkingV1().NetworkPolicies("a").Create(ctx, np, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "web's ingress chain", func() bool { return k.hasChain("ingress/a/web") })
		waitFor(t, "the isolated pods' metric", func() bool {
			return r.gauge(t, "podnet_policy_pods", "state", "isolated_ingress") == 1
		})

		// A peer on another node, with its address in its status.
		client, err := nc.Admin.CoreV1().Pods("a").Create(ctx, testPod("client", "n2", map[string]string{"app": "other"}), metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		client.Status.PodIP, client.Status.PodIPs = "10.244.2.7", []corev1.PodIP{{IP: "10.244.2.7"}}
		if _, err := nc.Admin.CoreV1().Pods("a").UpdateStatus(ctx, client, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		peer := netip.MustParseAddr("10.244.2.7")
		relabel := func(app string) {
			t.Helper()
			patch := []byte(`{"metadata":{"labels":{"app":"` + app + `"}}}`)
			if _, err := nc.Admin.CoreV1().Pods("a").Patch(ctx, "client", types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		relabel("client")
		waitFor(t, "the client's address in a peer set", func() bool { return len(k.setsHolding(peer)) > 0 })
		relabel("other")
		waitFor(t, "the client's address out of every set", func() bool { return len(k.setsHolding(peer)) == 0 })
	})

	t.Run("restart", func(t *testing.T) {
		r.stop()
		if !k.hasChain("ingress/a/web") {
			t.Fatal("stopping the controller removed the pod's chain: a restart must keep enforcing")
		}
		r2 := start(t, nc, Config{Enabled: true})
		waitFor(t, "the restarted controller's first sync", func() bool {
			ready, enforced, set := r2.settled()
			return ready && enforced && set
		})
		if !k.hasChain("ingress/a/web") {
			t.Error("the restarted controller lost web's chain")
		}
		r2.stop()
	})

	t.Run("off", func(t *testing.T) {
		r3 := start(t, nc, Config{})
		waitFor(t, "the controller off", func() bool {
			ready, enforced, set := r3.settled()
			return ready && !enforced && set
		})
		if nfttest.HasTable(t, nc.Node, nftables.TableFamilyINet, dataplane.TableName) {
			t.Error("the policy table outlived the feature turned off")
		}
	})
}
