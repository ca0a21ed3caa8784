package kube

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"path"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// pingInterval is the pingers' interval in the fault tests.
const pingInterval = 20 * time.Millisecond

// agentSelector selects podnet's agent pods (deploy/podnet.yaml).
const agentSelector = "app.kubernetes.io/name=podnet,app.kubernetes.io/component=agent"

// crossPods returns a pod of the lab's Deployment on node a and one on
// node b, with their network namespaces (open until t ends).
func (c *cluster) crossPods(t *testing.T, ctx context.Context, a, b string) (pa, pb *lab.Pod, na, nb *netns.NS) {
	t.Helper()
	pods, err := c.lab.KubePods(ctx, lab.PodsNamespace, lab.PodsSelector)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		switch {
		case p.Node == a && pa == nil:
			pa = p
		case p.Node == b && pb == nil:
			pb = p
		}
	}
	if pa == nil || pb == nil {
		t.Fatalf("no pod of the Deployment on %s or %s: %v", a, b, pods)
	}
	open := func(p *lab.Pod) *netns.NS {
		ns, err := netns.Open(p.NetNS)
		if err != nil {
			t.Fatalf("network namespace of %s: %v", p.Name, err)
		}
		t.Cleanup(func() { ns.Close() })
		return ns
	}
	return pa, pb, open(pa), open(pb)
}

// pingBoth starts pingers between two pods, both ways.
func pingBoth(t *testing.T, pa, pb *lab.Pod, na, nb *netns.NS) []*pinger {
	t.Helper()
	var ps []*pinger
	for _, x := range []struct {
		from, to *lab.Pod
		ns       *netns.NS
	}{{pa, pb, na}, {pb, pa, nb}} {
		p, err := startPinger(fmt.Sprintf("%s (%s) → %s (%s)", x.from.Name, x.from.Node, x.to.Name, x.to.Node), x.ns, net.ParseIP(x.to.IPs[0]), pingInterval)
		if err != nil {
			t.Fatal(err)
		}
		ps = append(ps, p)
	}
	return ps
}

// checkPings stops the pingers and fails the test for any loss.
func checkPings(t *testing.T, ps []*pinger) {
	t.Helper()
	for _, p := range ps {
		s, err := p.report()
		if err != nil {
			t.Error(err)
		} else {
			t.Log(s)
		}
	}
}

// agentPod is podnet's agent pod on node.
func (c *cluster) agentPod(ctx context.Context, node string) (*corev1.Pod, error) {
	list, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		LabelSelector: agentSelector,
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, err
	}
	var live []*corev1.Pod
	for i := range list.Items {
		if list.Items[i].DeletionTimestamp == nil {
			live = append(live, &list.Items[i])
		}
	}
	if len(live) != 1 {
		return nil, fmt.Errorf("%d podnet agent pods on %s", len(live), node)
	}
	return live[0], nil
}

// afterRestart is how long the pingers go on once the new agent is
// ready: its first reconcile is behind it, and so would any disruption
// it caused be.
const afterRestart = 2 * time.Second

