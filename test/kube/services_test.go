package kube

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// The service proxy's checks. They hold of any proxy with kube-proxy's
// semantics (upstream kube-proxy, podnet's): everything is shown by real
// traffic from pods, nodes and the outside host, never by reading a
// proxy's rules.

// Where the backends serve: TCP and UDP on backendPort (and SCTP where
// the kernel has it), behind each Service's svcPort.
const (
	backendPort = 8080
	svcPort     = 80
)

// Addresses no namespace holds, routed from the outside network to a
// node (lab.RouteToNode): an externalIP and a LoadBalancer ingress IP.
var (
	externalIP = net.ParseIP("198.51.100.10").To4()
	lbIP       = net.ParseIP("198.51.100.11").To4()
	// rangedLBIP is the ingress IP of the Service with
	// loadBalancerSourceRanges.
	rangedLBIP = net.ParseIP("198.51.100.12").To4()
)

// Waits of the checks: for a proxy to program a change, and for one
// exchange with a backend.
const (
	programWait = time.Minute
	askTimeout  = 2 * time.Second
	// rejectWithin is how soon a connection to a Service without
	// endpoints must be refused (a black hole would take the dial's
	// whole timeout).
	rejectWithin = time.Second
)

// Labels of the backends: every backend has backendLabel; localLabel
// marks those an externalTrafficPolicy Local Service selects; nameLabel
// is each one's own name, for Services of one backend.
const (
	backendLabel = "podnet.dev/echo"
	localLabel   = "podnet.dev/echo-local"
	nameLabel    = "podnet.dev/echo-name"
)

// svcEnv is what the service checks share: a backend and a client pod on
// every node, the backends serving their name and the source address they
// saw, and the outside host.
type svcEnv struct {
	c *cluster
	// backends and clients by node name.
	backends, clients map[string]*corev1.Pod
	clientNS          map[string]*netns.NS
	backendNS         map[string]*netns.NS
	outside           *netns.NS
	// names are the backends' names, sorted.
	names []string
}

// testServiceProxy: the node's service proxy (whichever runs: upstream
// kube-proxy or podnet's) gives Services kube-proxy's semantics, through
// real traffic. Each subtest makes its own Services over the shared
// backends.
func testServiceProxy(t *testing.T, ctx context.Context, c *cluster) {
	e := newSvcEnv(t, ctx, c)
	for _, sub := range []struct {
		name string
		run  func(t *testing.T, ctx context.Context, e *svcEnv)
	}{
		{"ClusterIP", testClusterIP},
		{"NodePort", testNodePort},
		{"ExternalTrafficPolicyLocal", testExternalLocal},
		{"ExternalIP", testExternalIP},
		{"LoadBalancerIP", testLoadBalancerIP},
		{"LoadBalancerSourceRanges", testSourceRanges},
		{"InternalTrafficPolicyLocal", testInternalLocal},
		{"SessionAffinity", testSessionAffinity},
		{"ScaleToZero", testScaleToZero},
		{"TerminatingEndpoint", testTerminatingEndpoint},
		{"UDPEndpointChange", testUDPEndpointChange},
		{"Hairpin", testHairpin},
		{"FromNode", testFromNode},
		{"DualStack", testDualStack},
		{"SCTP", testSCTP},
	} {
		t.Run(sub.name, func(t *testing.T) { sub.run(t, ctx, e) })
	}
}

// newSvcEnv runs the backends and clients and serves in the backends.
func newSvcEnv(t *testing.T, ctx context.Context, c *cluster) *svcEnv {
	t.Helper()
	var specs []podSpec
	for i, n := range c.names {
		labels := map[string]string{backendLabel: "yes", nameLabel: "echo-" + n}
		// Every node but the last has a local endpoint of the Local
		// Services.
		if i < len(c.names)-1 {
			labels[localLabel] = "yes"
		}
		specs = append(specs,
			podSpec{name: "echo-" + n, node: n, step: "service-proxy", labels: labels},
			podSpec{name: "client-" + n, node: n, step: "service-proxy"})
	}
	pods := c.runPods(t, ctx, specs...)
	e := &svcEnv{c: c, backends: map[string]*corev1.Pod{}, clients: map[string]*corev1.Pod{},
		clientNS: map[string]*netns.NS{}, backendNS: map[string]*netns.NS{}}
	for _, n := range c.names {
		b := pods["echo-"+n]
		e.backends[n], e.clients[n] = b, pods["client-"+n]
		e.backendNS[n] = c.podNS(t, ctx, b)
		e.clientNS[n] = c.podNS(t, ctx, e.clients[n])
		serveName(t, e.backendNS[n], b.Name)
		e.names = append(e.names, b.Name)
	}
	sort.Strings(e.names)
	out, err := c.lab.OpenNetNS(ctx, lab.Outside)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { out.Close() })
	e.outside = out
	return e
}

