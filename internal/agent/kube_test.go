package agent

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/services/dataplane"
	"github.com/podnet/podnet/internal/testing/kubetest"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// startKubeControlPlane runs a real control plane in env's peer namespace,
// reached by the node at 192.0.2.2, stopped when the test ends. It returns
// an administrator's client and the kubeconfig of an agent user bound to
// exactly kubeapi.Rules().
func startKubeControlPlane(t *testing.T, env *nodeEnv) (*kube.ControlPlane, kubernetes.Interface, string) {
	t.Helper()
	h, err := netlink.NewHandleAt(env.peer.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("192.0.2.2/24")
	if err := h.AddrAdd(eth0, addr); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		t.Fatal(err)
	}
	cp, admin := kubetest.ControlPlane(t, env.peer.Path(), addr.IP)
	return cp, admin, kubetest.User(t, cp, "podnet-agent", kubeapi.Rules())
}

// TestKubernetesDatastore runs an agent with --datastore kubernetes and
// --service-proxy against a real API server (reached from the node's
// namespace, with exactly the documented RBAC rules): it waits, not ready
// and saying why, for its Node's podCIDRs until kube-controller-manager
// allocates them; it then becomes ready (the service table programmed),
// publishes its annotations and NetworkUnavailable=False, routes to a peer
// Node that has podnet's annotations, drops those routes when the peer's
// Node is deleted, and on leave removes its annotations and the service
// table.
func TestKubernetesDatastore(t *testing.T) {
	env := newNodeEnv(t)
	cp, admin, kubeconfig := startKubeControlPlane(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	nodes := admin.CoreV1().Nodes()

	if err := cp.StopComponent(kube.ComponentControllerManager); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := env.cfg
	cfg.Datastore, cfg.Kubeconfig, cfg.ServiceProxy = "kubernetes", kubeconfig, true
	tn, err := env.start(t, cfg)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the agent to say it waits for the podCIDRs", func() bool {
		return strings.Contains(tn.node.manager.NotReady(), "membership: joining the cluster: waiting for node.spec.podCIDRs")
	})
	st := tn.getStatus(t)
	for _, c := range st.Controllers {
		if c.Name == "membership" && (c.Ready || !strings.Contains(c.Reason, "node.spec.podCIDRs")) {
			t.Errorf("/status while waiting: %+v", c)
		}
	}
	if err := cp.StartComponent(ctx, kube.ComponentControllerManager); err != nil {
		t.Fatal(err)
	}
	tn.waitReady(t)
	if !nfttest.HasTable(t, tn.ns, nftables.TableFamilyINet, dataplane.TableName) {
		t.Error("ready without the service proxy's table")
	}
	n1, err := nodes.Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if st := tn.getStatus(t); len(n1.Spec.PodCIDRs) != 1 || st.Node.Subnet.String() != n1.Spec.PodCIDRs[0] {
		t.Fatalf("the agent's subnet %v, the Node's podCIDRs %v", st.Node.Subnet, n1.Spec.PodCIDRs)
	}
	waitFor(t, "n1's annotations and NetworkUnavailable=False", func() bool {
		n1, err = nodes.Get(ctx, "n1", metav1.GetOptions{})
		if err != nil || n1.Annotations[kubeapi.AnnotationNodeIP] != "192.0.2.1" || n1.Annotations[kubeapi.AnnotationVTEPMAC] == "" {
			return false
		}
		for _, c := range n1.Status.Conditions {
			if c.Type == corev1.NodeNetworkUnavailable {
				return c.Status == corev1.ConditionFalse && c.Reason == kubeapi.ReasonUp
			}
		}
		return false
	})

	// A peer on the same link: host-gw routes its podCIDR via its address.
	peer := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n2", Annotations: map[string]string{
			kubeapi.AnnotationNodeIP: "192.0.2.3", kubeapi.AnnotationVTEPMAC: "02:00:00:00:00:03",
		}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.100.0/24", PodCIDRs: []string{"10.244.100.0/24"}},
	}
	if _, err := nodes.Create(ctx, peer, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(tn.ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	_, peerSubnet, _ := net.ParseCIDR("10.244.100.0/24")
	route := func() *netlink.Route {
		rs, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: peerSubnet}, netlink.RT_FILTER_DST)
		if err != nil || len(rs) == 0 {
			return nil
		}
		return &rs[0]
	}
	waitFor(t, "the route to n2's podCIDR", func() bool { r := route(); return r != nil && r.Gw.Equal(net.IPv4(192, 0, 2, 3)) })
	// The status counts the peer once the reconcile that installed the
	// route has been recorded, just after it.
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		st := tn.getStatus(t)
		if st.Peers == 1 && st.Ready {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("status with a peer: %+v", st)
		}
	}

	if err := nodes.Delete(ctx, "n2", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the route to n2 removed", func() bool { return route() == nil })

	tn.stop()
	if err := tn.agent.Leave(ctx); err != nil {
		t.Fatalf("leave: %v", err)
	}
	n1, err = nodes.Get(ctx, "n1", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if nfttest.HasTable(t, tn.ns, nftables.TableFamilyINet, dataplane.TableName) {
		t.Error("after leave, the service proxy's table is left")
	}
	for _, k := range []string{kubeapi.AnnotationNodeIP, kubeapi.AnnotationNodeIP6, kubeapi.AnnotationVTEPMAC} {
		if v, ok := n1.Annotations[k]; ok {
			t.Errorf("after leave, %s = %q", k, v)
		}
	}
	for _, c := range n1.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && (c.Status != corev1.ConditionTrue || c.Reason != kubeapi.ReasonLeft) {
			t.Errorf("after leave, NetworkUnavailable %+v", c)
		}
	}

	// A node still waiting for its podCIDRs has nothing to release: leave
	// does not wait for them.
	if err := cp.StopComponent(kube.ComponentControllerManager); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes.Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n3"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg.NodeName = "n3"
	a3, err := New(cfg, tn.agent.log)
	if err != nil {
		t.Fatal(err)
	}
	if err := a3.Leave(ctx); err != nil {
		t.Fatalf("leave while waiting for podCIDRs: %v", err)
	}

	// A node whose Node was deleted (kubectl delete node) leaves too: its
	// own state goes, and there is nothing left to release in the API.
	if err := nodes.Delete(ctx, "n3", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := a3.Leave(ctx); err != nil {
		t.Fatalf("leave with the Node deleted: %v", err)
	}
}