// testAgentRestart deletes the podnet agent's pod on a node while pods
// on it and on another node ping each other; the DaemonSet starts a new
// one, which takes over without losing a packet.
func testAgentRestart(t *testing.T, ctx context.Context, c *cluster) {
	victim, peer := c.names[0], c.names[1]
	pa, pb, na, nb := c.crossPods(t, ctx, victim, peer)
	old, err := c.agentPod(ctx, victim)
	if err != nil {
		t.Fatal(err)
	}
	pingers := pingBoth(t, pa, pb, na, nb)
	start := time.Now()
	if err := c.client.CoreV1().Pods(old.Namespace).Delete(ctx, old.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var ready time.Duration
	err = poll(ctx, 90*time.Second, "a new podnet agent pod ready on "+victim, func(ctx context.Context) error {
		p, err := c.agentPod(ctx, victim)
		if err != nil {
			return err
		}
		if p.UID == old.UID {
			return fmt.Errorf("the old pod %s still runs", p.Name)
		}
		if cond := podCondition(p, corev1.PodReady); cond.Status != corev1.ConditionTrue {
			return fmt.Errorf("pod %s: Ready %q: %s", p.Name, cond.Status, podWhy(p))
		}
		ready = time.Since(start)
		return nil
	})
	if err != nil {
		checkPings(t, pingers)
		t.Fatal(err)
	}
	select {
	case <-ctx.Done():
	case <-time.After(afterRestart):
	}
	checkPings(t, pingers)
	t.Logf("agent pod %s deleted; its successor ready after %s", old.Name, ready.Round(time.Millisecond))
}

// podCondition returns the pod's condition of type typ.
func podCondition(p *corev1.Pod, typ corev1.PodConditionType) corev1.PodCondition {
	for _, c := range p.Status.Conditions {
		if c.Type == typ {
			return c
		}
	}
	return corev1.PodCondition{Type: typ}
}

// outage is how long the API server is stopped.
const outage = 30 * time.Second

// testAPIServerOutage stops the API server for outage: pods on two nodes
// keep talking meanwhile (ICMP and TCP), and a new pod sandbox on a
// node, which only the node's runtime can make while the API is down
// (kubelet learns of new pods from the API), gets an address of the
// node's podCIDR from the CNI ADD containerd runs, and gives it back on
// DEL. Afterwards every node and agent is ready again.
func testAPIServerOutage(t *testing.T, ctx context.Context, c *cluster) {
	a, b := c.names[0], c.names[1]
	pa, pb, na, nb := c.crossPods(t, ctx, a, b)
	node, err := c.client.CoreV1().Nodes().Get(ctx, a, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var podCIDRs []*net.IPNet
	for _, s := range node.Spec.PodCIDRs {
		_, cidr, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		podCIDRs = append(podCIDRs, cidr)
	}
	held, err := c.nodePodIPs(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	rt := c.cri(t, a)

	echo(t, nb, podPort)
	pingers := pingBoth(t, pa, pb, na, nb)
	tcp := startTCPProbe(na, net.JoinHostPort(pb.IPs[0], fmt.Sprint(podPort)))
	if err := c.cp.StopComponent(kube.ComponentAPIServer); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	t.Cleanup(func() {
		if err := c.cp.StartComponent(context.Background(), kube.ComponentAPIServer); err != nil {
			t.Error(err)
		}
	})
	if _, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{}); err == nil {
		t.Fatal("the API server answers while stopped")
	}

	ip, err := sandboxDuringOutage(ctx, c, rt, a)
	switch {
	case err != nil:
		t.Errorf("a pod sandbox on %s with the API server down: %v", a, err)
	case !within(ip, podCIDRs):
		t.Errorf("the sandbox made with the API server down got %s, not of %s's podCIDRs %v", ip, a, podCIDRs)
	case held[ip.String()]:
		t.Errorf("the sandbox made with the API server down got %s, which a pod of %s holds", ip, a)
	default:
		t.Logf("a sandbox made on %s %s into the outage got %s (of %v), and released it", a, time.Since(down).Round(time.Millisecond), ip, podCIDRs)
	}

	select {
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	case <-time.After(time.Until(down.Add(outage))):
	}
	stopped := time.Since(down)
	if err := c.cp.StartComponent(ctx, kube.ComponentAPIServer); err != nil {
		t.Fatal(err)
	}
	t.Logf("API server stopped for %s, then ready %s after its start", stopped.Round(time.Millisecond), (time.Since(down) - stopped).Round(time.Millisecond))
	checkPings(t, pingers)
	if s, err := tcp.stop(); err != nil {
		t.Error(err)
	} else {
		t.Log(s)
	}
	start := time.Now()
	err = poll(ctx, 2*time.Minute, "every node and podnet agent ready after the outage", func(ctx context.Context) error {
		return c.allReady(ctx)
	})
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("every node and agent ready %s after the API server's return", time.Since(start).Round(time.Millisecond))
	}
}

// sandboxDuringOutage runs a pod sandbox through the node's CRI, as
// kubelet would, and returns the IP it got; then it stops and removes the
// sandbox and checks that the IP's allocation is gone. (kubelet stops a
// sandbox it does not know of at its next housekeeping: the address is
// read at once.)
func sandboxDuringOutage(ctx context.Context, c *cluster, rt runtimeapi.RuntimeServiceClient, node string) (net.IP, error) {
	var b [16]byte
	_, _ = rand.Read(b[:])
	uid := hex.EncodeToString(b[:])
	r, err := rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: "outage", Namespace: testNamespace, Uid: uid},
		Hostname: "outage",
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			// Outside kubelet's kubepods tree, inside the node's root.
			CgroupParent: path.Join(c.kn[node].CgroupRoot(), "podnet-test"),
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: &runtimeapi.NamespaceOption{
				Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD,
			}},
		},
	}})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox: %w", err)
	}
	id := r.PodSandboxId
	st, err := rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id})
	ip := net.ParseIP(st.GetStatus().GetNetwork().GetIp())
	if err == nil && ip == nil {
		err = fmt.Errorf("sandbox %s is %v with no IP", id, st.GetStatus().GetState())
	}
	_, serr := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: id})
	_, rerr := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: id})
	if err := errors.Join(err, serr, rerr); err != nil {
		return nil, err
	}
	allocs, err := sandbox.Allocations(c.ipamDir(node), id)
	if err != nil {
		return nil, err
	}
	for _, a := range allocs {
		if strings.Contains(a.Data, id) {
			return nil, fmt.Errorf("sandbox %s (%s) removed, its IPAM allocation %s remains", id, ip, a.Path)
		}
	}
	return ip, nil
}

