package kubeapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"
)

// WaitingForPodCIDRs is what Join reports (datastore.ReportWait) while the
// Node has no podCIDRs.
const WaitingForPodCIDRs = "node.spec.podCIDRs (kube-controller-manager allocates them with --allocate-node-cidrs)"

// The NetworkUnavailable condition podnet sets on its Node.
const (
	ReasonUp   = "PodnetIsUp"
	ReasonLeft = "PodnetLeft"
)

// member is a node's membership: its Node's podCIDRs and podnet's
// annotations on it. It is a datastore.Membership.
type member struct {
	s *Store

	mu       sync.Mutex
	node     cluster.Node
	up       bool   // Update was called: the node's fabric is up
	problem  string // what is wrong with the Node, as Run last saw it
	released bool
}

var _ datastore.Membership = (*member)(nil)

// Join waits until the node's Node has podCIDRs (reporting
// WaitingForPodCIDRs through datastore.ReportWait meanwhile; an API
// that does not answer fails it), checks them against the cluster
// configuration, and publishes self's addresses and VTEP MAC as podnet's
// annotations. prefer is ignored: kube-controller-manager allocates the
// subnets, once per Node.
func (s *Store) Join(ctx context.Context, self, _ cluster.Node) (datastore.Membership, error) {
	if self.Name != s.cfg.NodeName {
		return nil, fmt.Errorf("datastore: join: node %q is not this store's node %q", self.Name, s.cfg.NodeName)
	}
	n, err := s.getNode(ctx)
	if err != nil {
		return nil, err
	}
	if len(n.Spec.PodCIDRs) == 0 {
		datastore.ReportWait(ctx, WaitingForPodCIDRs)
		s.log.Info("waiting for the Node's podCIDRs", "node", self.Name)
		if n, err = s.waitPodCIDRs(ctx); err != nil {
			return nil, err
		}
	}
	self.Subnet, self.Subnet6, err = s.ownSubnets(n)
	if err != nil {
		return nil, err
	}
	m := &member{s: s, node: self}
	if err := s.patchNode(ctx, &self, nil); err != nil {
		return nil, err
	}
	return m, nil
}

// waitPodCIDRs waits for the node's Node, as the informer sees it, to
// have podCIDRs.
func (s *Store) waitPodCIDRs(ctx context.Context) (*corev1.Node, error) {
	inf := s.informer()
	for {
		changed := inf.changes()
		if n, ok := inf.get(s.cfg.NodeName); ok && len(n.Spec.PodCIDRs) > 0 {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("datastore: waiting for the podCIDRs of the Node %q: %w", s.cfg.NodeName, ctx.Err())
		case <-changed:
		}
	}
}

// ownSubnets are the node's pod subnets, which must be one of each family
// of the cluster configuration, each of its node subnet size within its
// cluster CIDR: kube-controller-manager's --cluster-cidr and
// --node-cidr-mask-size must agree with podnet's.
func (s *Store) ownSubnets(n *corev1.Node) (v4, v6 *net.IPNet, err error) {
	v4, v6, err = podCIDRs(n)
	if err != nil {
		return nil, nil, fmt.Errorf("datastore: the Node %q: %w", n.Name, err)
	}
	cl := s.cfg.Cluster
	cl.Default()
	for _, f := range []struct {
		sn         *net.IPNet
		cidr, flag string
		size       int
	}{
		{v4, cl.ClusterCIDR, "--cluster-cidr", cl.SubnetSize},
		{v6, cl.ClusterCIDR6, "--cluster-cidr6", cl.SubnetSize6},
	} {
		switch _, cidr, _ := net.ParseCIDR(f.cidr); {
		case f.sn == nil && cidr == nil:
		case f.sn == nil:
			return nil, nil, fmt.Errorf("datastore: the Node %q has spec.podCIDRs %v, none within podnet's cluster CIDR %s (%s): kube-controller-manager must allocate a CIDR of each family the cluster has", n.Name, n.Spec.PodCIDRs, cidr, f.flag)
		case cidr == nil:
			return nil, nil, fmt.Errorf("datastore: the Node %q has the podCIDR %s, but podnet's cluster configuration has no CIDR of its family (%s)", n.Name, f.sn, f.flag)
		default:
			ones, _ := f.sn.Mask.Size()
			if !cidr.Contains(f.sn.IP) || ones != f.size {
				return nil, nil, fmt.Errorf("datastore: the Node %q has the podCIDR %s, which is not a /%d of podnet's cluster CIDR %s (%s, subnet size /%d): kube-controller-manager's --cluster-cidr and --node-cidr-mask-size must match podnet's", n.Name, f.sn, f.size, cidr, f.flag, f.size)
			}
		}
	}
	return v4, v6, nil
}

