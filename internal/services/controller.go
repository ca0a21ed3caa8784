// Package services is podnet-agent's service proxy (--service-proxy), a
// replacement of kube-proxy: it follows the Services and EndpointSlices
// of the Kubernetes API with informers, resolves them into the node's
// desired services with kube-proxy's semantics (Build), and programs them
// into one nftables table through package dataplane, one transaction per
// sync, bursts of events coalesced into one sync. It also serves what
// kube-proxy serves: the health check node ports of LoadBalancer Services
// with externalTrafficPolicy Local, and the proxy's /healthz and /livez.
// See docs/services.md.
package services

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/coalesce"
	"github.com/podnet/podnet/internal/services/dataplane"
)

// Defaults of Config.
const (
	DefaultMinSyncInterval = 100 * time.Millisecond
	DefaultHealthAddr      = "0.0.0.0:10256"
)

// Config is the service proxy's configuration.
type Config struct {
	// Enabled runs the proxy; off, the controller only removes a table
	// left from an earlier run.
	Enabled bool
	// NodePortAddresses are the networks whose local addresses serve
	// NodePorts and health check node ports (kube-proxy's
	// --nodeport-addresses); empty: the node's underlay addresses.
	NodePortAddresses []netip.Prefix
	// HealthAddr is where the proxy's /healthz and /livez are served
	// ("" = off), as kube-proxy's --healthz-bind-address.
	HealthAddr string
	// MinSyncInterval is the least time between two syncs: the events of
	// a burst are coalesced (default DefaultMinSyncInterval).
	MinSyncInterval time.Duration
}

// Controller is the service proxy.
type Controller struct {
	env    controller.Env
	client kubernetes.Interface
	cfg    Config
	log    *slog.Logger
	m      *metrics

	q      *coalesce.Queue
	health *proxyHealth
}

// New returns the service proxy of the node env describes, following the
// API through client (nil is allowed when the proxy is off), and
// registers its metrics.
func New(env controller.Env, client kubernetes.Interface, cfg Config) *Controller {
	if cfg.MinSyncInterval <= 0 {
		cfg.MinSyncInterval = DefaultMinSyncInterval
	}
	q := coalesce.New()
	c := &Controller{
		env: env, client: client, cfg: cfg, log: env.Log.With("controller", "service-proxy"),
		m: newMetrics(env.Metrics), q: q,
		// kube-proxy's health timeout: twice its sync period.
		health: &proxyHealth{q: q, timeout: 2 * env.Resync},
	}
	c.health.eligible.Store(true)
	return c
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "service-proxy" }

// Cleanup removes the service table (agent leave, proxy turned off).
func (c *Controller) Cleanup(context.Context) error {
	if err := dataplane.Cleanup(c.env.NetNSFd()); err != nil {
		return fmt.Errorf("service table: %w", err)
	}
	return nil
}

// Run proxies the Services until ctx ends: it waits for the informers'
// caches, then syncs the kernel at once, again at most every
// MinSyncInterval while events come, and fully every resync period. It
// is ready once the caches are synced and the first sync succeeded. With
// the proxy off, it removes a left-over table and is ready.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	if !c.cfg.Enabled {
		if err := c.Cleanup(ctx); err != nil {
			return err
		}
		h.Ready()
		<-ctx.Done()
		return nil
	}
	if c.client == nil {
		return errors.New("the service proxy needs the Kubernetes API (--datastore kubernetes)")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l := listener{ns: c.env.NetNS}
	if c.cfg.HealthAddr != "" {
		srv, err := l.serve(c.health.handler(), c.log, c.cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("proxy health server: %w", err)
		}
		defer srv.close()
	}
	h.NotReady("waiting for the Services, EndpointSlices and Node caches")
	c.q.AddAll()
	inf := c.newCaches()
	inf.start(ctx)
	defer inf.shutdown()
	if !inf.waitSynced(ctx) {
		return nil
	}
	table, err := dataplane.New(dataplane.Config{
		NetNSFd: c.env.NetNSFd(), ClusterCIDRs: c.clusterCIDRs(), NodePortAddresses: c.nodePortAddresses(),
	})
	if err != nil {
		return fmt.Errorf("service table: %w", err)
	}
	defer table.Close()
	hc := &healthChecks{l: l, log: c.log, health: c.health, hosts: c.nodePortHosts, servers: map[string]*serviceHealth{}}
	defer hc.closeAll()
	return c.loop(ctx, h, inf, table, hc)
}