// allReady tells whether every Node in the API is Ready and every podnet
// agent pod is ready.
func (c *cluster) allReady(ctx context.Context) error {
	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err
	}
	var not []string
	for i := range nodes.Items {
		if r, _ := nodeCondition(&nodes.Items[i], corev1.NodeReady); r.Status != corev1.ConditionTrue {
			not = append(not, fmt.Sprintf("node %s: Ready %q (%s)", nodes.Items[i].Name, r.Status, r.Message))
		}
	}
	agents, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: agentSelector})
	if err != nil {
		return err
	}
	for i := range agents.Items {
		p := &agents.Items[i]
		if cond := podCondition(p, corev1.PodReady); cond.Status != corev1.ConditionTrue {
			not = append(not, fmt.Sprintf("agent %s on %s: Ready %q (%s)", p.Name, p.Spec.NodeName, cond.Status, podWhy(p)))
		}
	}
	if len(not) > 0 {
		return errors.New(strings.Join(not, "; "))
	}
	return nil
}

// tcpProbe connects from a namespace to an echo server every
// tcpProbeInterval and counts the round trips that fail.
type tcpProbe struct {
	stopCh chan struct{}
	done   sync.WaitGroup
	what   string

	mu     sync.Mutex
	tries  int
	failed []string
}

const tcpProbeInterval = 250 * time.Millisecond

func startTCPProbe(ns *netns.NS, addr string) *tcpProbe {
	p := &tcpProbe{stopCh: make(chan struct{}), what: "TCP round trips to " + addr}
	p.done.Add(1)
	go func() {
		defer p.done.Done()
		tick := time.NewTicker(tcpProbeInterval)
		defer tick.Stop()
		for {
			got, err := sandbox.RoundTrip(ns, addr, "podnet")
			if err == nil && got != "podnet" {
				err = fmt.Errorf("got %q back", got)
			}
			p.mu.Lock()
			p.tries++
			if err != nil {
				p.failed = append(p.failed, time.Now().Format("15:04:05.000")+" "+err.Error())
			}
			p.mu.Unlock()
			select {
			case <-p.stopCh:
				return
			case <-tick.C:
			}
		}
	}()
	return p
}

// stop ends the probe: an error names the failed round trips.
func (p *tcpProbe) stop() (string, error) {
	close(p.stopCh)
	p.done.Wait()
	s := fmt.Sprintf("%s: %d, %d failed", p.what, p.tries, len(p.failed))
	if len(p.failed) > 0 {
		return s, fmt.Errorf("%s: %d of %d failed: %s", p.what, len(p.failed), p.tries, strings.Join(first(p.failed, 5), "; "))
	}
	return s, nil
}

// resync is the agents' full reconcile period (podnet-agent --resync's
// default, which deploy/podnet.yaml keeps).
const resync = 30 * time.Second

// testNodeDeleted deletes a Node from the API (kubectl delete node): every
// other node drops its routes to the node's podCIDR within the resync
// period.
func testNodeDeleted(t *testing.T, ctx context.Context, c *cluster) {
	victim := c.names[len(c.names)-1]
	node, err := c.client.CoreV1().Nodes().Get(ctx, victim, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var cidrs []*net.IPNet
	for _, s := range node.Spec.PodCIDRs {
		_, cidr, err := net.ParseCIDR(s)
		if err != nil {
			t.Fatal(err)
		}
		cidrs = append(cidrs, cidr)
	}
	others := c.names[:len(c.names)-1]
	routesTo := func() ([]string, error) {
		var found []string
		for _, n := range others {
			for _, cidr := range cidrs {
				routes, err := c.lab.RoutesTo(n, cidr)
				if err != nil {
					return nil, err
				}
				for _, r := range routes {
					found = append(found, n+": "+r.String())
				}
			}
		}
		return found, nil
	}
	if before, err := routesTo(); err != nil || len(before) < len(others) {
		t.Fatalf("before the deletion, routes to %s's podCIDRs %v: %v (%v)", victim, node.Spec.PodCIDRs, before, err)
	}
	if err := c.client.CoreV1().Nodes().Delete(ctx, victim, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	err = poll(ctx, resync, fmt.Sprintf("routes to %s's podCIDRs %v gone from %v", victim, node.Spec.PodCIDRs, others), func(context.Context) error {
		left, err := routesTo()
		if err == nil && len(left) > 0 {
			err = fmt.Errorf("routes left: %s", strings.Join(left, "; "))
		}
		return err
	})
	if err != nil {
		t.Error(err)
	} else {
		t.Logf("node %s deleted: routes to %v gone from %v after %s", victim, node.Spec.PodCIDRs, others, time.Since(start).Round(time.Millisecond))
	}
}
