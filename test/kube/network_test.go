package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/plugins/bandwidth"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// testNodes: every node is Ready, the lab's Deployment spreads its pods
// evenly over the nodes, and every pod reaches every pod (ICMP and TCP,
// the receiver seeing the sender's pod IP) and the outside, masqueraded
// as its node.
func testNodes(t *testing.T, ctx context.Context, c *cluster) {
	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != nodeCount {
		t.Errorf("%d Nodes in the API, want %d", len(nodes.Items), nodeCount)
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		if r, _ := nodeCondition(n, corev1.NodeReady); r.Status != corev1.ConditionTrue {
			t.Errorf("node %s: Ready is %q (%s: %s)", n.Name, r.Status, r.Reason, r.Message)
		}
	}
	pods, err := c.lab.KubePods(ctx, lab.PodsNamespace, lab.PodsSelector)
	if err != nil {
		t.Fatal(err)
	}
	perNode := map[string]int{}
	for _, p := range pods {
		perNode[p.Node]++
	}
	if len(pods) != nodeCount*podsPerNode {
		t.Errorf("%d running pods of the lab's Deployment, want %d", len(pods), nodeCount*podsPerNode)
	}
	for _, n := range c.names {
		if perNode[n] != podsPerNode {
			t.Errorf("the Deployment's pods per node: %v, want %d on each of %v", perNode, podsPerNode, c.names)
			break
		}
	}
	r, err := c.lab.CheckPods(ctx, pods)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	r.Print(&b)
	if r.Failures() > 0 {
		t.Errorf("connectivity matrix over the Deployment's pods:\n%s", b.String())
	} else {
		t.Logf("connectivity matrix over the Deployment's pods:\n%s", b.String())
	}
}

// testPodCIDRs: each Node has one podCIDR of each of the lab's families
// (kube-controller-manager's), podnet's annotations (both underlay
// addresses) and NetworkUnavailable=False set by podnet; every pod has an
// IP of each family, each of its node's podCIDRs, and no two pods share
// one; every node routes to every other node's podCIDRs.
func testPodCIDRs(t *testing.T, ctx context.Context, c *cluster) {
	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cidrs := map[string][]*net.IPNet{}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		for _, s := range n.Spec.PodCIDRs {
			_, cidr, err := net.ParseCIDR(s)
			if err != nil {
				t.Errorf("node %s: podCIDR %q: %v", n.Name, s, err)
				continue
			}
			cidrs[n.Name] = append(cidrs[n.Name], cidr)
		}
		if len(cidrs[n.Name]) != len(c.families()) || !sameFamilies(cidrs[n.Name], c.families()) {
			t.Errorf("node %s: podCIDRs %v, want one of each of %v", n.Name, n.Spec.PodCIDRs, c.families())
		}
		cond, ok := nodeCondition(n, corev1.NodeNetworkUnavailable)
		if !ok || cond.Status != corev1.ConditionFalse || cond.Reason != kubeapi.ReasonUp {
			t.Errorf("node %s: NetworkUnavailable %q reason %q (present: %v), want %q reason %q", n.Name, cond.Status, cond.Reason, ok, corev1.ConditionFalse, kubeapi.ReasonUp)
		}
		for _, a := range []struct{ key, want string }{{kubeapi.AnnotationNodeIP, c.nodes[n.Name].IP}, {kubeapi.AnnotationNodeIP6, c.nodes[n.Name].IP6}} {
			if ip := n.Annotations[a.key]; ip != a.want {
				t.Errorf("node %s: annotation %s = %q, want its underlay address %q", n.Name, a.key, ip, a.want)
			}
		}
		if mac, ok := n.Annotations[kubeapi.AnnotationVTEPMAC]; ok {
			if _, err := net.ParseMAC(mac); err != nil {
				t.Errorf("node %s: annotation %s = %q: %v", n.Name, kubeapi.AnnotationVTEPMAC, mac, err)
			}
		}
		t.Logf("node %s: podCIDRs %v, NetworkUnavailable %s (%s), annotations %s=%s %s=%s %s=%s", n.Name, n.Spec.PodCIDRs, cond.Status, cond.Reason,
			kubeapi.AnnotationNodeIP, n.Annotations[kubeapi.AnnotationNodeIP], kubeapi.AnnotationNodeIP6, n.Annotations[kubeapi.AnnotationNodeIP6],
			kubeapi.AnnotationVTEPMAC, n.Annotations[kubeapi.AnnotationVTEPMAC])
	}
	for _, from := range c.names {
		for _, to := range c.names {
			if from == to {
				continue
			}
			for _, cidr := range cidrs[to] {
				if routes, err := c.lab.RoutesTo(from, cidr); err != nil || len(routes) == 0 {
					t.Errorf("node %s has no route to %s's podCIDR %s (%v)", from, to, cidr, err)
				}
			}
		}
	}
	pods, err := c.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	owner := map[string]string{}
	checked := 0
	for _, p := range pods.Items {
		if p.Spec.HostNetwork || p.Status.Phase != corev1.PodRunning {
			continue
		}
		var ips []*net.IPNet
		for _, pip := range p.Status.PodIPs {
			ips = append(ips, &net.IPNet{IP: net.ParseIP(pip.IP)})
		}
		if !sameFamilies(ips, c.families()) {
			t.Errorf("pod %s/%s on %s: IPs %v, want one of each of %v", p.Namespace, p.Name, p.Spec.NodeName, p.Status.PodIPs, c.families())
		}
		for _, pip := range p.Status.PodIPs {
			checked++
			ip := net.ParseIP(pip.IP)
			if !within(ip, cidrs[p.Spec.NodeName]) {
				t.Errorf("pod %s/%s on %s: IP %s is not of the node's podCIDRs %v", p.Namespace, p.Name, p.Spec.NodeName, pip.IP, cidrs[p.Spec.NodeName])
			}
			if o, dup := owner[pip.IP]; dup {
				t.Errorf("pods %s and %s/%s share IP %s", o, p.Namespace, p.Name, pip.IP)
			}
			owner[pip.IP] = p.Namespace + "/" + p.Name
		}
	}
	if checked == 0 {
		t.Error("no running pod on the pod network")
	}
}