// reply is a backend's answer: its name and the client address it saw.
type reply struct{ backend, source string }

func (r reply) String() string { return r.backend + " (saw " + r.source + ")" }

// parseReply reads "name source".
func parseReply(s string) (reply, error) {
	name, src, ok := strings.Cut(strings.TrimSpace(s), " ")
	if !ok {
		return reply{}, fmt.Errorf("answer %q: want \"name source\"", s)
	}
	return reply{name, src}, nil
}

// serveName answers every TCP connection and UDP datagram to backendPort
// inside ns with name and the source address seen, until the test ends.
func serveName(t *testing.T, ns *netns.NS, name string) {
	t.Helper()
	serveTCP(t, ns, name, backendPort, nil)
	serveUDP(t, ns, name, backendPort)
	if haveSCTP() {
		serveSCTP(t, ns, name)
	}
}

// serveTCP answers every TCP connection to port inside ns with name and
// the source address seen, until the test ends; seen, if not nil, is
// told each source address first.
func serveTCP(t *testing.T, ns *netns.NS, name string, port int, seen func(source string)) {
	t.Helper()
	ln := listenTCP(t, ns, port)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
			if seen != nil {
				seen(host)
			}
			fmt.Fprintf(conn, "%s %s\n", name, host)
			conn.Close()
		}
	}()
}

// listenTCP listens on TCP port inside ns, until the test ends.
func listenTCP(t *testing.T, ns *netns.NS, port int) net.Listener {
	t.Helper()
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("listen on TCP %d in %s: %v", port, ns.Path(), err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// serveUDP answers every UDP datagram to port inside ns with name and
// the source address seen, until the test ends.
func serveUDP(t *testing.T, ns *netns.NS, name string, port int) {
	t.Helper()
	var pc net.PacketConn
	err := ns.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp", fmt.Sprintf(":%d", port))
		return err
	})
	if err != nil {
		t.Fatalf("serve UDP %d in %s: %v", port, name, err)
	}
	t.Cleanup(func() { pc.Close() })
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			host, _, _ := net.SplitHostPort(from.String())
			_, _ = pc.WriteTo([]byte(name+" "+host), from)
		}
	}()
}

// ask makes one exchange from ns with the service at addr over proto
// (tcp or udp, a new socket each time; sctp) and returns the reply.
func ask(ctx context.Context, ns *netns.NS, proto, addr string) (reply, error) {
	if proto == "sctp" {
		return askSCTP(ns, addr)
	}
	ctx, cancel := context.WithTimeout(ctx, askTimeout)
	defer cancel()
	conn, err := ns.DialContext(ctx, nil, proto, addr)
	if err != nil {
		return reply{}, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if proto == "udp" {
		return exchangeUDP(conn)
	}
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return reply{}, fmt.Errorf("read from %s: %w", addr, err)
	}
	return parseReply(line)
}

// exchangeUDP sends a datagram on a connected socket and reads the reply.
func exchangeUDP(conn net.Conn) (reply, error) {
	if _, err := conn.Write([]byte("who")); err != nil {
		return reply{}, err
	}
	buf := make([]byte, 256)
	n, err := conn.Read(buf)
	if err != nil {
		return reply{}, fmt.Errorf("UDP reply from %s: %w", conn.RemoteAddr(), err)
	}
	return parseReply(string(buf[:n]))
}

// minExchanges is the least number of exchanges spread makes.
const minExchanges = 30

// spread asks addr from ns, over at least minExchanges new connections
// (or sockets), until every one of want has answered (and nothing else
// has), for up to programWait, and returns every reply.
func spread(ctx context.Context, ns *netns.NS, proto, addr string, want []string) ([]reply, error) {
	var replies []reply
	seen := map[string]bool{}
	err := poll(ctx, programWait, fmt.Sprintf("%s %s answered by each of %v", proto, addr, want), func(ctx context.Context) error {
		for range 10 {
			r, err := ask(ctx, ns, proto, addr)
			if err != nil {
				return err
			}
			if !slices.Contains(want, r.backend) {
				return fmt.Errorf("answered by %s, not one of %v", r, want)
			}
			replies = append(replies, r)
			seen[r.backend] = true
		}
		if len(seen) < len(want) || len(replies) < minExchanges {
			return fmt.Errorf("answered by %v in %d exchanges", keys(seen), len(replies))
		}
		return nil
	})
	return replies, err
}

