// Package enforce is podnet-agent's network policy controller
// (--network-policy): it follows the NetworkPolicies, Pods, Namespaces
// and ClusterNetworkPolicies of the Kubernetes API with informers,
// computes what the node's pods are allowed (policy.Build) and programs
// it into the node's policy table (package policy/dataplane), one
// nftables transaction per sync, bursts of events coalesced into one
// sync. It serves the pod gate (package policy/gate) through which the
// CNI plugin's ADD waits for a new pod's policy to be in the kernel. See
// docs/networkpolicy.md.
//
// (It is not in package policy because the data plane imports the
// model.)
package enforce

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	npaclientset "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"
	npainformers "sigs.k8s.io/network-policy-api/pkg/client/informers/externalversions"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/coalesce"
	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/policy/dataplane"
	"github.com/podnet/podnet/internal/policy/gate"
)

// Timings of the controller.
const (
	// minSyncInterval is the least time between two syncs: the events of
	// a burst are coalesced into one.
	minSyncInterval = 50 * time.Millisecond
	// podWait bounds how long a gate request waits for its Pod object to
	// reach the informer.
	podWait = 5 * time.Second
	// gateWait bounds how long a gate request waits for its sync.
	gateWait = 30 * time.Second
)

// Config is the network policy controller's configuration.
type Config struct {
	// Enabled enforces NetworkPolicy and the cluster tiers; off, the
	// controller only removes a table left from an earlier run.
	Enabled bool
	// Gate is the unix socket the CNI plugin notifies a new pod's
	// addresses on during ADD (package gate); "" serves none.
	Gate string
	// LogGroup is the nflog group of denied packets; 0 logs none.
	LogGroup uint16
}

// Controller enforces the network policy of the node's pods: it follows
// NetworkPolicies, ClusterNetworkPolicies, Pods and Namespaces with
// informers, computes the node's policy.Model and programs it into the
// policy table.
type Controller struct {
	env    controller.Env
	client kubernetes.Interface
	cnp    npaclientset.Interface
	cfg    Config
	log    *slog.Logger
	m      *metrics
	q      *coalesce.Queue
	// table is the policy table while Run runs, for the metrics.
	table atomic.Pointer[dataplane.Table]

	mu sync.Mutex
	// gated are the addresses the CNI plugin told of pods whose Pod
	// object has none yet, by "namespace/name".
	gated map[string]gatedPod
	// waiters are the gate requests waiting for their sync.
	waiters map[*waiter]bool

	// Of the Run goroutine: the last Build error logged, and whether the
	// absence of the cluster tiers' CRD was.
	buildErr    string
	tiersLogged bool
}

// gatedPod is a pod's addresses as the CNI plugin told them.
type gatedPod struct {
	uid string
	ips []netip.Addr
}

// waiter is a gate request waiting for a sync whose Model holds its pod
// with its addresses.
type waiter struct {
	key  string
	uid  string
	ips  []netip.Addr
	done chan error // buffered: receives once
}

// New returns the network policy controller of the node env describes,
// following the API through client and cnp (either nil is allowed when
// the feature is off; a nil cnp runs without the cluster tiers), and
// registers its metrics.
func New(env controller.Env, client kubernetes.Interface, cnp npaclientset.Interface, cfg Config) controller.Controller {
	c := &Controller{
		env: env, client: client, cnp: cnp, cfg: cfg, log: env.Log.With("controller", "network-policy"),
		q: coalesce.New(), gated: map[string]gatedPod{}, waiters: map[*waiter]bool{},
	}
	c.m = newMetrics(env.Metrics, c.denied)
	return c
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "network-policy" }

// Cleanup removes the policy table (agent leave, feature turned off).
func (c *Controller) Cleanup(context.Context) error {
	if err := dataplane.Cleanup(c.env.NetNSFd()); err != nil {
		return fmt.Errorf("policy table: %w", err)
	}
	return nil
}

