package kubeapi

import (
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/kube"
)

func cidr(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

// TestJoinWaitsForPodCIDRs: a Node without podCIDRs makes Join wait, and
// say so, without publishing anything; once kube-controller-manager
// allocates them Join returns with them and publishes the annotations.
func TestJoinWaitsForPodCIDRs(t *testing.T) {
	controlPlane(t)
	ctx := testCtx(t)
	if err := shared.cp.StopComponent(kube.ComponentControllerManager); err != nil {
		t.Fatal(err)
	}
	restarted := false
	restart := func() {
		if !restarted {
			restarted = true
			if err := shared.cp.StartComponent(ctx, kube.ComponentControllerManager); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restart)
	name := nodeName("wait")
	createNode(t, name, nil)
	s, _ := openStore(t, name, v4Cluster)

	waiting := make(chan string, 1)
	joined := make(chan error, 1)
	var mem datastore.Membership
	go func() {
		var err error
		mem, err = s.Join(datastore.WithWaitReporter(ctx, func(w string) { waiting <- w }), cluster.Node{Name: name, IP: net.IPv4(192, 0, 2, 7)}, cluster.Node{})
		joined <- err
	}()
	select {
	case w := <-waiting:
		if w != WaitingForPodCIDRs || !strings.Contains(w, "node.spec.podCIDRs") {
			t.Fatalf("waiting for %q", w)
		}
	case err := <-joined:
		t.Fatalf("Join returned without podCIDRs: %v", err)
	}
	select {
	case err := <-joined:
		t.Fatalf("Join returned without podCIDRs: %v", err)
	case <-time.After(time.Second):
	}
	if a := getNode(t, name).Annotations; len(a) != 0 {
		t.Fatalf("annotations published before the podCIDRs: %v", a)
	}
	restart()
	if err := <-joined; err != nil {
		t.Fatal(err)
	}
	n := getNode(t, name)
	rec := mem.Node()
	if len(n.Spec.PodCIDRs) != 1 || rec.Subnet.String() != n.Spec.PodCIDRs[0] || rec.Subnet6 != nil {
		t.Fatalf("joined with %v / %v, the Node has %v", rec.Subnet, rec.Subnet6, n.Spec.PodCIDRs)
	}
	if got := n.Annotations[AnnotationNodeIP]; got != "192.0.2.7" {
		t.Fatalf("%s = %q", AnnotationNodeIP, got)
	}
}

// TestJoinChecksPodCIDRs: the Node's podCIDRs must be one per family of the
// cluster configuration, each a node subnet of its cluster CIDR; dual-stack
// podCIDRs give both subnets.
func TestJoinChecksPodCIDRs(t *testing.T) {
	controlPlane(t)
	for _, tc := range []struct {
		name     string
		cl       cluster.Config
		podCIDRs []string
		err      string // "" = joins
	}{
		{"dual-stack", dualCluster, []string{"10.244.201.0/24", "fd00:10:244:c9::/64"}, ""},
		{"v6 first", dualCluster, []string{"fd00:10:244:ca::/64", "10.244.202.0/24"}, ""},
		{"v6 only", cluster.Config{ClusterCIDR6: "fd00:10:244::/56"}, []string{"fd00:10:244:cb::/64"}, ""},
		{"outside", v4Cluster, []string{"10.99.1.0/24"}, "10.99.1.0/24, which is not a /24 of podnet's cluster CIDR 10.244.0.0/16 (--cluster-cidr"},
		{"other size", v4Cluster, []string{"10.244.203.0/25"}, "10.244.203.0/25, which is not a /24"},
		{"v6 unconfigured", v4Cluster, []string{"10.244.204.0/24", "fd00:10:244:cc::/64"}, "has the podCIDR fd00:10:244:cc::/64, but podnet's cluster configuration has no CIDR of its family (--cluster-cidr6)"},
		{"v6 missing", dualCluster, []string{"10.244.205.0/24"}, "none within podnet's cluster CIDR fd00:10:244::/56 (--cluster-cidr6)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := nodeName("cidrs")
			createNode(t, name, nil, tc.podCIDRs...)
			s, _ := openStore(t, name, tc.cl)
			mem, err := s.Join(testCtx(t), cluster.Node{Name: name, IP: net.IPv4(192, 0, 2, 8)}, cluster.Node{})
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), name) {
					t.Fatalf("Join = %v, want an error naming the node and %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := []string{}
			for _, sn := range []*net.IPNet{mem.Node().Subnet, mem.Node().Subnet6} {
				if sn != nil {
					got = append(got, sn.String())
				}
			}
			for _, want := range tc.podCIDRs {
				if !strings.Contains(strings.Join(got, " "), want) {
					t.Fatalf("joined with %v, the Node has %v", got, tc.podCIDRs)
				}
			}
		})
	}
}

// TestOpenRefusesAMissingNode: the store's Node must exist.
func TestOpenRefusesAMissingNode(t *testing.T) {
	controlPlane(t)
	_, err := Open(testCtx(t), Config{NodeName: "no-such-node", Kubeconfig: shared.kubeconfig, Cluster: v4Cluster, NetNS: shared.ns.NS})
	if err == nil || !strings.Contains(err.Error(), `the Node "no-such-node" does not exist`) {
		t.Fatalf("Open = %v", err)
	}
}

// TestPublishWatchRelease: a node's annotations are published through
// nodes/status and read back by another node's watch; its fabric being up
// sets NetworkUnavailable=False leaving the other conditions and
// annotations alone; nodes added, changed and deleted in the API are
// followed; Release removes podnet's annotations and leaves the Node.
func TestPublishWatchRelease(t *testing.T) {
	controlPlane(t)
	ctx := testCtx(t)
	a, b := nodeName("pub-a"), nodeName("pub-b")
	createNode(t, a, map[string]string{"example.com/keep": "yes"}, "10.244.210.0/24", "fd00:10:244:d2::/64")
	createNode(t, b, nil, "10.244.211.0/24", "fd00:10:244:d3::/64")
	// Conditions as a kubelet and a cloud route controller leave them.
	status := `{"status":{"conditions":[
		{"type":"Ready","status":"True","reason":"KubeletReady","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"},
		{"type":"NetworkUnavailable","status":"True","reason":"NoRouteCreated","lastHeartbeatTime":"2026-01-01T00:00:00Z","lastTransitionTime":"2026-01-01T00:00:00Z"}]}}`
	if _, err := shared.admin.CoreV1().Nodes().Patch(ctx, a, types.StrategicMergePatchType, []byte(status), metav1.PatchOptions{}, "status"); err != nil {
		t.Fatal(err)
	}
	sa, _ := openStore(t, a, dualCluster)
	sb, _ := openStore(t, b, dualCluster)
	w := watchNodes(t, sb)

	self := cluster.Node{Name: a, IP: net.IPv4(192, 0, 2, 21), IP6: net.ParseIP("2001:db8::21")}
	mem, err := sa.Join(ctx, self, cluster.Node{})
	if err != nil {
		t.Fatal(err)
	}
	runDone := make(chan error, 1)
	go func() { runDone <- mem.Run(ctx, nil) }()

	waitFor(t, "node a in b's watch", func() bool { _, ok := w.node(a); return ok })
	got, _ := w.node(a)
	if got.IP.String() != "192.0.2.21" || got.IP6.String() != "2001:db8::21" || got.Subnet.String() != "10.244.210.0/24" ||
		got.Subnet6.String() != "fd00:10:244:d2::/64" || got.VTEPMAC != "" {
		t.Fatalf("b sees a as %+v", got)
	}
	if _, ok := w.node(b); ok {
		t.Fatal("b, without annotations, is a peer")
	}

	self.VTEPMAC = "02:aa:bb:cc:dd:01"
	if err := mem.Update(ctx, self); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's VTEP MAC in b's watch", func() bool { n, _ := w.node(a); return n.VTEPMAC == self.VTEPMAC })
	n := getNode(t, a)
	if n.Annotations["example.com/keep"] != "yes" || n.Annotations[AnnotationVTEPMAC] != self.VTEPMAC {
		t.Fatalf("annotations %v", n.Annotations)
	}
	conds := map[corev1.NodeConditionType]corev1.NodeCondition{}
	for _, c := range n.Status.Conditions {
		conds[c.Type] = c
	}
	if c := conds[corev1.NodeNetworkUnavailable]; c.Status != corev1.ConditionFalse || c.Reason != ReasonUp || c.LastTransitionTime.Year() == 2026 && c.LastTransitionTime.Month() == 1 {
		t.Fatalf("NetworkUnavailable %+v", c)
	}
	if c, ok := conds[corev1.NodeReady]; !ok || c.Reason != "KubeletReady" {
		t.Fatalf("the Ready condition was lost: %+v", n.Status.Conditions)
	}

	// Another node, published by the administrator, then changed.
	c := nodeName("pub-c")
	createNode(t, c, map[string]string{AnnotationNodeIP: "192.0.2.23"}, "10.244.212.0/24")
	waitFor(t, "node c in b's watch", func() bool { _, ok := w.node(c); return ok })
	patch := `{"metadata":{"annotations":{"` + AnnotationVTEPMAC + `":"02:aa:bb:cc:dd:03"}}}`
	if _, err := shared.admin.CoreV1().Nodes().Patch(ctx, c, types.StrategicMergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "c's change in b's watch", func() bool { n, _ := w.node(c); return n.VTEPMAC == "02:aa:bb:cc:dd:03" })
	deleteNode(t, c)
	waitFor(t, "c gone from b's watch", func() bool { _, ok := w.node(c); return !ok })

	// Someone removes a's annotations: Run publishes them again.
	strip := `{"metadata":{"annotations":{"` + AnnotationNodeIP + `":null,"` + AnnotationVTEPMAC + `":null}}}`
	if _, err := shared.admin.CoreV1().Nodes().Patch(ctx, a, types.StrategicMergePatchType, []byte(strip), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a's annotations published again", func() bool {
		an := getNode(t, a).Annotations
		return an[AnnotationNodeIP] == "192.0.2.21" && an[AnnotationVTEPMAC] == self.VTEPMAC
	})
	if err := mem.Healthy(); err != nil {
		t.Fatalf("Healthy: %v", err)
	}

	if err := mem.Release(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "a gone from b's watch", func() bool { _, ok := w.node(a); return !ok })
	n = getNode(t, a)
	for _, k := range annotationKeys {
		if v, ok := n.Annotations[k]; ok {
			t.Errorf("after Release, %s = %q", k, v)
		}
	}
	if n.Annotations["example.com/keep"] != "yes" {
		t.Errorf("Release removed another annotation: %v", n.Annotations)
	}
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && (c.Status != corev1.ConditionTrue || c.Reason != ReasonLeft) {
			t.Errorf("after Release, NetworkUnavailable %+v", c)
		}
	}
	select {
	case err := <-runDone:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run went on after Release")
	}
}