// answered asks addr from ns until it answers, for up to programWait.
func answered(ctx context.Context, ns *netns.NS, proto, addr string) (reply, error) {
	var r reply
	err := poll(ctx, programWait, proto+" "+addr+" answered", func(ctx context.Context) error {
		var err error
		r, err = ask(ctx, ns, proto, addr)
		return err
	})
	return r, err
}

func keys(m map[string]bool) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// service is a Service of the checks over the backends matching
// selector, TCP and UDP on svcPort; change adapts it before it is made.
func service(name string, selector map[string]string, change func(*corev1.Service)) *corev1.Service {
	s := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: testNamespace},
		Spec: corev1.ServiceSpec{
			Selector: selector,
			Ports: []corev1.ServicePort{
				{Name: "tcp", Protocol: corev1.ProtocolTCP, Port: svcPort, TargetPort: intstr.FromInt32(backendPort)},
				{Name: "udp", Protocol: corev1.ProtocolUDP, Port: svcPort, TargetPort: intstr.FromInt32(backendPort)},
			},
		},
	}
	if change != nil {
		change(s)
	}
	return s
}

// allBackends selects every backend.
var allBackends = map[string]string{backendLabel: "yes"}

// createService makes the Service, deleted when t ends, and returns it as
// the API made it (ClusterIP, NodePorts).
func (e *svcEnv) createService(t *testing.T, ctx context.Context, s *corev1.Service) *corev1.Service {
	t.Helper()
	made, err := e.c.client.CoreV1().Services(testNamespace).Create(ctx, s, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("service %s: %v", s.Name, err)
	}
	t.Cleanup(func() {
		if err := e.c.client.CoreV1().Services(testNamespace).Delete(context.Background(), s.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete service %s: %v", s.Name, err)
		}
	})
	return made
}

// setSelector replaces a Service's selector (its endpoints follow).
func (e *svcEnv) setSelector(ctx context.Context, name string, selector map[string]string) error {
	patch, err := json.Marshal([]map[string]any{{"op": "replace", "path": "/spec/selector", "value": selector}})
	if err != nil {
		return err
	}
	_, err = e.c.client.CoreV1().Services(testNamespace).Patch(ctx, name, types.JSONPatchType, patch, metav1.PatchOptions{})
	if err != nil {
		return fmt.Errorf("selector of service %s: %w", name, err)
	}
	return nil
}

// clusterAddr is the Service's ClusterIP with svcPort.
func clusterAddr(s *corev1.Service) string {
	return net.JoinHostPort(s.Spec.ClusterIP, fmt.Sprint(svcPort))
}

// nodePort is the NodePort of the Service's port of proto.
func nodePort(s *corev1.Service, proto corev1.Protocol) int32 {
	for _, p := range s.Spec.Ports {
		if p.Protocol == proto {
			return p.NodePort
		}
	}
	return 0
}

// nodeAddr is the node's underlay address with port.
func (e *svcEnv) nodeAddr(node string, port int32) string {
	return net.JoinHostPort(e.c.nodeIP(node).String(), fmt.Sprint(port))
}

// testClusterIP: from a pod on every node, TCP and UDP to a ClusterIP
// reach every endpoint over many connections, and the backend sees the
// client pod's own address (no NAT inside the cluster).
func testClusterIP(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("all", allBackends, nil))
	for _, n := range e.c.names {
		for _, proto := range []string{"tcp", "udp"} {
			replies, err := spread(ctx, e.clientNS[n], proto, clusterAddr(s), e.names)
			if err != nil {
				t.Errorf("pod on %s → ClusterIP %s: %v", n, proto, err)
				continue
			}
			want := podIP(e.clients[n]).String()
			for _, r := range replies {
				if r.source != want {
					t.Errorf("pod on %s → ClusterIP %s: %s saw %s, want the client pod's %s", n, proto, r.backend, r.source, want)
					break
				}
			}
			t.Logf("pod on %s → ClusterIP %s %s: %d exchanges over %v", n, proto, clusterAddr(s), len(replies), e.names)
		}
	}
}