// Node is the node's record as last written.
func (m *member) Node() cluster.Node {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.node
}

// Update publishes n's addresses and VTEP MAC (the subnets stay the
// Node's podCIDRs) and, the node's fabric being up, sets the Node's
// NetworkUnavailable condition to False.
func (m *member) Update(ctx context.Context, n cluster.Node) error {
	m.mu.Lock()
	if n.Name != m.node.Name {
		m.mu.Unlock()
		return fmt.Errorf("datastore: update: node %q is not the member node %q", n.Name, m.node.Name)
	}
	n.Subnet, n.Subnet6 = m.node.Subnet, m.node.Subnet6
	m.node, m.up = n, true
	m.mu.Unlock()
	up := true
	return m.s.patchNode(ctx, &n, &up)
}

// Run follows the node's own Node until ctx ends or Release was called,
// then returns nil: it publishes the annotations again when they are
// missing or differ (the Node was re-created, someone edited them), and
// when the Node's podCIDRs changed (a Node deleted and registered again
// gets new ones) it calls changed with the record before and after. What
// is wrong with the Node meanwhile (deleted, podCIDRs missing or unfit)
// Healthy reports.
func (m *member) Run(ctx context.Context, changed func(old, cur cluster.Node)) error {
	inf := m.s.informer()
	if !inf.waitSynced(ctx) {
		return nil
	}
	retry := time.Second
	for {
		ch := inf.changes()
		if m.isReleased() || ctx.Err() != nil {
			return nil
		}
		var wait <-chan time.Time
		if err := m.follow(ctx, inf, changed); err != nil {
			m.s.log.Warn("publishing the node's annotations failed; retrying", "err", err, "in", retry)
			wait = time.After(retry)
			retry = min(2*retry, 30*time.Second)
		} else {
			retry = time.Second
		}
		select {
		case <-ctx.Done():
			return nil
		case <-ch:
		case <-wait:
		}
	}
}

// follow brings the membership in line with the node's Node as cached.
func (m *member) follow(ctx context.Context, inf *nodeInformer, changed func(old, cur cluster.Node)) error {
	name := m.s.cfg.NodeName
	n, ok := inf.get(name)
	if !ok {
		m.setProblem(fmt.Sprintf("the Node %q is not in the Kubernetes API (deleted?)", name))
		return nil
	}
	if len(n.Spec.PodCIDRs) == 0 {
		m.setProblem("waiting for " + WaitingForPodCIDRs)
		return nil
	}
	v4, v6, err := m.s.ownSubnets(n)
	if err != nil {
		m.setProblem(err.Error())
		return nil
	}
	m.setProblem("")
	m.mu.Lock()
	old := m.node
	cur := old
	cur.Subnet, cur.Subnet6 = v4, v6
	m.node = cur
	up := m.up
	m.mu.Unlock()
	if old.Subnet.String() != v4.String() || old.Subnet6.String() != v6.String() {
		m.s.log.Warn("the Node's podCIDRs changed", "node", name, "old", old.Subnet, "old6", old.Subnet6, "new", v4, "new6", v6)
		if changed != nil {
			changed(old, cur)
		}
	}
	if published(n, cur) {
		return nil
	}
	var cond *bool
	if up {
		cond = &up
	}
	return m.s.patchNode(ctx, &cur, cond)
}

// published tells whether the cached Node carries rec's annotations.
func published(n *corev1.Node, rec cluster.Node) bool {
	for k, want := range annotationsOf(rec) {
		got, ok := n.Annotations[k]
		if (want == nil) != !ok || want != nil && *want != got {
			return false
		}
	}
	return true
}