// Run enforces the policies until ctx ends: it waits for the node's
// subnets and the informers' caches, then syncs the kernel at once,
// again at most every minSyncInterval while events come, and fully every
// resync period; it serves the gate meanwhile. It is ready, and sets
// env.Policy, once the first sync is in the kernel. With the feature off
// it removes a left-over table, then sets env.Policy and is ready.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	if !c.cfg.Enabled {
		if err := c.Cleanup(ctx); err != nil {
			return err
		}
		c.env.Policy.Set(false)
		h.Ready()
		<-ctx.Done()
		return nil
	}
	if c.client == nil {
		return errors.New("network policy needs the Kubernetes API (--datastore kubernetes)")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	h.NotReady("waiting for the node's subnets")
	self, err := c.env.Self.Wait(ctx)
	if err != nil {
		return nil
	}
	h.NotReady("waiting for the NetworkPolicies, Pods and Namespaces caches")
	inf := c.newCaches()
	inf.start(ctx)
	defer inf.shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.synced()...) {
		return nil
	}
	if err := inf.startTiers(ctx, c); err != nil {
		return err
	}
	table, err := c.newTable(self)
	if err != nil {
		return err
	}
	defer func() { c.table.Swap(nil).Close() }()
	c.q.AddAll()
	gateErr, gateDone := make(chan error, 1), make(chan struct{})
	if c.cfg.Gate != "" {
		go func() {
			defer close(gateDone)
			gateErr <- c.serveGate(ctx, inf)
		}()
	} else {
		close(gateDone)
	}
	err = c.loop(ctx, h, inf, table, self, gateErr)
	cancel()
	c.failWaiters(errors.New("the network policy controller stopped"))
	<-gateDone
	return err
}

// newTable opens the policy table for the pod subnets of self.
func (c *Controller) newTable(self cluster.Node) (*dataplane.Table, error) {
	t, err := dataplane.New(dataplane.Config{NetNSFd: c.env.NetNSFd(), PodCIDRs: podCIDRs(self), LogGroup: c.cfg.LogGroup})
	if err != nil {
		return nil, fmt.Errorf("policy table: %w", err)
	}
	c.table.Store(t)
	return t, nil
}

// loop syncs until ctx ends or the gate fails.
func (c *Controller) loop(ctx context.Context, h *controller.Health, inf *caches, table *dataplane.Table, self cluster.Node, gateErr <-chan error) error {
	resync := time.NewTicker(c.env.Resync)
	defer resync.Stop()
	_, _, selfChanged := c.env.Self.Load()
	var last time.Time
	var retry <-chan time.Time
	backoff := time.Second
	synced := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-gateErr:
			return err
		case <-c.q.Wake():
		case <-resync.C:
			if err := inf.startTiers(ctx, c); err != nil {
				return err
			}
			c.q.AddAll()
		case <-selfChanged:
			var next cluster.Node
			next, _, selfChanged = c.env.Self.Load()
			if !slices.Equal(podCIDRs(next), podCIDRs(self)) {
				// The pod subnets are the table's configuration: a new
				// table rewrites it whole at its first sync.
				nt, err := c.newTable(next)
				if err != nil {
					return err
				}
				table.Close()
				table, self = nt, next
				c.q.AddAll()
			}
		case <-retry:
		}
		// Coalesce: at most one sync per minSyncInterval.
		if wait := time.Until(last.Add(minSyncInterval)); wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		b := c.q.Take()
		if b.Empty() {
			continue
		}
		last = time.Now()
		retry = nil
		if err := c.sync(inf, table); err != nil {
			c.q.PutBack(b)
			c.m.errors.Inc()
			c.log.Error("network policy sync failed; retrying", "err", err, "in", backoff)
			h.NotReady("sync failed: %v", err)
			retry = time.After(backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		if !synced {
			synced = true
			c.log.Info("network policy synced: enforcing")
			c.env.Policy.Set(true)
		}
		h.Ready()
	}
}

