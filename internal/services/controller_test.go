package services

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/services/dataplane"
	"github.com/podnet/podnet/internal/testing/kubetest"
	"github.com/podnet/podnet/internal/testing/logtest"
	"github.com/podnet/podnet/internal/testing/nfttest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// testCluster is a kubetest.NodeCluster whose agent user is bound to
// exactly kubeapi.Rules(), so the test also proves them enough for the
// service proxy.
type testCluster struct {
	node       *netns.Temp
	admin      kubernetes.Interface
	kubeconfig string
}

// nodeIP is the node namespace's address.
var nodeIP = kubetest.NodeIP

func startCluster(t *testing.T) *testCluster {
	t.Helper()
	nc := kubetest.StartNodeCluster(t, "svc", kubeapi.Rules())
	return &testCluster{node: nc.Node, admin: nc.Admin, kubeconfig: nc.Kubeconfig}
}

// waitFor polls cond until it holds, failing the test after 60 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 60*time.Second, what, cond)
}

// runningProxy is a service proxy running for the node n1 of a
// testCluster.
type runningProxy struct {
	c      *Controller
	reg    *prometheus.Registry
	health *controller.Health
	stop   func() error
}

func (tc *testCluster) startProxy(t *testing.T) *runningProxy {
	t.Helper()
	logs := &logtest.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store, err := kubeapi.Open(context.Background(), kubeapi.Config{NodeName: "n1", Kubeconfig: tc.kubeconfig, NetNS: tc.node.NS, Log: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { store.Close() })
	env := controller.NewEnv()
	reg := prometheus.NewRegistry()
	env.Log, env.Metrics, env.NodeName, env.NetNS = log, reg, "n1", tc.node.NS
	env.Underlay = controller.Underlay{Name: "eth0", IP: nodeIP}
	env.Cluster = cluster.Config{ClusterCIDR: "10.244.0.0/16"}
	env.Resync = 30 * time.Second
	c := New(env, store.Clientset(), Config{Enabled: true, HealthAddr: net.JoinHostPort(nodeIP.String(), "10256")})
	ctx, cancel := context.WithCancel(context.Background())
	h := &controller.Health{}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx, h) }()
	stopped := false
	stop := func() error {
		if stopped {
			return nil
		}
		stopped = true
		cancel()
		return <-done
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Errorf("Run: %v", err)
		}
		if t.Failed() {
			t.Logf("service proxy log:\n%s", logs)
		}
	})
	return &runningProxy{c: c, reg: reg, health: h, stop: stop}
}

// metric is the value of the series of name with labels, if any.
func (p *runningProxy) metric(t *testing.T, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	mfs, err := p.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.GetMetric() {
			have := map[string]string{}
			for _, l := range m.GetLabel() {
				have[l.GetName()] = l.GetValue()
			}
			for k, v := range labels {
				if have[k] != v {
					continue series
				}
			}
			if g := m.GetGauge(); g != nil {
				return g.GetValue(), true
			}
			return m.GetCounter().GetValue(), true
		}
	}
	return 0, false
}

// get GETs url from the node's namespace: the status and the decoded
// JSON body, or the error.
func (tc *testCluster) get(url string) (int, map[string]any, error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return tc.node.DialContext(ctx, nil, network, addr)
		},
		DisableKeepAlives: true,
	}}
	resp, err := client.Get(url)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return resp.StatusCode, nil, err
	}
	return resp.StatusCode, body, nil
}

// hasTable reports whether the node's namespace holds the service table.
func (tc *testCluster) hasTable(t *testing.T) bool {
	t.Helper()
	return nfttest.HasTable(t, tc.node, nftables.TableFamilyINet, dataplane.TableName)
}