// loop syncs until ctx ends.
func (c *Controller) loop(ctx context.Context, h *controller.Health, inf *caches, table *dataplane.Table, hc *healthChecks) error {
	resync := time.NewTicker(c.env.Resync)
	defer resync.Stop()
	results := map[string]Result{}
	checks := map[string]healthCheck{}
	var last time.Time
	var retry <-chan time.Time
	backoff := time.Second
	synced := false
	full := true // the table needs every service: the first sync, and after a failure
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.q.Wake():
		case <-resync.C:
			c.q.AddAll()
		case <-retry:
		}
		// Coalesce: at most one sync per MinSyncInterval.
		if wait := time.Until(last.Add(c.cfg.MinSyncInterval)); wait > 0 {
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
		err := c.sync(b, inf, state{results, checks, full}, table, hc)
		retry = nil
		full = err != nil
		if err != nil {
			c.q.PutBack(b)
			c.m.errors.Inc()
			c.log.Error("service proxy sync failed; retrying", "err", err, "in", backoff)
			h.NotReady("sync failed: %v", err)
			retry = time.After(backoff)
			backoff = min(2*backoff, 30*time.Second)
			continue
		}
		backoff = time.Second
		if !synced {
			synced = true
			c.log.Info("service proxy synced: ready")
		}
		h.Ready()
	}
}

// state is what the sync loop keeps across syncs: every proxied
// Service's Result and health check, and whether the table needs all of
// them (a full sync).
type state struct {
	results map[string]Result
	checks  map[string]healthCheck
	full    bool
}

// sync updates the state with the Services of b and converges the kernel
// and the health check servers to it: the table gets only the changed
// Services' ports, or every Service's when st.full.
func (c *Controller) sync(b coalesce.Batch, inf *caches, s state, table *dataplane.Table, hc *healthChecks) error {
	start := time.Now()
	node := inf.node(c.env.NodeName)
	node.IPs = c.nodeIPs()
	keys := b.Keys
	if b.All {
		keys = map[string]bool{}
		for k := range s.results {
			keys[k] = true
		}
		for _, k := range inf.services.GetStore().ListKeys() {
			keys[k] = true
		}
	}
	var changed []dataplane.Service
	var removed []string
	for key := range keys {
		r, ok, err := inf.build(key, node)
		if err != nil {
			return err
		}
		old := s.results[key]
		if ok {
			s.results[key] = r
			if len(r.IgnoredSourceRanges) > 0 && !slices.Equal(r.IgnoredSourceRanges, old.IgnoredSourceRanges) {
				// Once per change, not per sync, as the Service is.
				c.log.Warn("invalid loadBalancerSourceRanges ignored", "service", key, "ranges", r.IgnoredSourceRanges)
			}
		} else {
			delete(s.results, key)
		}
		changed = append(changed, r.Ports...)
		removed = append(removed, gone(old.Ports, r.Ports)...)
		if r.HealthCheckNodePort != 0 {
			s.checks[key] = healthCheck{Port: r.HealthCheckNodePort, LocalEndpoints: r.LocalReady}
		} else {
			delete(s.checks, key)
		}
		c.m.service(key, r, ok && len(r.Ports) > 0)
	}
	var st dataplane.Stats
	var err error
	if s.full {
		var want []dataplane.Service
		for _, r := range s.results {
			want = append(want, r.Ports...)
		}
		st, err = table.Sync(want)
	} else {
		st, err = table.Update(changed, removed)
	}
	if err != nil {
		return fmt.Errorf("service table: %w", err)
	}
	now := time.Now()
	c.health.lastSync.Store(now.UnixNano())
	c.m.synced(st, now.Sub(start), now)
	lvl := slog.LevelDebug
	if st.Full {
		lvl = slog.LevelInfo
	}
	c.log.Log(context.Background(), lvl, "services synced", "full", st.Full, "services", st.Services, "endpoints", st.Endpoints,
		"written", st.Written, "conntrack-flushed", st.ConntrackFlushed, "took", now.Sub(start))
	if err := hc.sync(s.checks); err != nil {
		// A health check port taken by another program: reported, and
		// tried again at the next sync; the traffic is programmed.
		c.log.Error("health check node ports", "err", err)
	}
	return nil
}

