// Package membership is the agent's controller of the node's membership in
// the cluster: it joins through the datastore (the node's pod subnets and
// record), keeps the membership alive, publishes what the fabric needs the
// peers to know (the VTEP MAC), and follows the other nodes. It produces
// the Self and Peers Vars every other controller builds on.
package membership

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"
)

// Controller is the membership controller.
type Controller struct {
	env     controller.Env
	store   datastore.Store
	dataDir string
	log     *slog.Logger

	subnetChanges prometheus.Counter
	lost          prometheus.Counter

	mu      sync.Mutex
	joined  time.Time
	changes int
}

// New returns the membership controller of env's node in store; dataDir
// keeps the node's last subnets (and VTEP MAC), so a node whose membership
// expired while it was down asks for the same subnets again.
func New(env controller.Env, store datastore.Store, dataDir string) *Controller {
	c := &Controller{
		env: env, store: store, dataDir: dataDir, log: env.Log.With("controller", "membership"),
		subnetChanges: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_subnet_changes_total",
			Help: "Times the node's membership was lost and came back with other pod subnets.",
		}),
	}
	c.lost = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podnet_agent_membership_lost_total",
		Help: "Times the datastore stopped confirming the node's membership within its grace (unreachable, or the lease lost).",
	})
	env.Metrics.MustRegister(c.subnetChanges, c.lost)
	return c
}

// Name implements controller.Controller.
func (c *Controller) Name() string { return "membership" }

// Run joins the cluster, then keeps the membership alive, publishes the
// node's VTEP MAC whenever the fabric changes it, and follows the peers.
func (c *Controller) Run(ctx context.Context, h *controller.Health) error {
	h.NotReady("joining the cluster")
	// A datastore that waits for something outside the agent says what.
	jctx := datastore.WithWaitReporter(ctx, func(what string) { h.NotReady("joining the cluster: waiting for %s", what) })
	mem, err := c.join(jctx)
	if err != nil {
		return err
	}
	h.Ready()
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return mem.Run(ctx, c.changed) })
	g.Go(func() error {
		return c.store.WatchNodes(ctx, func(nodes []cluster.Node) { c.env.Peers.Set(nodes) })
	})
	g.Go(func() error { return c.publish(ctx, mem) })
	g.Go(func() error { return c.watchHealth(ctx, h, mem) })
	return g.Wait()
}

// healthPeriod is how often the membership's health is checked.
const healthPeriod = time.Second

// watchHealth reports the controller not ready while the datastore has not
// confirmed the membership within its grace, and logs and counts each loss
// and recovery: the node's routes stay as they are meanwhile, but its
// peers may drop its subnet.
func (c *Controller) watchHealth(ctx context.Context, h *controller.Health, mem datastore.Membership) error {
	t := time.NewTicker(healthPeriod)
	defer t.Stop()
	lost := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		switch err := mem.Healthy(); {
		case err != nil && !lost:
			lost = true
			c.lost.Inc()
			c.log.Error("the datastore no longer confirms the node's membership", "err", err)
			h.NotReady("%v", err)
		case err != nil:
			h.NotReady("%v", err)
		case lost:
			lost = false
			c.log.Info("the datastore confirms the node's membership again")
			h.Ready()
		}
	}
}

// join takes the node's membership, asking for its last subnets, and
// publishes the record.
func (c *Controller) join(ctx context.Context) (datastore.Membership, error) {
	last := c.loadLast()
	ul := c.env.Underlay
	// A restarted agent republishes its VTEP MAC with the membership, so
	// its peers never see its record without one (and never drop its
	// routes); the fabric corrects it if it changed.
	self := cluster.Node{Name: c.env.NodeName, IP: ul.IP, IP6: ul.IP6, VTEPMAC: last.VTEPMAC}
	mem, err := c.store.Join(ctx, self, last)
	if err != nil {
		return nil, fmt.Errorf("join the cluster: %w", err)
	}
	node := mem.Node()
	c.mu.Lock()
	c.joined = time.Now()
	c.mu.Unlock()
	c.log.Info("joined", "subnet", node.Subnet, "subnet6", node.Subnet6)
	c.saveLast(node)
	c.env.Self.Set(node)
	return mem, nil
}

// changed follows a membership that was lost and taken again: everything
// that depends on the node's subnets follows Self.
func (c *Controller) changed(old, cur cluster.Node) {
	if sameSubnets(old, cur) {
		c.log.Info("membership taken again with the same subnets", "subnet", cur.Subnet, "subnet6", cur.Subnet6)
	} else {
		c.subnetChanges.Inc()
		c.mu.Lock()
		c.changes++
		c.mu.Unlock()
		c.log.Error("membership came back with other pod subnets: another node took the old ones while it was lost; "+
			"the fabric and the CNI configuration follow, and pods that still hold addresses of the old subnets must be recreated",
			"old", old.Subnet, "old6", old.Subnet6, "new", cur.Subnet, "new6", cur.Subnet6)
	}
	c.saveLast(cur)
	c.env.Self.Set(cur)
}