// testNodePort: the outside host reaches a NodePort (TCP and UDP) on
// every node's address, and through each node every endpoint.
func testNodePort(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("nodeport", allBackends, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }))
	for _, n := range e.c.names {
		for _, proto := range []corev1.Protocol{corev1.ProtocolTCP, corev1.ProtocolUDP} {
			addr := e.nodeAddr(n, nodePort(s, proto))
			if _, err := spread(ctx, e.outside, strings.ToLower(string(proto)), addr, e.names); err != nil {
				t.Errorf("outside → NodePort %s %s of %s: %v", proto, addr, n, err)
			}
		}
	}
}

// testExternalLocal: with externalTrafficPolicy Local, a NodePort answers
// only on the nodes with a local endpoint, from that endpoint, which sees
// the outside host's own address; the healthCheckNodePort says 200 and
// the local endpoint count there, 503 and none elsewhere. The Service is
// a LoadBalancer (without an ingress IP: its NodePorts are what a load
// balancer would send to), the type the API gives a healthCheckNodePort.
func testExternalLocal(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("local", map[string]string{localLabel: "yes"}, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	}))
	if s.Spec.HealthCheckNodePort == 0 {
		t.Fatal("the API gave the Local Service no healthCheckNodePort")
	}
	var without []string
	for _, n := range e.c.names {
		b := e.backends[n]
		if b.Labels[localLabel] == "" {
			without = append(without, n)
			continue
		}
		addr := e.nodeAddr(n, nodePort(s, corev1.ProtocolTCP))
		replies, err := spread(ctx, e.outside, "tcp", addr, []string{b.Name})
		if err != nil {
			t.Errorf("outside → Local NodePort %s on %s: %v (want only its local endpoint %s)", addr, n, err, b.Name)
			continue
		}
		if src := replies[0].source; src != lab.OutsideIP.String() {
			t.Errorf("outside → Local NodePort %s on %s: %s saw %s, want the client's own %s", addr, n, b.Name, src, lab.OutsideIP)
		}
	}
	for _, n := range without {
		addr := e.nodeAddr(n, nodePort(s, corev1.ProtocolTCP))
		for range 3 {
			if r, err := ask(ctx, e.outside, "tcp", addr); err == nil {
				t.Errorf("outside → Local NodePort %s on %s, a node without a local endpoint: answered by %s", addr, n, r)
				break
			}
		}
	}
	for _, n := range e.c.names {
		wantCode, wantLocal := http.StatusOK, 1
		if slices.Contains(without, n) {
			wantCode, wantLocal = http.StatusServiceUnavailable, 0
		}
		url := "http://" + e.nodeAddr(n, s.Spec.HealthCheckNodePort) + "/"
		err := poll(ctx, programWait, "health check "+url, func(ctx context.Context) error {
			code, local, err := healthCheck(ctx, e.outside, url)
			if err == nil && (code != wantCode || local != wantLocal) {
				err = fmt.Errorf("%d with %d local endpoints, want %d with %d", code, local, wantCode, wantLocal)
			}
			return err
		})
		if err != nil {
			t.Errorf("node %s: %v", n, err)
		}
	}
}

// healthCheck gets url from ns and returns the status and the local
// endpoint count of the answer (kube-proxy's health check body).
func healthCheck(ctx context.Context, ns *netns.NS, url string) (int, int, error) {
	client := &http.Client{
		Timeout: askTimeout,
		Transport: &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, nil, network, addr)
		}},
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, 0, err
	}
	var body struct {
		LocalEndpoints int `json:"localEndpoints"`
	}
	if err := json.Unmarshal(b, &body); err != nil {
		return 0, 0, fmt.Errorf("body %q: %w", b, err)
	}
	return resp.StatusCode, body.LocalEndpoints, nil
}

// routeToNode routes dst from the outside network to the node until t
// ends.
func (e *svcEnv) routeToNode(t *testing.T, ip net.IP, node string) {
	t.Helper()
	dst := &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}
	if err := e.c.lab.RouteToNode(dst, node); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := e.c.lab.UnrouteToNode(dst, node); err != nil {
			t.Error(err)
		}
	})
}

// testExternalIP: a Service's externalIP, routed from the outside network
// to a node, reaches every endpoint (TCP and UDP).
func testExternalIP(t *testing.T, ctx context.Context, e *svcEnv) {
	e.createService(t, ctx, service("external", allBackends, func(s *corev1.Service) { s.Spec.ExternalIPs = []string{externalIP.String()} }))
	e.routeToNode(t, externalIP, e.c.names[1])
	addr := net.JoinHostPort(externalIP.String(), fmt.Sprint(svcPort))
	for _, proto := range []string{"tcp", "udp"} {
		if _, err := spread(ctx, e.outside, proto, addr, e.names); err != nil {
			t.Errorf("outside → externalIP %s %s via %s: %v", proto, addr, e.c.names[1], err)
		}
	}
}