// families are the lab's address families, IPv4 first (the primary).
func (c *cluster) families() []string {
	if c.lab.Spec.IPv6 {
		return []string{"IPv4", "IPv6"}
	}
	return []string{"IPv4"}
}

// sameFamilies tells whether nets are one of each of families, in order.
func sameFamilies(nets []*net.IPNet, families []string) bool {
	if len(nets) != len(families) {
		return false
	}
	for i, n := range nets {
		if (n.IP.To4() != nil) != (families[i] == "IPv4") {
			return false
		}
	}
	return true
}

// within tells whether ip is of one of cidrs.
func within(ip net.IP, cidrs []*net.IPNet) bool {
	for _, c := range cidrs {
		if c.Contains(ip) {
			return true
		}
	}
	return false
}

// Ports of the tests' servers.
const (
	podPort  = 8080
	hostPort = 18080
)

// testHostPort: a pod's hostPort, which kubelet hands containerd and
// containerd the plugin (the portMappings capability), forwards the
// node's address to the pod, from another node; the forwarding rule is
// the pod's, in podnet's nftables table.
func testHostPort(t *testing.T, ctx context.Context, c *cluster) {
	on, from := c.names[0], c.names[1]
	pods := c.runPods(t, ctx, podSpec{name: "web", node: on, step: "hostport", ports: []corev1.ContainerPort{{
		ContainerPort: podPort, HostPort: hostPort, Protocol: corev1.ProtocolTCP,
	}}})
	web := pods["web"]
	echo(t, c.podNS(t, ctx, web), podPort)
	addr := net.JoinHostPort(c.nodeIP(on).String(), fmt.Sprint(hostPort))
	if err := roundTrip(ctx, c.nodeNS(from), addr, 30*time.Second); err != nil {
		t.Errorf("hostPort from node %s: %v", from, err)
	}
	id, err := c.sandboxID(ctx, c.cri(t, on), web)
	if err != nil {
		t.Fatal(err)
	}
	rules, err := sandbox.PodnetRules(c.nodeNS(on))
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rules {
		found = found || strings.HasPrefix(r.Chain, "portmap") && strings.Contains(r.Comment, "/"+id+"/")
	}
	if !found {
		t.Errorf("no portmap rule of sandbox %s in podnet's tables on %s: %v", id, on, rules)
	}
}

// echo serves sandbox.Echo on port inside ns until the test ends.
func echo(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	l, err := sandbox.Listen(ns, fmt.Sprintf(":%d", port))
	if err != nil {
		t.Fatalf("listen on %d: %v", port, err)
	}
	t.Cleanup(func() { l.Close() })
	go sandbox.Echo(l)
}

// roundTrip polls until a line sent from ns to addr comes back, for up to
// timeout.
func roundTrip(ctx context.Context, ns *netns.NS, addr string, timeout time.Duration) error {
	return poll(ctx, timeout, "echo from "+addr, func(context.Context) error {
		const msg = "podnet"
		got, err := sandbox.RoundTrip(ns, addr, msg)
		if err == nil && got != msg {
			err = fmt.Errorf("got %q back, want %q", got, msg)
		}
		return err
	})
}