// TestGarbageRefused: Nodes whose podnet annotations are malformed are
// refused (logged, counted), never routed to, and panic nothing; a subnet
// in an annotation is ignored (subnets come from spec.podCIDRs only).
func TestGarbageRefused(t *testing.T) {
	controlPlane(t)
	watcherName := nodeName("garbage-w")
	createNode(t, watcherName, nil, "10.244.220.0/24")
	s, logs := openStore(t, watcherName, v4Cluster)
	w := watchNodes(t, s)
	bad := []map[string]string{
		{AnnotationNodeIP: "999.1.1.1"},
		{AnnotationNodeIP: "2001:db8::1"},
		{AnnotationNodeIP: "127.0.0.1"},
		{AnnotationNodeIP: "0.0.0.0"},
		{AnnotationNodeIP6: "192.0.2.1"},
		{AnnotationNodeIP: "192.0.2.1", AnnotationVTEPMAC: "zz:zz"},
		{AnnotationNodeIP: "192.0.2.1", AnnotationVTEPMAC: "ff:ff:ff:ff:ff:ff"},
		{AnnotationNodeIP: "192.0.2.1", AnnotationVTEPMAC: "00:00:00:00:00:00:00:00"},
		{AnnotationNodeIP: strings.Repeat("1", 10000)},
	}
	for i, a := range bad {
		createNode(t, nodeName("garbage"), a, "10.244."+strconv.Itoa(221+i)+".0/24")
	}
	ok := nodeName("garbage-ok")
	createNode(t, ok, map[string]string{AnnotationNodeIP: "192.0.2.30", "podnet.dev/subnet": "0.0.0.0/1"}, "10.244.235.0/24")
	waitFor(t, "the good node watched", func() bool { _, found := w.node(ok); return found })
	waitFor(t, "every bad node refused", func() bool { return testutil.ToFloat64(s.refusedRecords) == float64(len(bad)) })
	if got, _ := w.node(ok); got.Subnet.String() != "10.244.235.0/24" {
		t.Fatalf("the good node's subnet: %v", got.Subnet)
	}
	w.mu.Lock()
	n := len(w.last)
	w.mu.Unlock()
	if n != 1 {
		t.Fatalf("watched %d nodes, want only the good one", n)
	}
	if !strings.Contains(logs.String(), "refusing a Node as a peer") {
		t.Fatalf("no refusal logged:\n%s", logs)
	}
}