// sync builds the node's Model from the caches and the gated addresses
// and programs it; then it answers the gate requests the Model satisfies.
func (c *Controller) sync(inf *caches, table *dataplane.Table) error {
	start := time.Now()
	in := inf.input()
	in.Pods = c.withGated(in.Pods)
	m, err := policy.Build(c.env.NodeName, in)
	c.m.built(err)
	c.logBuild(err)
	st, err := table.Sync(m)
	if err != nil {
		return fmt.Errorf("policy table: %w", err)
	}
	now := time.Now()
	c.m.synced(m, st, now.Sub(start), now)
	lvl := slog.LevelDebug
	if st.Full {
		lvl = slog.LevelInfo
	}
	c.log.Log(context.Background(), lvl, "network policy synced", "full", st.Full, "pods", st.Pods, "sets", st.Sets,
		"elements", st.Elements, "rules", st.Rules, "written", st.Written, "took", now.Sub(start))
	c.answer(m, in.Pods)
	return nil
}

// logBuild logs Build's error when it differs from the last one logged:
// an invalid policy is reported once, not at every sync.
func (c *Controller) logBuild(err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if msg == c.buildErr {
		return
	}
	c.buildErr = msg
	if err != nil {
		c.log.Warn("some policies are invalid: the pods they select stay isolated", "err", err)
	} else {
		c.log.Info("every policy is valid again")
	}
}

// withGated returns pods with the gated addresses of those that have
// none in their status; the gated addresses of a pod whose status has
// some are forgotten.
func (c *Controller) withGated(pods []*corev1.Pod) []*corev1.Pod {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.gated) == 0 {
		return pods
	}
	out := slices.Clone(pods)
	for i, p := range out {
		key := p.Namespace + "/" + p.Name
		g, ok := c.gated[key]
		if !ok || g.uid != string(p.UID) {
			continue
		}
		if len(p.Status.PodIPs) > 0 {
			delete(c.gated, key)
			continue
		}
		p = p.DeepCopy()
		for _, ip := range g.ips {
			p.Status.PodIPs = append(p.Status.PodIPs, corev1.PodIP{IP: ip.String()})
		}
		p.Status.PodIP = p.Status.PodIPs[0].IP
		out[i] = p
	}
	return out
}

// answer releases the gate requests whose pod m holds with their
// addresses, and fails those whose Pod object m was built from (pods)
// but which m does not police.
func (c *Controller) answer(m *policy.Model, pods []*corev1.Pod) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.waiters) == 0 {
		return
	}
	policed := make(map[string][]netip.Addr, len(m.Pods))
	for _, p := range m.Pods {
		policed[p.Namespace+"/"+p.Name] = p.IPs
	}
	objects := map[string]*corev1.Pod{}
	for w := range c.waiters {
		objects[w.key] = nil
	}
	for _, p := range pods {
		if _, ok := objects[p.Namespace+"/"+p.Name]; ok {
			objects[p.Namespace+"/"+p.Name] = p
		}
	}
	for w := range c.waiters {
		ips, ok := policed[w.key]
		if len(w.ips) == 0 || ok && !slices.ContainsFunc(w.ips, func(a netip.Addr) bool { return !slices.Contains(ips, a) }) {
			w.done <- nil
			delete(c.waiters, w)
		} else if p := objects[w.key]; p != nil && string(p.UID) == w.uid {
			w.done <- fmt.Errorf("pod %s is not policed on node %s (node %q, host network %t, phase %s)",
				w.key, c.env.NodeName, p.Spec.NodeName, p.Spec.HostNetwork, p.Status.Phase)
			delete(c.waiters, w)
		}
	}
}

// failWaiters fails every waiting gate request.
func (c *Controller) failWaiters(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for w := range c.waiters {
		w.done <- err
		delete(c.waiters, w)
	}
}

// serveGate answers the CNI plugin's gate requests until ctx ends.
func (c *Controller) serveGate(ctx context.Context, inf *caches) error {
	if err := os.MkdirAll(filepath.Dir(c.cfg.Gate), 0o755); err != nil {
		return fmt.Errorf("policy gate: %w", err)
	}
	c.log.Info("serving the pod gate", "socket", c.cfg.Gate)
	err := gate.Serve(ctx, c.cfg.Gate, func(ctx context.Context, p gate.Pod) error { return c.admit(ctx, inf, p) })
	if err != nil {
		return fmt.Errorf("policy gate: %w", err)
	}
	return nil
}