// The bandwidth test: the annotation's rate, and what is sent.
const (
	ingressRate  = 8_000_000 // bit/s: "8M"
	transferSize = 2 << 20
	// minShare is the least share of size/rate the transfer must take.
	minShare = 0.8
)

// testBandwidth: a pod annotated kubernetes.io/ingress-bandwidth gets a
// tbf of that rate, with the default burst, on its veth's host end, and
// a transfer into it takes at least minShare of size/rate: the limit
// holds from the first bytes.
func testBandwidth(t *testing.T, ctx context.Context, c *cluster) {
	on, from := c.names[0], c.names[1]
	pods := c.runPods(t, ctx,
		podSpec{name: "shaped", node: on, step: "bandwidth", annotations: map[string]string{"kubernetes.io/ingress-bandwidth": "8M"}},
		podSpec{name: "sender", node: from, step: "bandwidth"},
	)
	shaped, sender := pods["shaped"], pods["sender"]
	l, err := c.hostLink(on, podIP(shaped))
	if err != nil {
		t.Fatal(err)
	}
	qs, err := c.qdiscs(on, l)
	if err != nil {
		t.Fatal(err)
	}
	var tbf *netlink.Tbf
	for _, q := range qs {
		if q, ok := q.(*netlink.Tbf); ok {
			tbf = q
		}
	}
	if tbf == nil {
		t.Errorf("no tbf on %s's host link %s: %v", shaped.Name, l.Attrs().Name, qs)
	} else {
		burst, want := netlink.Xmitsize(tbf.Rate, tbf.Buffer), bandwidth.DefaultBurst(ingressRate/8)
		if tbf.Rate != ingressRate/8 {
			t.Errorf("tbf on %s: rate %d B/s, want %d", l.Attrs().Name, tbf.Rate, ingressRate/8)
		}
		if math.Abs(float64(burst)-float64(want)) > 0.02*float64(want) {
			t.Errorf("tbf on %s: burst %d bytes, want the default %d", l.Attrs().Name, burst, want)
		}
		t.Logf("tbf on %s (host end of %s): rate %d B/s, burst %d bytes, limit %d bytes", l.Attrs().Name, shaped.Name, tbf.Rate, burst, tbf.Limit)
	}

	took, err := transfer(ctx, c.podNS(t, ctx, sender), c.podNS(t, ctx, shaped), podIP(shaped), transferSize)
	if err != nil {
		t.Fatal(err)
	}
	ideal := time.Duration(float64(transferSize) / (ingressRate / 8) * float64(time.Second))
	min := time.Duration(minShare * float64(ideal))
	t.Logf("%d bytes into %s in %s (%.2f Mbit/s; at 8 Mbit/s %s)", transferSize, shaped.Name, took.Round(time.Millisecond),
		float64(transferSize)*8/took.Seconds()/1e6, ideal.Round(time.Millisecond))
	if took < min {
		t.Errorf("%d bytes into a pod limited to 8 Mbit/s took %s, want at least %s (%.0f%% of %s): the limit does not hold from the first bytes",
			transferSize, took.Round(time.Millisecond), min.Round(time.Millisecond), minShare*100, ideal.Round(time.Millisecond))
	}
}

