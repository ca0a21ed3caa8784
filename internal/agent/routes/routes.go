// Package routes is the agent's controller of cross-node connectivity: it
// builds the fabric backend for the node's subnets, publishes what the
// peers need (the VTEP MAC) and the pod MTU, and converges the node's
// routes, neighbours and FDB entries to exactly the live peers on every
// change of the peers, every disturbance of its kernel state and every
// resync period. When the node's subnets change, it rebuilds the backend.
package routes

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/fabric"
	"github.com/podnet/podnet/internal/fabric/routed"
)

// Controller is the routes controller.
type Controller struct {
	env controller.Env
	log *slog.Logger

	peers           prometheus.Gauge
	routes          *prometheus.GaugeVec
	reconcile       prometheus.Histogram
	reconcileErrors prometheus.Counter
	refusedPeers    prometheus.Gauge

	mu         sync.Mutex
	refused    map[string]string // peer name → why it is refused, as last logged
	backends   map[string]cluster.Backend
	npeers     int
	peersSince map[string]time.Time
}

// New returns the routes controller and registers its metrics.
func New(env controller.Env) *Controller {
	c := &Controller{
		env: env, log: env.Log.With("controller", "routes"),
		peersSince: map[string]time.Time{},
		peers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_agent_peers", Help: "Other nodes this node is connected to.",
		}),
		routes: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "podnet_agent_peer_routes", Help: "Peers reached per backend (host-gw or vxlan).",
		}, []string{"backend"}),
		reconcile: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "podnet_agent_reconcile_seconds", Help: "Duration of a reconcile of the node's routes to its peers.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_reconcile_errors_total", Help: "Reconciles of the node's routes that ended with an error.",
		}),
		refusedPeers: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podnet_agent_peers_refused", Help: "Node records this node refuses to route to (bad or conflicting subnets).",
		}),
	}
	env.Metrics.MustRegister(c.peers, c.routes, c.reconcile, c.reconcileErrors, c.refusedPeers)
	return c
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "routes" }

// newBackend builds the fabric backend of the cluster's configuration for
// the node's subnets. A new backend type (BGP) is one more case here.
func (c *Controller) newBackend(self cluster.Node) (fabric.Backend, error) {
	ul, cl := c.env.Underlay, c.env.Cluster
	switch cl.Backend {
	case cluster.Auto, cluster.HostGW, cluster.VXLAN:
		return routed.New(routed.Config{
			Mode: cl.Backend, Underlay: ul.Name, LocalIP: ul.IP, LocalIP6: ul.IP6,
			Subnet: self.Subnet, Subnet6: self.Subnet6, VNI: cl.VNI, Port: cl.VXLANPort, MTU: cl.MTU,
			NetNS: c.env.NetNS,
		}, nil)
	}
	return nil, fmt.Errorf("unknown backend %q", cl.Backend)
}

// Run waits for the node's subnets, then runs a backend for them until ctx
// ends; when the subnets change, the backend is rebuilt for the new ones.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	h.NotReady("waiting for the node's subnets")
	for {
		self, err := c.env.Self.Wait(ctx)
		if err != nil {
			return nil
		}
		next, err := c.runBackend(ctx, h, self)
		if err != nil || ctx.Err() != nil {
			return err
		}
		c.log.Info("the node's subnets changed; rebuilding the fabric", "subnet", next.Subnet, "subnet6", next.Subnet6)
	}
}