// publish writes the node's record once the fabric is set up (the
// datastore may take that as the node's network being up) and again
// whenever the fabric's Local differs from it, retrying with backoff until
// it is written.
func (c *Controller) publish(ctx context.Context, mem datastore.Membership) error {
	retry := time.Second
	published := false
	for {
		local, ok, changed := c.env.Local.Load()
		var wait <-chan time.Time
		if ok {
			node := mem.Node()
			if mac := macString(local.VTEPMAC); mac != node.VTEPMAC || !published {
				node.VTEPMAC = mac
				if err := mem.Update(ctx, node); err != nil {
					c.log.Warn("publishing the VTEP MAC failed; retrying", "err", err, "in", retry)
					wait = time.After(retry)
					retry = min(2*retry, 30*time.Second)
				} else {
					published = true
					retry = time.Second
					c.saveLast(node)
					c.env.Self.Set(node)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		case <-wait:
		}
	}
}

// Cleanup takes the node out of the cluster: its membership is taken over
// and released, so every other node drops its routes at once instead of
// after the grace period, and the remembered subnets are forgotten. Self
// holds the node's last record, for the cleanups that follow. Without a
// store (the datastore is unreachable) only the local state goes.
func (c *Controller) Cleanup(ctx context.Context) error {
	last := c.loadLast()
	ul := c.env.Underlay
	var errs []error
	if c.store != nil {
		// A Join that has to wait (for subnets from elsewhere) finds a
		// node that never published anything: there is nothing to release.
		jctx, cancel := context.WithCancel(ctx)
		waited := false
		jctx = datastore.WithWaitReporter(jctx, func(string) { waited = true; cancel() })
		mem, err := c.store.Join(jctx, cluster.Node{Name: c.env.NodeName, IP: ul.IP, IP6: ul.IP6}, last)
		cancel()
		switch {
		case err == nil:
			last = mem.Node()
			err = mem.Release(ctx)
		case waited && ctx.Err() == nil:
			c.log.Info("the node holds no subnets yet: nothing to release")
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("release the membership: %w", err))
		}
	}
	c.env.Self.Set(last)
	if err := os.Remove(c.lastFile()); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// FillStatus implements controller.StatusFiller.
func (c *Controller) FillStatus(st *cluster.NodeStatus) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st.Joined = c.joined
	st.SubnetChanges = c.changes
}

func sameSubnets(a, b cluster.Node) bool {
	return a.Subnet.String() == b.Subnet.String() && a.Subnet6.String() == b.Subnet6.String()
}

func macString(mac net.HardwareAddr) string {
	if mac == nil {
		return ""
	}
	return mac.String()
}

// last is what the node remembers of its membership across restarts.
type last struct {
	Subnet  string `json:"subnet,omitempty"`
	Subnet6 string `json:"subnet6,omitempty"`
	VTEPMAC string `json:"vtepMAC,omitempty"`
}

func (c *Controller) lastFile() string { return filepath.Join(c.dataDir, "lease.json") }

// loadLast reads the remembered subnets and VTEP MAC; anything unreadable
// is ignored (the node then gets free subnets).
func (c *Controller) loadLast() cluster.Node {
	var n cluster.Node
	b, err := os.ReadFile(c.lastFile())
	if err != nil {
		return n
	}
	var l last
	if json.Unmarshal(b, &l) != nil {
		return n
	}
	if _, s, err := net.ParseCIDR(l.Subnet); err == nil {
		n.Subnet = s
	}
	if _, s, err := net.ParseCIDR(l.Subnet6); err == nil {
		n.Subnet6 = s
	}
	if _, err := net.ParseMAC(l.VTEPMAC); err == nil {
		n.VTEPMAC = l.VTEPMAC
	}
	return n
}

func (c *Controller) saveLast(n cluster.Node) {
	l := last{VTEPMAC: n.VTEPMAC}
	if n.Subnet != nil {
		l.Subnet = n.Subnet.String()
	}
	if n.Subnet6 != nil {
		l.Subnet6 = n.Subnet6.String()
	}
	b, _ := json.Marshal(l)
	if _, err := atomicfile.Write(c.lastFile(), b, 0o644); err != nil {
		c.log.Warn("cannot remember the node's subnets", "err", err)
	}
}