// admit handles a gate request: it records the pod's addresses, so the
// Model has them before the kubelet writes the pod's status, and returns
// once a sync holding the pod with them is in the kernel, within
// gateWait. A pod whose object does not reach the informer within podWait
// is admitted unpoliced: the table's fail-closed drop holds its traffic.
func (c *Controller) admit(ctx context.Context, inf *caches, p gate.Pod) error {
	if p.Namespace == "" || p.Name == "" || p.UID == "" {
		return fmt.Errorf("policy gate: pod %s/%s (uid %q): namespace, name and uid are required", p.Namespace, p.Name, p.UID)
	}
	key := p.Namespace + "/" + p.Name
	var ips []netip.Addr
	for _, a := range p.IPs {
		if !a.IsValid() {
			return fmt.Errorf("policy gate: pod %s: invalid address", key)
		}
		ips = append(ips, a.Unmap())
	}
	ctx, cancel := context.WithTimeout(ctx, gateWait)
	defer cancel()
	w := &waiter{key: key, uid: p.UID, ips: ips, done: make(chan error, 1)}
	c.mu.Lock()
	if len(ips) > 0 {
		c.gated[key] = gatedPod{uid: p.UID, ips: ips}
	}
	c.waiters[w] = true
	c.mu.Unlock()
	c.q.AddAll()
	err := w.wait(ctx, func() bool {
		pod := inf.pod(key)
		return pod != nil && string(pod.UID) == p.UID
	})
	unseen := errors.Is(err, errUnseen)
	c.mu.Lock()
	delete(c.waiters, w)
	if err != nil && !unseen && c.gated[key].uid == p.UID {
		delete(c.gated, key)
	}
	c.mu.Unlock()
	if unseen {
		// Without its Pod object (the API server unreachable, the informer
		// behind) the agent cannot know the pod's policy, but it need not:
		// the table drops every address of the node's pod subnets that is
		// no known pod's, so the pod passes nothing until the object
		// arrives with the addresses kept here. Failing ADD instead would
		// stop the node from starting pods while the API server is away.
		c.log.Warn("the gate admits a pod the agent has not seen: its traffic is dropped until its Pod object arrives",
			"pod", key, "uid", p.UID, "waited", podWait)
		return nil
	}
	if err != nil {
		c.m.gateErrors.Inc()
		return fmt.Errorf("policy of pod %s: %w", key, err)
	}
	return nil
}

// errUnseen is a gate request's pod not reaching the informer in time.
var errUnseen = errors.New("the Pod did not reach the agent's cache")

// wait returns the answer to w, or an error when ctx ends first or the
// pod is not in the cache (seen) after podWait.
func (w *waiter) wait(ctx context.Context, seen func() bool) error {
	noPod := time.NewTimer(podWait)
	defer noPod.Stop()
	for {
		select {
		case err := <-w.done:
			return err
		case <-noPod.C:
			if !seen() {
				return fmt.Errorf("%w (uid %s) within %s", errUnseen, w.uid, podWait)
			}
		case <-ctx.Done():
			return fmt.Errorf("waiting for the policy sync: %w", ctx.Err())
		}
	}
}

// denied reads the denied packets of the running table; none while no
// table runs.
func (c *Controller) denied() ([]dataplane.Denied, error) {
	t := c.table.Load()
	if t == nil {
		return nil, nil
	}
	return t.Denied()
}

// podCIDRs are the node's pod subnets.
func podCIDRs(n cluster.Node) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range []*net.IPNet{n.Subnet, n.Subnet6} {
		if s == nil {
			continue
		}
		a, ok := netip.AddrFromSlice(s.IP)
		if !ok {
			continue
		}
		ones, _ := s.Mask.Size()
		out = append(out, netip.PrefixFrom(a.Unmap(), ones).Masked())
	}
	return out
}