// testLoadBalancerIP: a LoadBalancer Service's ingress IP (written to
// its status, as a load balancer controller would), routed from the
// outside network to a node, reaches every endpoint.
func testLoadBalancerIP(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("lb", allBackends, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeLoadBalancer }))
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: lbIP.String()}}
	if _, err := e.c.client.CoreV1().Services(testNamespace).UpdateStatus(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("status of service %s: %v", s.Name, err)
	}
	node := e.c.names[2]
	e.routeToNode(t, lbIP, node)
	addr := net.JoinHostPort(lbIP.String(), fmt.Sprint(svcPort))
	for _, proto := range []string{"tcp", "udp"} {
		if _, err := spread(ctx, e.outside, proto, addr, e.names); err != nil {
			t.Errorf("outside → LoadBalancer IP %s %s via %s: %v", proto, addr, node, err)
		}
	}
}

// testSourceRanges: a LoadBalancer Service with loadBalancerSourceRanges
// serves its ingress IP to a source inside the ranges (a client pod) and
// drops the others (the outside host: no answer and no refusal), until
// the ranges take the outside host in too.
func testSourceRanges(t *testing.T, ctx context.Context, e *svcEnv) {
	client := e.c.names[0]
	s := e.createService(t, ctx, service("ranges", allBackends, func(s *corev1.Service) {
		s.Spec.Type = corev1.ServiceTypeLoadBalancer
		s.Spec.LoadBalancerSourceRanges = []string{e.clients[client].Status.PodIP + "/32"}
	}))
	s.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: rangedLBIP.String()}}
	s, err := e.c.client.CoreV1().Services(testNamespace).UpdateStatus(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		t.Fatalf("status of service ranges: %v", err)
	}
	e.routeToNode(t, rangedLBIP, e.c.names[2])
	addr := net.JoinHostPort(rangedLBIP.String(), fmt.Sprint(svcPort))
	if _, err := spread(ctx, e.clientNS[client], "tcp", addr, e.names); err != nil {
		t.Fatalf("client inside the ranges → %s: %v", addr, err)
	}
	r, err := ask(ctx, e.outside, "tcp", addr)
	var ne net.Error
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Errorf("outside the ranges → %s: %v %v, want dropped (a timeout)", addr, r, err)
	}
	s.Spec.LoadBalancerSourceRanges = append(s.Spec.LoadBalancerSourceRanges, lab.OutsideIP.String()+"/32")
	if _, err := e.c.client.CoreV1().Services(testNamespace).Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := answered(ctx, e.outside, "tcp", addr); err != nil {
		t.Errorf("outside, once in the ranges → %s: %v", addr, err)
	}
}

// testInternalLocal: with internalTrafficPolicy Local a client reaches
// only its own node's endpoint through the ClusterIP; on the node without
// a local endpoint the traffic is dropped (no answer), not refused.
func testInternalLocal(t *testing.T, ctx context.Context, e *svcEnv) {
	local := corev1.ServiceInternalTrafficPolicyLocal
	s := e.createService(t, ctx, service("itp-local", map[string]string{localLabel: "yes"}, func(s *corev1.Service) {
		s.Spec.InternalTrafficPolicy = &local
	}))
	addr := clusterAddr(s)
	var without []string
	for _, n := range e.c.names {
		b := e.backends[n]
		if b.Labels[localLabel] == "" {
			without = append(without, n)
			continue
		}
		if _, err := spread(ctx, e.clientNS[n], "tcp", addr, []string{b.Name}); err != nil {
			t.Errorf("client on %s → %s: %v (want only its local endpoint %s)", n, addr, err, b.Name)
		}
	}
	for _, n := range without {
		r, err := ask(ctx, e.clientNS[n], "tcp", addr)
		var ne net.Error
		if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
			t.Errorf("client on %s, a node without a local endpoint → %s: %v %v, want dropped (a timeout)", n, addr, r, err)
		}
	}
}