// TestController runs the service proxy against a real API server, from a
// node namespace, with exactly kubeapi.Rules(): it becomes ready once its
// caches are synced and the first sync programmed the table; it follows a
// LoadBalancer Service with externalTrafficPolicy Local and its
// EndpointSlices (per-service endpoint metric, the health check node port
// answering with the local ready endpoints, 200 then 503), ignores a
// Service of another proxy, serves /healthz and /livez, closes the health
// check when the Service goes, and Cleanup removes the table.
func TestController(t *testing.T) {
	tc := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := tc.admin.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{
		Name: "n1", Labels: map[string]string{corev1.LabelTopologyZone: "a"},
	}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	p := tc.startProxy(t)
	waitFor(t, "the proxy ready", func() bool { ok, _ := p.health.State(); return ok })
	if !tc.hasTable(t) {
		t.Fatal("ready without the service table")
	}
	if n, ok := p.metric(t, "podnet_services_endpoints", map[string]string{"namespace": "default", "name": "kubernetes"}); !ok || n != 1 {
		t.Errorf("endpoints of default/kubernetes: %v %v, want 1", n, ok)
	}

	for path, eligible := range map[string]bool{"/healthz": true, "/livez": false} {
		code, body, err := tc.get("http://" + net.JoinHostPort(nodeIP.String(), "10256") + path)
		if err != nil || code != http.StatusOK || body["lastUpdated"] == nil || eligible != (body["nodeEligible"] == true) {
			t.Errorf("GET %s: %d %v %v", path, code, body, err)
		}
	}

	svcs := tc.admin.CoreV1().Services("default")
	svc, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Type: corev1.ServiceTypeLoadBalancer, ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svcs.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "other", Labels: map[string]string{LabelServiceProxyName: "elsewhere"}},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	hc := "http://" + net.JoinHostPort(nodeIP.String(), strconv.Itoa(int(svc.Spec.HealthCheckNodePort))) + "/"
	slices := tc.admin.DiscoveryV1().EndpointSlices("default")
	sl := slice("web-1", discoveryv1.AddressTypeIPv4, http8080, ep("10.244.1.2", "n1"), ep("10.244.2.2", "n2"))
	sl.Namespace = "default"
	if sl, err = slices.Create(ctx, sl, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web's 2 endpoints", func() bool {
		n, _ := p.metric(t, "podnet_services_endpoints", map[string]string{"namespace": "default", "name": "web"})
		return n == 2
	})
	checkHealth := func(wantCode int, wantLocal float64) {
		t.Helper()
		waitFor(t, "the health check answering "+strconv.Itoa(wantCode), func() bool {
			code, body, err := tc.get(hc)
			if err != nil {
				return false
			}
			s, _ := body["service"].(map[string]any)
			return code == wantCode && body["localEndpoints"] == wantLocal && body["serviceProxyHealthy"] == true &&
				s["namespace"] == "default" && s["name"] == "web"
		})
	}
	checkHealth(http.StatusOK, 1)

	// loadBalancerSourceRanges reach the kernel, and a change of the
	// ranges alone too; a range holding the node's address allows the
	// load-balancer IP as a source.
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.51.100.7"}}
	if svc, err = svcs.UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ ranges, want []string }{
		{[]string{"203.0.113.0/24"}, []string{"elements = { 203.0.113.0/24 }"}},
		{[]string{"192.0.2.0/24"}, []string{"elements = { 192.0.2.0/24, 198.51.100.7 }"}},
	} {
		svc.Spec.LoadBalancerSourceRanges = tt.ranges
		if svc, err = svcs.Update(ctx, svc, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, fmt.Sprintf("the source ranges %v programmed", tt.ranges), func() bool {
			out := nfttest.Ruleset(t, tc.node)
			for _, w := range append(tt.want, "198.51.100.7 . tcp . 80 : goto firewall-default/web/http/TCP/ipv4") {
				if !strings.Contains(out, w) {
					return false
				}
			}
			return true
		})
	}
	// default/kubernetes and default/web, not default/other.
	if n, _ := p.metric(t, "podnet_services_programmed", map[string]string{"kind": "services"}); n != 2 {
		t.Errorf("services programmed: %v, want 2", n)
	}

	notReady := false
	sl.Endpoints[0].Conditions.Ready = &notReady
	if _, err := slices.Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	checkHealth(http.StatusServiceUnavailable, 0)
	if n, _ := p.metric(t, "podnet_services_endpoints", map[string]string{"namespace": "default", "name": "web"}); n != 1 {
		t.Errorf("web's endpoints with the local one not ready: %v, want 1", n)
	}
	if _, ok := p.metric(t, "podnet_services_endpoints", map[string]string{"namespace": "default", "name": "other"}); ok {
		t.Error("another proxy's Service is proxied")
	}

	if err := svcs.Delete(ctx, "web", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "web's series and health check gone", func() bool {
		_, ok := p.metric(t, "podnet_services_endpoints", map[string]string{"namespace": "default", "name": "web"})
		_, _, err := tc.get(hc)
		return !ok && errors.Is(err, syscall.ECONNREFUSED)
	})
	if n, _ := p.metric(t, "podnet_services_programmed", map[string]string{"kind": "services"}); n != 1 {
		t.Errorf("services programmed once web is deleted: %v, want 1", n)
	}
	if n, ok := p.metric(t, "podnet_services_sync_errors_total", nil); !ok || n != 0 {
		t.Errorf("sync errors: %v", n)
	}

	if err := p.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !tc.hasTable(t) {
		t.Fatal("the table is gone after a stop: a restart would cut the traffic")
	}
	if err := p.c.Cleanup(ctx); err != nil {
		t.Fatal(err)
	}
	if tc.hasTable(t) {
		t.Fatal("the table is left after Cleanup")
	}
	if err := p.c.Cleanup(ctx); err != nil {
		t.Fatalf("Cleanup again: %v", err)
	}
}

// TestNodePortHosts: the health check servers listen on the node's
// addresses inside the node-port networks, by default its underlay
// address, on the wildcard address for a network of everything.
func TestNodePortHosts(t *testing.T) {
	ns := nfttest.NS(t, "svchosts")
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth1"}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"192.0.2.2/24", "198.51.100.2/24"} {
		addr, _ := netlink.ParseAddr(a)
		if err := h.AddrAdd(veth, addr); err != nil {
			t.Fatal(err)
		}
	}
	env := controller.NewEnv()
	env.Log, env.Metrics, env.NetNS, env.Resync = slog.New(slog.DiscardHandler), prometheus.NewRegistry(), ns.NS, time.Minute
	env.Underlay = controller.Underlay{Name: "eth0", IP: nodeIP}
	for _, tt := range []struct {
		nets    []string
		want    []string
		wantErr bool
	}{
		{nets: nil, want: []string{"192.0.2.2"}},
		{nets: []string{"198.51.100.0/24"}, want: []string{"198.51.100.2"}},
		{nets: []string{"0.0.0.0/0", "198.51.100.0/24"}, want: []string{"0.0.0.0"}},
		{nets: []string{"203.0.113.0/24"}, wantErr: true},
	} {
		var cfg Config
		for _, n := range tt.nets {
			cfg.NodePortAddresses = append(cfg.NodePortAddresses, netip.MustParsePrefix(n))
		}
		env.Metrics = prometheus.NewRegistry()
		got, err := New(env, nil, cfg).nodePortHosts()
		if (err != nil) != tt.wantErr || !tt.wantErr && !reflect.DeepEqual(got, tt.want) {
			t.Errorf("node-port networks %v: %v, %v; want %v", tt.nets, got, err, tt.want)
		}
	}
}