// caches are what the controller reads: every NetworkPolicy, Pod,
// Namespace (peers live anywhere) and Node (cluster policies' nodes
// peers), and the ClusterNetworkPolicies once
// their CRD is installed.
type caches struct {
	factory    informers.SharedInformerFactory
	policies   cache.SharedIndexInformer
	pods       cache.SharedIndexInformer
	namespaces cache.SharedIndexInformer
	nodes      cache.SharedIndexInformer

	cnp        npaclientset.Interface
	tiers      npainformers.SharedInformerFactory // nil until the CRD is seen
	clusterNPs cache.SharedIndexInformer
}

func (c *Controller) newCaches() *caches {
	// What the controller never reads needs no memory: managed fields are
	// the bulk of a small object.
	trim := func(obj any) (any, error) {
		if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
			m.GetObjectMeta().SetManagedFields(nil)
		}
		return obj, nil
	}
	f := informers.NewSharedInformerFactoryWithOptions(c.client, 0, informers.WithTransform(trim))
	inf := &caches{
		factory:    f,
		policies:   f.Networking().V1().NetworkPolicies().Informer(),
		pods:       f.Core().V1().Pods().Informer(),
		namespaces: f.Core().V1().Namespaces().Informer(),
		nodes:      f.Core().V1().Nodes().Informer(),
		cnp:        c.cnp,
	}
	changed := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.q.AddAll() },
		UpdateFunc: func(any, any) { c.q.AddAll() },
		DeleteFunc: func(any) { c.q.AddAll() },
	}
	// None fails before the informers run.
	_, _ = inf.policies.AddEventHandler(changed)
	_, _ = inf.namespaces.AddEventHandler(changed)
	_, _ = inf.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.q.AddAll() },
		UpdateFunc: func(old, obj any) { nodeChanged(c, old, obj) },
		DeleteFunc: func(any) { c.q.AddAll() },
	})
	_, _ = inf.pods.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.q.AddAll() },
		UpdateFunc: func(old, obj any) { c.podChanged(old, obj) },
		DeleteFunc: func(obj any) {
			c.forget(obj)
			c.q.AddAll()
		},
	})
	return inf
}

// podChanged queues a sync when a change of the pod may change a Model:
// its labels, addresses, phase, node or container ports, not its
// conditions or container statuses, which change often.
func (c *Controller) podChanged(old, obj any) {
	o, ok1 := old.(*corev1.Pod)
	p, ok2 := obj.(*corev1.Pod)
	if ok1 && ok2 && policyEqual(o, p) {
		return
	}
	c.q.AddAll()
}

// policyEqual reports whether two versions of a pod are the same to
// Build.
func policyEqual(a, b *corev1.Pod) bool {
	if a.UID != b.UID || a.Spec.NodeName != b.Spec.NodeName || a.Spec.HostNetwork != b.Spec.HostNetwork ||
		a.Status.Phase != b.Status.Phase || !slices.Equal(a.Status.PodIPs, b.Status.PodIPs) || a.Status.PodIP != b.Status.PodIP ||
		len(a.Labels) != len(b.Labels) || len(a.Spec.Containers) != len(b.Spec.Containers) {
		return false
	}
	for k, v := range a.Labels {
		if w, ok := b.Labels[k]; !ok || w != v {
			return false
		}
	}
	for i := range a.Spec.Containers {
		if !slices.Equal(a.Spec.Containers[i].Ports, b.Spec.Containers[i].Ports) {
			return false
		}
	}
	return true
}

// nodeChanged queues a sync when a change of a Node may change a Model
// (cluster policies' nodes peers): its labels or addresses, not its
// status heartbeats.
func nodeChanged(c *Controller, old, obj any) {
	o, ok1 := old.(*corev1.Node)
	n, ok2 := obj.(*corev1.Node)
	if ok1 && ok2 && maps.Equal(o.Labels, n.Labels) && slices.Equal(o.Status.Addresses, n.Status.Addresses) {
		return
	}
	c.q.AddAll()
}