// testSessionAffinity: with sessionAffinity ClientIP every connection of
// a client goes to one endpoint.
func testSessionAffinity(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("affinity", allBackends, func(s *corev1.Service) { s.Spec.SessionAffinity = corev1.ServiceAffinityClientIP }))
	for _, n := range e.c.names {
		first, err := answered(ctx, e.clientNS[n], "tcp", clusterAddr(s))
		if err != nil {
			t.Fatalf("pod on %s → ClusterIP with affinity: %v", n, err)
		}
		got := map[string]bool{first.backend: true}
		for range 30 {
			r, err := ask(ctx, e.clientNS[n], "tcp", clusterAddr(s))
			if err != nil {
				t.Fatalf("pod on %s → ClusterIP with affinity: %v", n, err)
			}
			got[r.backend] = true
		}
		if len(got) != 1 {
			t.Errorf("pod on %s → ClusterIP with ClientIP affinity: 31 connections answered by %v, want one backend", n, keys(got))
		}
	}
}

// testScaleToZero: a Service's endpoints go 3 → 0 → 3: with none, a
// connection to its ClusterIP is refused at once (rejected, not black-
// holed), and a NodePort's too; then every endpoint answers again.
func testScaleToZero(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("scale", allBackends, func(s *corev1.Service) { s.Spec.Type = corev1.ServiceTypeNodePort }))
	from := e.clientNS[e.c.names[0]]
	if _, err := spread(ctx, from, "tcp", clusterAddr(s), e.names); err != nil {
		t.Fatalf("3 endpoints: %v", err)
	}
	if err := e.setSelector(ctx, s.Name, map[string]string{backendLabel: "none"}); err != nil {
		t.Fatal(err)
	}
	if err := e.waitEndpoints(ctx, s.Name, 0); err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct {
		what string
		ns   *netns.NS
		addr string
	}{
		{"pod → ClusterIP", from, clusterAddr(s)},
		{"outside → NodePort", e.outside, e.nodeAddr(e.c.names[1], nodePort(s, corev1.ProtocolTCP))},
	} {
		if err := refused(ctx, x.ns, x.addr); err != nil {
			t.Errorf("0 endpoints: %s %s: %v", x.what, x.addr, err)
		}
	}
	if err := e.setSelector(ctx, s.Name, allBackends); err != nil {
		t.Fatal(err)
	}
	if _, err := spread(ctx, from, "tcp", clusterAddr(s), e.names); err != nil {
		t.Errorf("back to 3 endpoints: %v", err)
	}
}

// refused polls until a TCP connection from ns to addr is refused within
// rejectWithin.
func refused(ctx context.Context, ns *netns.NS, addr string) error {
	return poll(ctx, programWait, "connection refused at once", func(ctx context.Context) error {
		start := time.Now()
		r, err := ask(ctx, ns, "tcp", addr)
		took := time.Since(start)
		switch {
		case err == nil:
			return fmt.Errorf("answered by %s", r)
		case !errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("not refused after %s: %w", took.Round(time.Millisecond), err)
		case took > rejectWithin:
			return fmt.Errorf("refused only after %s", took.Round(time.Millisecond))
		}
		return nil
	})
}

// waitEndpoints waits until the Service's EndpointSlices list want
// endpoints.
func (e *svcEnv) waitEndpoints(ctx context.Context, service string, want int) error {
	return poll(ctx, programWait, fmt.Sprintf("%d endpoints of %s", want, service), func(ctx context.Context) error {
		eps, err := e.endpoints(ctx, service)
		if err == nil && len(eps) != want {
			err = fmt.Errorf("%d endpoints", len(eps))
		}
		return err
	})
}

// endpoints lists the endpoints of the Service's EndpointSlices.
func (e *svcEnv) endpoints(ctx context.Context, service string) ([]discoveryv1.Endpoint, error) {
	list, err := e.c.client.DiscoveryV1().EndpointSlices(testNamespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		return nil, err
	}
	var eps []discoveryv1.Endpoint
	for _, s := range list.Items {
		eps = append(eps, s.Endpoints...)
	}
	return eps, nil
}