// TestRunFollowsTheNode: when the node's Node is deleted, Healthy says so;
// when it is registered again with other podCIDRs, Run reports the change
// and publishes the annotations again.
func TestRunFollowsTheNode(t *testing.T) {
	controlPlane(t)
	ctx := testCtx(t)
	name := nodeName("follow")
	createNode(t, name, nil, "10.244.240.0/24")
	s, _ := openStore(t, name, v4Cluster)
	mem, err := s.Join(ctx, cluster.Node{Name: name, IP: net.IPv4(192, 0, 2, 40)}, cluster.Node{})
	if err != nil {
		t.Fatal(err)
	}
	changes := make(chan [2]cluster.Node, 1)
	go mem.Run(ctx, func(old, cur cluster.Node) { changes <- [2]cluster.Node{old, cur} })
	deleteNode(t, name)
	waitFor(t, "Healthy to report the deleted Node", func() bool {
		err := mem.Healthy()
		return err != nil && strings.Contains(err.Error(), "is not in the Kubernetes API")
	})
	createNode(t, name, nil, "10.244.241.0/24")
	select {
	case c := <-changes:
		if c[0].Subnet.String() != "10.244.240.0/24" || c[1].Subnet.String() != "10.244.241.0/24" {
			t.Fatalf("changed(%v, %v)", c[0].Subnet, c[1].Subnet)
		}
	case <-ctx.Done():
		t.Fatal("no change reported")
	}
	waitFor(t, "the annotations on the new Node", func() bool { return getNode(t, name).Annotations[AnnotationNodeIP] == "192.0.2.40" })
	waitFor(t, "Healthy again", func() bool { return mem.Healthy() == nil })
	if got := mem.Node().Subnet.String(); got != "10.244.241.0/24" {
		t.Fatalf("Node().Subnet = %s", got)
	}
}