// gone returns the IDs of the ports of old that are not in ports.
func gone(old, ports []dataplane.Service) []string {
	var out []string
	for i := range old {
		id := old[i].ID()
		if !slices.ContainsFunc(ports, func(p dataplane.Service) bool { return p.ID() == id }) {
			out = append(out, id)
		}
	}
	return out
}

// clusterCIDRs are the cluster's pod networks.
func (c *Controller) clusterCIDRs() []netip.Prefix {
	var out []netip.Prefix
	for _, n := range c.env.Cluster.CIDRs() {
		if p, ok := prefixOf(n); ok {
			out = append(out, p)
		}
	}
	return out
}

// nodePortAddresses are the configured networks of the node ports, by
// default the node's underlay addresses.
func (c *Controller) nodePortAddresses() []netip.Prefix {
	if len(c.cfg.NodePortAddresses) > 0 {
		return c.cfg.NodePortAddresses
	}
	var out []netip.Prefix
	for _, a := range c.nodeIPs() {
		out = append(out, netip.PrefixFrom(a, a.BitLen()))
	}
	return out
}

// nodeIPs are the node's underlay addresses, its primary ones.
func (c *Controller) nodeIPs() []netip.Addr {
	var out []netip.Addr
	for _, ip := range []net.IP{c.env.Underlay.IP, c.env.Underlay.IP6} {
		if a, ok := netip.AddrFromSlice(ip); ok && ip != nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// nodePortHosts are the addresses the health check servers listen on:
// the node's local addresses inside the node-port networks (the
// wildcard address of a family when a network covers it all).
func (c *Controller) nodePortHosts() ([]string, error) {
	prefixes := c.nodePortAddresses()
	var hosts []string
	wild := map[bool]bool{} // by is-IPv6
	for _, p := range prefixes {
		if p.Bits() == 0 && !wild[p.Addr().Is6()] {
			wild[p.Addr().Is6()] = true
			hosts = append(hosts, map[bool]string{false: "0.0.0.0", true: "::"}[p.Addr().Is6()])
		}
	}
	hd, err := c.env.NetlinkHandle()
	if err != nil {
		return nil, err
	}
	defer hd.Close()
	addrs, err := hd.AddrList(nil, 0)
	if err != nil {
		return nil, fmt.Errorf("the node's addresses: %w", err)
	}
	for _, a := range addrs {
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		if wild[ip.Is6()] || ip.IsLinkLocalUnicast() {
			continue
		}
		if slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(ip) }) && !slices.Contains(hosts, ip.String()) {
			hosts = append(hosts, ip.String())
		}
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("no local address in the node-port networks %v", prefixes)
	}
	return hosts, nil
}

func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, _ := n.Mask.Size()
	return netip.PrefixFrom(a.Unmap(), ones).Masked(), true
}

// caches are what the proxy reads: the Services and
// EndpointSlices no other proxy handles (kube-proxy's label selector),
// the slices indexed by their Service, and this node's Node.
type caches struct {
	factories []informers.SharedInformerFactory
	services  cache.SharedIndexInformer
	slices    cache.SharedIndexInformer
	nodes     cache.SharedIndexInformer
}

// byService indexes EndpointSlices by their Service's key.
const byService = "service"