// runBackend sets up and reconciles a backend for self's subnets until ctx
// ends (nil) or Self holds other subnets (it returns the new record).
func (c *Controller) runBackend(ctx context.Context, h *controller.Health, self cluster.Node) (cluster.Node, error) {
	fab, err := c.newBackend(self)
	if err != nil {
		return cluster.Node{}, err
	}
	defer fab.Close()
	local, err := fab.Setup()
	if err != nil {
		return cluster.Node{}, err
	}
	mtu, err := fab.PodMTU()
	if err != nil {
		return cluster.Node{}, fmt.Errorf("pod MTU: %w", err)
	}
	c.env.Local.Set(local)
	c.env.PodMTU.Set(mtu)

	// Subscribed before the first reconcile, so no disturbance is missed;
	// the watch ends with wctx.
	wctx, stop := context.WithCancel(ctx)
	defer stop()
	watch, err := fab.Subscribe(wctx)
	if err != nil {
		return cluster.Node{}, err
	}
	kick := make(chan struct{}, 1)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- watch.Run(func() {
			select {
			case kick <- struct{}{}:
			default:
			}
		})
	}()
	watching := true
	defer func() {
		stop()
		if watching {
			<-watchDone
		}
	}()

	resync := time.NewTicker(c.env.Resync)
	defer resync.Stop()
	for {
		peers, havePeers, peersChanged := c.env.Peers.Load()
		cur, _, selfChanged := c.env.Self.Load()
		if !sameSubnets(cur, self) {
			return cur, nil
		}
		if havePeers {
			c.converge(h, fab, peers)
		} else {
			// Converging to no peers would drop the routes a restarted
			// agent found in place, before it knows the peers.
			h.NotReady("waiting for the list of peers")
		}
		select {
		case <-ctx.Done():
			return cluster.Node{}, nil
		case err := <-watchDone:
			watching = false
			return cluster.Node{}, err
		case <-peersChanged:
		case <-selfChanged:
		case <-kick:
		case <-resync.C:
		}
	}
}

// converge reconciles the backend with the peers and reports the outcome.
func (c *Controller) converge(h *controller.Health, fab fabric.Backend, nodes []cluster.Node) {
	start := time.Now()
	peers := c.peersOf(nodes)
	res, err := fab.Reconcile(peers)
	took := time.Since(start)
	c.reconcile.Observe(took.Seconds())
	c.peers.Set(float64(len(peers)))
	counts := map[cluster.Backend]int{cluster.HostGW: 0, cluster.VXLAN: 0}
	for _, m := range res.Backends {
		counts[m]++
	}
	for m, n := range counts {
		c.routes.WithLabelValues(string(m)).Set(float64(n))
	}
	c.record(res, len(peers))
	if len(res.Pending) > 0 {
		// A node that just joined publishes its VTEP MAC right after;
		// that update triggers the next reconcile.
		c.log.Debug("peers without a VTEP MAC yet", "peers", res.Pending)
	}
	if err != nil {
		c.reconcileErrors.Inc()
		h.NotReady("reconcile: %v", err)
		c.log.Error("reconcile", "err", err, "took", took)
		return
	}
	h.Ready()
	if res.Added > 0 || res.Removed > 0 {
		c.log.Info("reconciled", "peers", len(peers), "added", res.Added, "removed", res.Removed, "took", took)
	}
}

// peersOf turns the other nodes' records into fabric peers. A record the
// node must not route is refused, logged when its refusal is new, and
// counted: a subnet outside the cluster CIDR or not of the node subnet
// size (0.0.0.0/1 would override the default route), one that overlaps
// this node's own subnets or another peer's (then every claimant is
// refused: the datastore let two nodes claim it, and neither claim can be
// trusted), or a malformed VTEP MAC.
func (c *Controller) peersOf(nodes []cluster.Node) []fabric.Peer {
	self, _, _ := c.env.Self.Load()
	refused := map[string]string{}
	var cands []fabric.Peer
	for _, n := range nodes {
		if n.Name == c.env.NodeName {
			continue
		}
		p := fabric.Peer{Name: n.Name, IP: n.IP, IP6: n.IP6, Subnet: n.Subnet, Subnet6: n.Subnet6}
		if why := c.checkSubnets(self, n); why != "" {
			refused[n.Name] = why
			continue
		}
		if n.VTEPMAC != "" {
			mac, err := net.ParseMAC(n.VTEPMAC)
			if err != nil {
				refused[n.Name] = fmt.Sprintf("malformed VTEP MAC %q", n.VTEPMAC)
				continue
			}
			p.VTEPMAC = mac
		}
		cands = append(cands, p)
	}
	// Checked subnets are aligned and of one size per family: two overlap
	// only when they are equal.
	claims := map[string][]string{}
	for _, p := range cands {
		for _, sn := range []*net.IPNet{p.Subnet, p.Subnet6} {
			if sn != nil {
				claims[sn.String()] = append(claims[sn.String()], p.Name)
			}
		}
	}
	var out []fabric.Peer
	for _, p := range cands {
		clash := ""
		for _, sn := range []*net.IPNet{p.Subnet, p.Subnet6} {
			if sn != nil && len(claims[sn.String()]) > 1 {
				clash = fmt.Sprintf("subnet %s is claimed by %v", sn, claims[sn.String()])
			}
		}
		if clash != "" {
			refused[p.Name] = clash
			continue
		}
		out = append(out, p)
	}
	c.mu.Lock()
	for name, why := range refused {
		if c.refused[name] != why {
			c.log.Error("refusing to route to a peer", "peer", name, "why", why)
		}
	}
	c.refused = refused
	c.mu.Unlock()
	c.refusedPeers.Set(float64(len(refused)))
	return out
}