// TestAPIServerOutage: with the API server down, the last known peers
// stand (WatchNodes says nothing), Healthy reports the broken watch only
// after the grace period, and everything resumes when the server is back.
func TestAPIServerOutage(t *testing.T) {
	controlPlane(t)
	ctx := testCtx(t)
	name := nodeName("outage")
	createNode(t, name, nil, "10.244.250.0/24")
	const grace = 3 * time.Second
	s, _ := openStore(t, name, v4Cluster, func(c *Config) { c.Grace = grace })
	w := watchNodes(t, s)
	mem, err := s.Join(ctx, cluster.Node{Name: name, IP: net.IPv4(192, 0, 2, 50)}, cluster.Node{})
	if err != nil {
		t.Fatal(err)
	}
	go mem.Run(ctx, nil)
	waitFor(t, "the node watched", func() bool { _, ok := w.node(name); return ok })
	calls := w.calls()

	// The watch may fail from the moment the server starts shutting down.
	stopping := time.Now()
	if err := shared.cp.StopComponent(kube.ComponentAPIServer); err != nil {
		t.Fatal(err)
	}
	restarted := false
	restart := func() {
		if !restarted {
			restarted = true
			if err := shared.cp.StartComponent(ctx, kube.ComponentAPIServer); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(restart)
	waitFor(t, "Healthy to report the outage", func() bool {
		err := mem.Healthy()
		if err != nil && time.Since(stopping) < grace {
			t.Fatalf("unhealthy within the grace period: %v", err)
		}
		return err != nil && strings.Contains(err.Error(), "has not answered the watch of the Nodes")
	})
	if w.calls() != calls {
		t.Fatal("the set of nodes changed during the outage")
	}
	if _, ok := w.node(name); !ok {
		t.Fatal("the node left the set during the outage")
	}
	restart()
	waitFor(t, "Healthy after the outage", func() bool { return mem.Healthy() == nil })
	other := nodeName("outage-b")
	createNode(t, other, map[string]string{AnnotationNodeIP: "192.0.2.51"}, "10.244.251.0/24")
	waitFor(t, "a node added after the outage", func() bool { _, ok := w.node(other); return ok })
}