func (c *Controller) newCaches() *caches {
	noProxyName, _ := labels.NewRequirement(LabelServiceProxyName, selection.DoesNotExist, nil)
	noHeadless, _ := labels.NewRequirement(corev1.IsHeadlessService, selection.DoesNotExist, nil)
	selector := labels.NewSelector().Add(*noProxyName, *noHeadless).String()
	// What the proxy never reads needs no memory: managed fields are the
	// bulk of a small object.
	trim := informers.WithTransform(func(obj any) (any, error) {
		if m, ok := obj.(metav1.ObjectMetaAccessor); ok {
			m.GetObjectMeta().SetManagedFields(nil)
		}
		return obj, nil
	})
	objs := informers.NewSharedInformerFactoryWithOptions(c.client, 0, trim,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = selector }))
	node := informers.NewSharedInformerFactoryWithOptions(c.client, 0, trim,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", c.env.NodeName).String()
		}))
	inf := &caches{
		factories: []informers.SharedInformerFactory{objs, node},
		services:  objs.Core().V1().Services().Informer(),
		slices:    objs.Discovery().V1().EndpointSlices().Informer(),
		nodes:     node.Core().V1().Nodes().Informer(),
	}
	// Neither fails before the informers run.
	_ = inf.slices.AddIndexers(cache.Indexers{byService: func(obj any) ([]string, error) {
		if k := sliceService(obj); k != "" {
			return []string{k}, nil
		}
		return nil, nil
	}})
	_, _ = inf.services.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.q.Add(objectKey(obj)) },
		UpdateFunc: func(_, obj any) { c.q.Add(objectKey(obj)) },
		DeleteFunc: func(obj any) { c.q.Add(objectKey(obj)) },
	})
	_, _ = inf.slices.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.q.Add(sliceService(obj)) },
		UpdateFunc: func(old, obj any) { c.q.Add(sliceService(old), sliceService(obj)) },
		DeleteFunc: func(obj any) { c.q.Add(sliceService(obj)) },
	})
	_, _ = inf.nodes.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { c.nodeChanged(nil, obj) },
		UpdateFunc: c.nodeChanged,
	})
	return inf
}

// nodeChanged follows this node's Node: its zone decides the topology of
// every Service, its deletion the proxy's /healthz.
func (c *Controller) nodeChanged(old, obj any) {
	n, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	eligible := n.DeletionTimestamp == nil && !slices.ContainsFunc(n.Spec.Taints, func(t corev1.Taint) bool { return t.Key == ToBeDeletedTaint })
	c.health.eligible.Store(eligible)
	if o, ok := old.(*corev1.Node); !ok || o.Labels[corev1.LabelTopologyZone] != n.Labels[corev1.LabelTopologyZone] {
		c.q.AddAll()
	}
}

func (inf *caches) start(ctx context.Context) {
	for _, f := range inf.factories {
		f.Start(ctx.Done())
	}
}

func (inf *caches) waitSynced(ctx context.Context) bool {
	return cache.WaitForCacheSync(ctx.Done(), inf.services.HasSynced, inf.slices.HasSynced, inf.nodes.HasSynced)
}

// shutdown waits for the informers to stop (their context ended).
func (inf *caches) shutdown() {
	for _, f := range inf.factories {
		f.Shutdown()
	}
}

// node is what the model needs of this node, from the Node's cache.
func (inf *caches) node(name string) Node {
	n := Node{Name: name}
	if obj, ok, err := inf.nodes.GetStore().GetByKey(name); err == nil && ok {
		n.Zone = obj.(*corev1.Node).Labels[corev1.LabelTopologyZone]
	}
	return n
}

// build resolves the Service key from the caches; false when the Service
// is gone.
func (inf *caches) build(key string, node Node) (Result, bool, error) {
	obj, ok, err := inf.services.GetStore().GetByKey(key)
	if err != nil {
		return Result{}, false, fmt.Errorf("service %s: %w", key, err)
	}
	if !ok {
		return Result{}, false, nil
	}
	objs, err := inf.slices.GetIndexer().ByIndex(byService, key)
	if err != nil {
		return Result{}, false, fmt.Errorf("endpoint slices of %s: %w", key, err)
	}
	sls := make([]*discoveryv1.EndpointSlice, len(objs))
	for i, o := range objs {
		sls[i] = o.(*discoveryv1.EndpointSlice)
	}
	return Build(obj.(*corev1.Service), sls, node), true, nil
}

// objectKey is an object's "namespace/name", also of a deleted one.
func objectKey(obj any) string {
	k, _ := cache.DeletionHandlingMetaNamespaceKeyFunc(obj)
	return k
}

// sliceService is the key of an EndpointSlice's Service, "" for none.
func sliceService(obj any) string {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = d.Obj
	}
	sl, ok := obj.(*discoveryv1.EndpointSlice)
	if !ok || sl.Labels[discoveryv1.LabelServiceName] == "" {
		return ""
	}
	return sl.Namespace + "/" + sl.Labels[discoveryv1.LabelServiceName]
}

// splitKey splits a Service key into namespace and name.
func splitKey(key string) (string, string) {
	ns, name, _ := strings.Cut(key, "/")
	return ns, name
}