// transfer sends size bytes over TCP from one namespace to a listener in
// another, at ip, and returns how long the receiver took from the
// connection to the last byte.
func transfer(ctx context.Context, from, to *netns.NS, ip net.IP, size int) (time.Duration, error) {
	const port = 5001
	l, err := sandbox.Listen(to, fmt.Sprintf(":%d", port))
	if err != nil {
		return 0, err
	}
	defer l.Close()
	type result struct {
		n   int64
		d   time.Duration
		err error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer conn.Close()
		start := time.Now()
		n, err := io.Copy(io.Discard, conn)
		done <- result{n, time.Since(start), err}
	}()
	conn, err := sandbox.Dial(from, net.JoinHostPort(ip.String(), fmt.Sprint(port)), 3*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := conn.Write(make([]byte, size)); err != nil {
		return 0, fmt.Errorf("send: %w", err)
	}
	if err := conn.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	select {
	case r := <-done:
		if r.err == nil && r.n != int64(size) {
			r.err = fmt.Errorf("received %d bytes, sent %d", r.n, size)
		}
		return r.d, r.err
	case <-ctx.Done():
		return 0, errors.Join(errors.New("the receiver did not finish"), ctx.Err())
	}
}

// testServices: the nodes' service proxy (the lab's kube-proxy, or
// podnet's) serves Services over podnet: a pod reaches a ClusterIP whose
// backend is on another node, a node reaches the NodePort of a third, and
// a pod reaches the kubernetes Service (the API server).
func testServices(t *testing.T, ctx context.Context, c *cluster) {
	client, backend, third := c.names[0], c.names[1], c.names[2]
	sel := map[string]string{"app": "echo"}
	pods := c.runPods(t, ctx,
		podSpec{name: "echo", node: backend, step: "services", labels: sel},
		podSpec{name: "client", node: client, step: "services"},
	)
	echo(t, c.podNS(t, ctx, pods["echo"]), podPort)
	svc, err := c.client.CoreV1().Services(testNamespace).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "echo"},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: sel,
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(podPort), Protocol: corev1.ProtocolTCP}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.client.CoreV1().Services(testNamespace).Delete(context.Background(), svc.Name, metav1.DeleteOptions{}); err != nil {
			t.Error(err)
		}
	})
	clientNS := c.podNS(t, ctx, pods["client"])
	clusterIP := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	if err := roundTrip(ctx, clientNS, clusterIP, time.Minute); err != nil {
		t.Errorf("pod on %s → ClusterIP %s (backend on %s): %v", client, clusterIP, backend, err)
	}
	nodePort := net.JoinHostPort(c.nodeIP(client).String(), fmt.Sprint(svc.Spec.Ports[0].NodePort))
	if err := roundTrip(ctx, c.nodeNS(third), nodePort, time.Minute); err != nil {
		t.Errorf("node %s → NodePort %s (backend on %s): %v", third, nodePort, backend, err)
	}
	api, err := c.client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	apiAddr := net.JoinHostPort(api.Spec.ClusterIP, fmt.Sprint(api.Spec.Ports[0].Port))
	err = poll(ctx, time.Minute, "connect to "+apiAddr, func(context.Context) error {
		conn, err := sandbox.Dial(clientNS, apiAddr, 3*time.Second)
		if err == nil {
			conn.Close()
		}
		return err
	})
	if err != nil {
		t.Errorf("pod on %s → the kubernetes Service %s: %v", client, apiAddr, err)
	}
}

// apiProxyPort is where testAPIServerToPods serves HTTP in the pods.
const apiProxyPort = 8089

// testAPIServerToPods: the API server reaches a pod on every node (the
// pods/proxy subresource, as `kubectl get --raw
// /api/v1/namespaces/NS/pods/POD:PORT/proxy/`), the pod seeing the
// control plane's own address: the lab routes every node's podCIDR from
// the control plane, and the replies come back unmasqueraded.
func testAPIServerToPods(t *testing.T, ctx context.Context, c *cluster) {
	pods, err := c.client.CoreV1().Pods(lab.PodsNamespace).List(ctx, metav1.ListOptions{LabelSelector: lab.PodsSelector})
	if err != nil {
		t.Fatal(err)
	}
	done := map[string]bool{}
	for i := range pods.Items {
		p := &pods.Items[i]
		if done[p.Spec.NodeName] || p.Status.Phase != corev1.PodRunning {
			continue
		}
		done[p.Spec.NodeName] = true
		serveSource(t, c.podNS(t, ctx, p), apiProxyPort)
		var body []byte
		err := poll(ctx, 30*time.Second, "the API server's proxy to pod "+p.Name, func(ctx context.Context) error {
			b, err := c.client.CoreV1().Pods(p.Namespace).ProxyGet("http", p.Name, fmt.Sprint(apiProxyPort), "/", nil).DoRaw(ctx)
			body = b
			return err
		})
		if err != nil {
			t.Errorf("node %s: %v", p.Spec.NodeName, err)
			continue
		}
		if got, want := strings.TrimSpace(string(body)), c.lab.Kube.IP; got != want {
			t.Errorf("node %s: pod %s saw the API server's request from %q, want the control plane's address %s", p.Spec.NodeName, p.Name, got, want)
		}
	}
	if len(done) != nodeCount {
		t.Errorf("running pods of the lab's Deployment on %d nodes, want %d", len(done), nodeCount)
	}
}

// serveSource answers HTTP requests to port inside ns with the client's
// address, until the test ends.
func serveSource(t *testing.T, ns *netns.NS, port int) {
	t.Helper()
	ln := listenTCP(t, ns, port)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, _ := net.SplitHostPort(r.RemoteAddr)
			fmt.Fprintln(w, host)
		}),
		ReadHeaderTimeout: 5 * time.Second,
	}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { srv.Close() })
}