func (m *member) setProblem(p string) {
	m.mu.Lock()
	changed := m.problem != p
	m.problem = p
	m.mu.Unlock()
	if changed && p != "" {
		m.s.log.Error("the node's membership is not in order", "why", p)
	}
}

func (m *member) isReleased() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.released
}

// Healthy is nil while the node's Node is in order and the watch of the
// Nodes works, or has failed for less than the grace period; else it says
// why. Nothing is torn down meanwhile: the last known peers stay.
func (m *member) Healthy() error {
	m.mu.Lock()
	p := m.problem
	m.mu.Unlock()
	if p != "" {
		return errors.New(p)
	}
	if since, err := m.s.informer().failing(); !since.IsZero() {
		if d := time.Since(since); d > m.s.cfg.Grace {
			return fmt.Errorf("the Kubernetes API has not answered the watch of the Nodes for %s (grace %s); the last known peers stay: %v", d.Round(time.Second), m.s.cfg.Grace, err)
		}
	}
	return nil
}

// Release removes podnet's annotations from the node's Node (every other
// node drops its routes at once) and sets its NetworkUnavailable
// condition to True; the Node itself stays. A Node that no longer exists
// has nothing to release.
func (m *member) Release(ctx context.Context) error {
	m.mu.Lock()
	m.released = true
	m.mu.Unlock()
	up := false
	err := m.s.patchNode(ctx, nil, &up)
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// patchNode writes rec's annotations on the node's Node (rec nil: removes
// them) and, when up is not nil, its NetworkUnavailable condition (False
// when up), in one strategic merge patch of the nodes/status subresource
// that leaves the other annotations and conditions as they are. It reads
// the Node first and patches only what differs.
func (s *Store) patchNode(ctx context.Context, rec *cluster.Node, up *bool) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	nodes := s.client.CoreV1().Nodes()
	cur, err := nodes.Get(ctx, s.cfg.NodeName, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("datastore: read the Node %q: %w", s.cfg.NodeName, err)
	}
	want := annotationsOf(cluster.Node{})
	if rec != nil {
		want = annotationsOf(*rec)
	}
	ann := map[string]*string{}
	for k, v := range want {
		got, ok := cur.Annotations[k]
		if v == nil && ok || v != nil && (!ok || got != *v) {
			ann[k] = v
		}
	}
	type patchStatus struct {
		Conditions []corev1.NodeCondition `json:"conditions"`
	}
	var patch struct {
		Metadata struct {
			Annotations map[string]*string `json:"annotations,omitempty"`
		} `json:"metadata"`
		Status *patchStatus `json:"status,omitempty"`
	}
	patch.Metadata.Annotations = ann
	if up != nil {
		if c, ok := networkCondition(cur, *up); ok {
			patch.Status = &patchStatus{Conditions: []corev1.NodeCondition{c}}
		}
	}
	if len(ann) == 0 && patch.Status == nil {
		return nil
	}
	b, err := json.Marshal(patch)
	if err != nil {
		return err
	}
	if _, err := nodes.Patch(ctx, s.cfg.NodeName, types.StrategicMergePatchType, b, metav1.PatchOptions{FieldManager: "podnet-agent"}, "status"); err != nil {
		return fmt.Errorf("datastore: patch the status of the Node %q: %w", s.cfg.NodeName, err)
	}
	return nil
}

// networkCondition is the NetworkUnavailable condition to write on n (False
// when up), and whether n does not carry it yet.
func networkCondition(n *corev1.Node, up bool) (corev1.NodeCondition, bool) {
	c := corev1.NodeCondition{
		Type: corev1.NodeNetworkUnavailable, Status: corev1.ConditionTrue,
		Reason: ReasonLeft, Message: "podnet-agent left the cluster: the node's pod network is removed",
	}
	if up {
		c.Status, c.Reason, c.Message = corev1.ConditionFalse, ReasonUp, "podnet-agent set up the node's pod network"
	}
	now := metav1.Now()
	c.LastHeartbeatTime, c.LastTransitionTime = now, now
	for _, old := range n.Status.Conditions {
		if old.Type != c.Type {
			continue
		}
		if old.Status == c.Status && old.Reason == c.Reason && old.Message == c.Message {
			return c, false
		}
		if old.Status == c.Status {
			c.LastTransitionTime = old.LastTransitionTime
		}
	}
	return c, true
}