// testTerminatingEndpoint: a Service's last endpoint, terminating (its
// pod deleted, still in its grace period), still serves: the proxy falls
// back to serving terminating endpoints when none is ready.
func testTerminatingEndpoint(t *testing.T, ctx context.Context, e *svcEnv) {
	node := e.c.names[1]
	sel := map[string]string{"podnet.dev/echo-terminating": "yes"}
	pods := e.c.runPods(t, ctx, podSpec{name: "lingering", node: node, step: "service-proxy", labels: sel, lingering: true})
	p := pods["lingering"]
	t.Cleanup(func() {
		zero := int64(0)
		_ = e.c.client.CoreV1().Pods(testNamespace).Delete(context.Background(), p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero})
	})
	serveName(t, e.c.podNS(t, ctx, p), p.Name)
	s := e.createService(t, ctx, service("terminating", sel, nil))
	from := e.clientNS[e.c.names[0]]
	if _, err := spread(ctx, from, "tcp", clusterAddr(s), []string{p.Name}); err != nil {
		t.Fatalf("before the delete: %v", err)
	}
	if err := e.c.client.CoreV1().Pods(testNamespace).Delete(ctx, p.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err := poll(ctx, programWait, "the endpoint terminating and serving", func(ctx context.Context) error {
		eps, err := e.endpoints(ctx, s.Name)
		if err != nil {
			return err
		}
		if len(eps) != 1 {
			return fmt.Errorf("%d endpoints", len(eps))
		}
		c := eps[0].Conditions
		if !isTrue(c.Terminating) || !isTrue(c.Serving) || isTrue(c.Ready) {
			return fmt.Errorf("conditions ready %v serving %v terminating %v", show(c.Ready), show(c.Serving), show(c.Terminating))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, proto := range []string{"tcp", "udp"} {
		if _, err := spread(ctx, from, proto, clusterAddr(s), []string{p.Name}); err != nil {
			t.Errorf("the last endpoint, terminating, over %s: %v", proto, err)
		}
	}
}

func isTrue(b *bool) bool { return b != nil && *b }

func show(b *bool) string {
	if b == nil {
		return "unset"
	}
	return fmt.Sprint(*b)
}

// testUDPEndpointChange: a UDP client keeps its socket while the
// Service's endpoint changes; its next datagrams reach the new endpoint,
// though the old one still runs and answers: the conntrack entries to
// the removed endpoint are flushed.
func testUDPEndpointChange(t *testing.T, ctx context.Context, e *svcEnv) {
	oldB, newB := e.backends[e.c.names[0]], e.backends[e.c.names[1]]
	s := e.createService(t, ctx, service("udp", map[string]string{nameLabel: oldB.Name}, nil))
	from := e.clientNS[e.c.names[2]]
	var conn net.Conn
	err := poll(ctx, programWait, "UDP to the first endpoint", func(ctx context.Context) error {
		if conn != nil {
			conn.Close()
		}
		var err error
		if conn, err = from.DialContext(ctx, nil, "udp", clusterAddr(s)); err != nil {
			return err
		}
		_ = conn.SetDeadline(time.Now().Add(askTimeout))
		r, err := exchangeUDP(conn)
		if err == nil && r.backend != oldB.Name {
			err = fmt.Errorf("answered by %s, want %s", r, oldB.Name)
		}
		return err
	})
	if conn != nil {
		defer conn.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := e.setSelector(ctx, s.Name, map[string]string{nameLabel: newB.Name}); err != nil {
		t.Fatal(err)
	}
	var last reply
	err = poll(ctx, programWait, "the same socket's datagrams to the new endpoint", func(ctx context.Context) error {
		_ = conn.SetDeadline(time.Now().Add(askTimeout))
		r, err := exchangeUDP(conn)
		if err != nil {
			return err
		}
		last = r
		if r.backend != newB.Name {
			return fmt.Errorf("answered by %s, want %s", r, newB.Name)
		}
		return nil
	})
	if err != nil {
		t.Errorf("endpoint %s → %s: %v (last answer %s)", oldB.Name, newB.Name, err, last)
	}
}

// testHairpin: a pod reaches itself through a Service of which it is the
// only endpoint.
func testHairpin(t *testing.T, ctx context.Context, e *svcEnv) {
	for _, n := range e.c.names {
		b := e.backends[n]
		s := e.createService(t, ctx, service("hairpin-"+n, map[string]string{nameLabel: b.Name}, nil))
		for _, proto := range []string{"tcp", "udp"} {
			if _, err := spread(ctx, e.backendNS[n], proto, clusterAddr(s), []string{b.Name}); err != nil {
				t.Errorf("%s → itself through ClusterIP %s %s: %v", b.Name, proto, clusterAddr(s), err)
			}
		}
	}
}

// testFromNode: the node's own processes (its network namespace: host-
// network pods, kubelet's probes) reach a ClusterIP and every endpoint
// behind it.
func testFromNode(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("from-node", allBackends, nil))
	for _, n := range e.c.names {
		for _, proto := range []string{"tcp", "udp"} {
			if _, err := spread(ctx, e.c.nodeNS(n), proto, clusterAddr(s), e.names); err != nil {
				t.Errorf("node %s → ClusterIP %s %s: %v", n, proto, clusterAddr(s), err)
			}
		}
	}
}

// testDualStack: a RequireDualStack Service gets a ClusterIP of each
// family (IPv4 first, the cluster's primary) and an EndpointSlice of
// each; from a pod on every node, TCP and UDP to each ClusterIP reach
// every endpoint, the backend seeing the client pod's address of that
// family; the outside host reaches the NodePort at every node's IPv6
// address.
func testDualStack(t *testing.T, ctx context.Context, e *svcEnv) {
	s := e.createService(t, ctx, service("dual", allBackends, func(s *corev1.Service) {
		dual := corev1.IPFamilyPolicyRequireDualStack
		s.Spec.IPFamilyPolicy = &dual
		s.Spec.Type = corev1.ServiceTypeNodePort
	}))
	if len(s.Spec.ClusterIPs) != 2 || net.ParseIP(s.Spec.ClusterIPs[0]).To4() == nil || net.ParseIP(s.Spec.ClusterIPs[1]).To4() != nil {
		t.Fatalf("RequireDualStack Service: ClusterIPs %v (families %v), want an IPv4 one, then an IPv6 one", s.Spec.ClusterIPs, s.Spec.IPFamilies)
	}
	err := poll(ctx, programWait, "an EndpointSlice of each family listing every backend", func(ctx context.Context) error {
		list, err := e.c.client.DiscoveryV1().EndpointSlices(testNamespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + s.Name})
		if err != nil {
			return err
		}
		got := map[discoveryv1.AddressType]int{}
		for _, sl := range list.Items {
			got[sl.AddressType] += len(sl.Endpoints)
		}
		if got[discoveryv1.AddressTypeIPv4] != len(e.names) || got[discoveryv1.AddressTypeIPv6] != len(e.names) {
			return fmt.Errorf("endpoints by address type %v, want %d of IPv4 and of IPv6", got, len(e.names))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range s.Spec.ClusterIPs {
		addr := net.JoinHostPort(ip, fmt.Sprint(svcPort))
		for _, n := range e.c.names {
			want := podIP(e.clients[n])
			if net.ParseIP(ip).To4() == nil {
				want = podIP6(e.clients[n])
			}
			for _, proto := range []string{"tcp", "udp"} {
				replies, err := spread(ctx, e.clientNS[n], proto, addr, e.names)
				if err != nil {
					t.Errorf("pod on %s → ClusterIP %s %s: %v", n, proto, addr, err)
					continue
				}
				for _, r := range replies {
					if !net.ParseIP(r.source).Equal(want) {
						t.Errorf("pod on %s → ClusterIP %s %s: %s saw %s, want the client pod's %s", n, proto, addr, r.backend, r.source, want)
						break
					}
				}
			}
		}
	}
	for _, n := range e.c.names {
		addr := net.JoinHostPort(e.c.nodeIP6(n).String(), fmt.Sprint(nodePort(s, corev1.ProtocolTCP)))
		if _, err := spread(ctx, e.outside, "tcp", addr, e.names); err != nil {
			t.Errorf("outside → NodePort TCP %s of %s: %v", addr, n, err)
		}
	}
}

// haveSCTP tells whether the kernel has SCTP (its module loaded or
// built in; nothing is loaded here).
func haveSCTP() bool {
	_, err := os.Stat("/proc/net/sctp")
	return err == nil
}

// testSCTP: an SCTP Service reaches every endpoint from a pod, where the
// kernel has SCTP.
func testSCTP(t *testing.T, ctx context.Context, e *svcEnv) {
	if !haveSCTP() {
		t.Skip("the kernel has no SCTP (no /proc/net/sctp: not built in, module not loaded); the tests load no module")
	}
	s := e.createService(t, ctx, service("sctp", allBackends, func(s *corev1.Service) {
		s.Spec.Ports = []corev1.ServicePort{{Name: "sctp", Protocol: corev1.ProtocolSCTP, Port: svcPort, TargetPort: intstr.FromInt32(backendPort)}}
	}))
	for _, n := range e.c.names {
		if _, err := spread(ctx, e.clientNS[n], "sctp", clusterAddr(s), e.names); err != nil {
			t.Errorf("pod on %s → ClusterIP SCTP %s: %v", n, clusterAddr(s), err)
		}
	}
}