// forget drops the gated addresses of a deleted pod.
func (c *Controller) forget(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := p.Namespace + "/" + p.Name
	c.mu.Lock()
	if c.gated[key].uid == string(p.UID) {
		delete(c.gated, key)
	}
	c.mu.Unlock()
}

func (inf *caches) start(ctx context.Context) { inf.factory.Start(ctx.Done()) }

func (inf *caches) synced() []cache.InformerSynced {
	return []cache.InformerSynced{inf.policies.HasSynced, inf.pods.HasSynced, inf.namespaces.HasSynced, inf.nodes.HasSynced}
}

// shutdown waits for the informers to stop (their context ended).
func (inf *caches) shutdown() {
	inf.factory.Shutdown()
	if inf.tiers != nil {
		inf.tiers.Shutdown()
	}
}

// clusterNetworkPolicies is the resource of the cluster tiers' CRD.
const clusterNetworkPolicies = "clusternetworkpolicies"

// startTiers starts following the ClusterNetworkPolicies once their CRD
// is installed, and waits for the cache; until then (or without a
// client) the Model has no cluster tiers. The Controller logs the
// absence once.
func (inf *caches) startTiers(ctx context.Context, c *Controller) error {
	if inf.tiers != nil || inf.cnp == nil {
		return nil
	}
	gv := npav1beta1.SchemeGroupVersion.String()
	list, err := c.client.Discovery().ServerResourcesForGroupVersion(gv)
	if err != nil && !apierrors.IsNotFound(err) {
		c.log.Warn("discovery of the cluster network policies failed; retried at the next resync", "group-version", gv, "err", err)
		return nil
	}
	if err != nil || !slices.ContainsFunc(list.APIResources, func(r metav1.APIResource) bool { return r.Name == clusterNetworkPolicies }) {
		if !c.tiersLogged {
			c.tiersLogged = true
			c.log.Info("the ClusterNetworkPolicy CRD is not installed: enforcing NetworkPolicy alone until it is", "group-version", gv)
		}
		return nil
	}
	f := npainformers.NewSharedInformerFactory(inf.cnp, 0)
	inf.clusterNPs = f.Policy().V1beta1().ClusterNetworkPolicies().Informer()
	_, _ = inf.clusterNPs.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { c.q.AddAll() },
		UpdateFunc: func(any, any) { c.q.AddAll() },
		DeleteFunc: func(any) { c.q.AddAll() },
	})
	inf.tiers = f
	f.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.clusterNPs.HasSynced) {
		return ctx.Err()
	}
	c.log.Info("following the ClusterNetworkPolicies (admin and baseline tiers)")
	c.q.AddAll()
	return nil
}

// input is the caches' content.
func (inf *caches) input() policy.Input {
	var in policy.Input
	for _, o := range inf.policies.GetStore().List() {
		in.Policies = append(in.Policies, o.(*networkingv1.NetworkPolicy))
	}
	for _, o := range inf.pods.GetStore().List() {
		in.Pods = append(in.Pods, o.(*corev1.Pod))
	}
	for _, o := range inf.namespaces.GetStore().List() {
		in.Namespaces = append(in.Namespaces, o.(*corev1.Namespace))
	}
	for _, o := range inf.nodes.GetStore().List() {
		in.Nodes = append(in.Nodes, o.(*corev1.Node))
	}
	if inf.clusterNPs != nil {
		for _, o := range inf.clusterNPs.GetStore().List() {
			in.ClusterPolicies = append(in.ClusterPolicies, o.(*npav1beta1.ClusterNetworkPolicy))
		}
	}
	return in
}

// pod is the Pod of key ("namespace/name") in the cache, nil if none.
func (inf *caches) pod(key string) *corev1.Pod {
	o, ok, err := inf.pods.GetStore().GetByKey(key)
	if err != nil || !ok {
		return nil
	}
	return o.(*corev1.Pod)
}