// checkSubnets says why n's subnets must not be routed to, or "".
func (c *Controller) checkSubnets(self, n cluster.Node) string {
	if n.Subnet == nil && n.Subnet6 == nil {
		return "no pod subnet"
	}
	cl := c.env.Cluster
	for _, f := range []struct {
		sn, own    *net.IPNet
		cidr       string
		size       int
		field, fam string
	}{
		{n.Subnet, self.Subnet, cl.ClusterCIDR, cl.SubnetSize, "subnet", "IPv4"},
		{n.Subnet6, self.Subnet6, cl.ClusterCIDR6, cl.SubnetSize6, "subnet6", "IPv6"},
	} {
		if f.sn == nil {
			continue
		}
		_, cidr, err := net.ParseCIDR(f.cidr)
		if err != nil {
			return fmt.Sprintf("%s %s: the cluster has no %s CIDR", f.field, f.sn, f.fam)
		}
		ones, bits := f.sn.Mask.Size()
		cbits := len(cidr.IP) * 8
		if bits != cbits || ones != f.size || !cidr.Contains(f.sn.IP) {
			return fmt.Sprintf("%s %s is not a /%d of the cluster CIDR %s", f.field, f.sn, f.size, cidr)
		}
		if cluster.Overlaps(f.sn, f.own) {
			return fmt.Sprintf("%s %s is this node's own", f.field, f.sn)
		}
	}
	return ""
}

// record keeps what the status reports: the backend per peer and when the
// routes to each peer were first in place.
func (c *Controller) record(res fabric.Result, npeers int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.backends = res.Backends
	c.npeers = npeers
	now := time.Now()
	for name := range res.Backends {
		if _, ok := c.peersSince[name]; !ok {
			c.peersSince[name] = now
		}
	}
	for name := range c.peersSince {
		if _, ok := res.Backends[name]; !ok {
			delete(c.peersSince, name)
		}
	}
}

// FillStatus implements controller.StatusFiller, with copies of the maps
// the next reconcile changes.
func (c *Controller) FillStatus(st *cluster.NodeStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.Backends = maps.Clone(c.backends)
	st.Peers = c.npeers
	st.PeersSince = maps.Clone(c.peersSince)
}

// Cleanup removes everything the fabric installed (routes, the VXLAN
// device with its neighbour and FDB entries), for the node's last subnets.
func (c *Controller) Cleanup(context.Context) error {
	self, ok, _ := c.env.Self.Load()
	if !ok || (self.Subnet == nil && self.Subnet6 == nil) {
		return nil
	}
	fab, err := c.newBackend(self)
	if err != nil {
		return err
	}
	defer fab.Close()
	return fab.Teardown()
}

func sameSubnets(a, b cluster.Node) bool {
	return a.Subnet.String() == b.Subnet.String() && a.Subnet6.String() == b.Subnet6.String()
}
