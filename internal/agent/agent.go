package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/fabric"
	"github.com/podnet/podnet/internal/nft/egress"
	"github.com/podnet/podnet/internal/plugins/all"
)

// Agent is one node's daemon.
type Agent struct {
	cfg     Config
	log     *slog.Logger
	metrics *metrics

	mu      sync.Mutex
	status  cluster.NodeStatus
	leased  bool
	fabOK   bool
	confOK  bool
	lastErr error
}

// New returns an agent for a validated configuration.
func New(cfg Config, log *slog.Logger) (*Agent, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.CNIBinary == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("locate podnet-cni: %w", err)
		}
		cfg.CNIBinary = filepath.Join(filepath.Dir(exe), "podnet-cni")
	}
	return &Agent{cfg: cfg, log: log, metrics: newMetrics()}, nil
}

// Status returns what the agent has built so far.
func (a *Agent) Status() cluster.NodeStatus {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// notReady says why the agent is not ready, or "" when it is.
func (a *Agent) notReady() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var why []string
	if !a.leased {
		why = append(why, "no subnet lease")
	}
	if !a.fabOK {
		why = append(why, "fabric not reconciled")
	}
	if !a.confOK {
		why = append(why, "CNI configuration not written")
	}
	if len(why) > 0 && a.lastErr != nil {
		why = append(why, "last error: "+a.lastErr.Error())
	}
	return strings.Join(why, "; ")
}

func (a *Agent) datastoreConfig(ip net.IP) datastore.Config {
	c := datastore.Config{
		Endpoints: a.cfg.EtcdEndpoints,
		CAFile:    a.cfg.EtcdCAFile,
		CertFile:  a.cfg.EtcdCertFile,
		KeyFile:   a.cfg.EtcdKeyFile,
		Prefix:    a.cfg.Prefix,
	}
	if a.cfg.Datastore == "embedded" {
		client := a.cfg.EtcdClientURL
		if client == "" {
			client = "http://" + net.JoinHostPort(ip.String(), "2379")
		}
		peer := a.cfg.EtcdPeerURL
		if peer == "" {
			peer = "http://127.0.0.1:2380"
		}
		c.Endpoints = nil
		c.Embed = &datastore.EmbedConfig{
			Name:      a.cfg.NodeName,
			DataDir:   filepath.Join(a.cfg.DataDir, "etcd"),
			ClientURL: client,
			PeerURL:   peer,
		}
	}
	return c
}

// Run brings the node into the cluster network and keeps it converged
// until ctx ends. Ending leaves the kernel as it is, so pods keep their
// connectivity across an agent restart; Leave is the way out.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)
	if a.cfg.Listen != "" {
		go func() { errc <- a.serve(ctx, a.cfg.Listen) }()
	}

	ul, err := a.underlay()
	if err != nil {
		return err
	}
	a.log.Info("underlay", "iface", ul.Name, "ip", ul.IP, "ip6", ul.IP6, "mtu", ul.MTU)

	store, err := datastore.Open(ctx, a.datastoreConfig(ul.IP))
	if err != nil {
		return err
	}
	defer store.Close()
	clusterCfg, diffs, err := store.EnsureClusterConfig(ctx, a.cfg.Cluster)
	if err != nil {
		return fmt.Errorf("cluster configuration: %w", err)
	}
	for _, d := range diffs {
		a.log.Warn("the cluster's stored configuration wins over this agent's", "difference", d)
	}

	prefer := a.loadLastLease()
	self := cluster.Node{Name: a.cfg.NodeName, IP: ul.IP, IP6: ul.IP6}
	// A restarted agent republishes its VTEP MAC with the lease, so its
	// peers never see its record without one (and never drop its routes).
	if nodes, err := store.Nodes(ctx); err == nil {
		for _, n := range nodes {
			if n.Name == self.Name {
				self.VTEPMAC = n.VTEPMAC
			}
		}
	}
	lease, err := store.Acquire(ctx, self, prefer, a.cfg.LeaseTTL)
	if err != nil {
		return fmt.Errorf("lease a pod subnet: %w", err)
	}
	joined := time.Now()
	node := lease.Node()
	a.saveLastLease(node)
	a.metrics.watchLease(func() float64 { return float64(lease.Stats().Renewals) },
		func() float64 { return float64(lease.Stats().Reacquisitions) })
	a.log.Info("leased", "subnet", node.Subnet, "subnet6", node.Subnet6)
	go func() { errc <- lease.Run(ctx) }()

	fab, err := fabric.New(fabric.Config{
		Mode: clusterCfg.Backend, Underlay: ul.Name, LocalIP: ul.IP, LocalIP6: ul.IP6,
		Subnet: node.Subnet, Subnet6: node.Subnet6, VNI: clusterCfg.VNI, Port: clusterCfg.VXLANPort, MTU: clusterCfg.MTU,
	}, nil)
	if err != nil {
		return err
	}
	mac, err := fab.Setup()
	if err != nil {
		return err
	}
	if mac.String() != node.VTEPMAC {
		node.VTEPMAC = mac.String()
		if err := lease.Update(ctx, node); err != nil {
			return fmt.Errorf("publish VTEP MAC: %w", err)
		}
	}
	defer fab.Close()
	mtu, err := fab.PodMTU()
	if err != nil {
		return fmt.Errorf("pod MTU: %w", err)
	}
	a.mu.Lock()
	a.leased = true
	a.status = cluster.NodeStatus{Node: node, Cluster: clusterCfg, MTU: mtu, Joined: joined, PeersSince: map[string]time.Time{}}
	a.mu.Unlock()

	conf, err := conflistOf(node, mtu, a.cfg)
	if err != nil {
		return err
	}
	if err := a.installCNI(conf, true); err != nil {
		return err
	}

	trigger := make(chan struct{}, 1)
	kick := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	var peersMu sync.Mutex
	var peers []cluster.Node
	go func() {
		errc <- store.WatchNodes(ctx, func(nodes []cluster.Node) {
			peersMu.Lock()
			peers = nodes
			peersMu.Unlock()
			kick()
		})
	}()
	// Subscribed before the first reconcile, so no disturbance is missed.
	watcher, err := fab.Subscribe(ctx)
	if err != nil {
		return err
	}
	go func() { errc <- watcher.Run(kick) }()

	egress, err := egress.New(0)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer egress.Close()

	resync := time.NewTicker(a.cfg.Resync)
	defer resync.Stop()
	full := false // the next reconcile also checks the installed plugins
	for {
		select {
		case <-ctx.Done():
			a.log.Info("stopping; the node's network stays as it is")
			return nil
		case err := <-errc:
			if err != nil && ctx.Err() == nil {
				return err
			}
		case <-resync.C:
			full = true
			kick()
		case <-trigger:
			peersMu.Lock()
			snapshot := peers
			peersMu.Unlock()
			a.reconcile(fab, egress, clusterCfg, node, conf, full, snapshot)
			full = false
		}
	}
}

// reconcile converges the fabric, the egress rules and the conflist; with
// full (the periodic resync), the installed plugin binary too.
func (a *Agent) reconcile(fab *fabric.Fabric, egress *egress.Egress, clusterCfg cluster.Config, self cluster.Node, conf []byte, full bool, nodes []cluster.Node) {
	start := time.Now()
	var fp []fabric.Peer
	for _, n := range nodes {
		if n.Name == self.Name {
			continue
		}
		p := fabric.Peer{Name: n.Name, IP: n.IP, IP6: n.IP6, Subnet: n.Subnet, Subnet6: n.Subnet6}
		if n.VTEPMAC != "" {
			mac, err := net.ParseMAC(n.VTEPMAC)
			if err != nil {
				a.log.Warn("peer's VTEP MAC is malformed", "peer", n.Name, "mac", n.VTEPMAC)
				continue
			}
			p.VTEPMAC = mac
		}
		fp = append(fp, p)
	}
	res, fabErr := fab.Reconcile(fp)
	if len(res.Pending) > 0 {
		// A node that just joined publishes its VTEP MAC right after its
		// lease; that update triggers the next reconcile.
		a.log.Debug("peers without a VTEP MAC yet", "peers", res.Pending)
	}
	var errs []error
	if fabErr != nil {
		errs = append(errs, fabErr)
	}
	if a.cfg.Egress {
		if _, err := egress.Sync(clusterCIDRs(clusterCfg)); err != nil {
			errs = append(errs, err)
		}
	} else if err := egress.Delete(); err != nil {
		errs = append(errs, err)
	}
	if err := a.installCNI(conf, full); err != nil {
		errs = append(errs, err)
	}
	err := errors.Join(errs...)
	took := time.Since(start)
	a.metrics.reconcile.Observe(took.Seconds())
	a.metrics.peers.Set(float64(len(fp)))
	counts := map[cluster.Backend]int{cluster.HostGW: 0, cluster.VXLAN: 0}
	for _, m := range res.Backends {
		counts[m]++
	}
	for m, n := range counts {
		a.metrics.routes.WithLabelValues(string(m)).Set(float64(n))
	}
	a.mu.Lock()
	a.fabOK = a.fabOK || fabErr == nil
	a.lastErr = err
	a.status.Backends = res.Backends
	a.status.Peers = len(fp)
	now := time.Now()
	for name := range res.Backends {
		if _, ok := a.status.PeersSince[name]; !ok {
			a.status.PeersSince[name] = now
		}
	}
	for name := range a.status.PeersSince {
		if _, ok := res.Backends[name]; !ok {
			delete(a.status.PeersSince, name)
		}
	}
	ready := a.leased && a.fabOK && a.confOK
	a.status.Ready = ready
	a.mu.Unlock()
	if ready {
		a.metrics.ready.Set(1)
	}
	if err != nil {
		a.metrics.reconcileErrors.Inc()
		a.log.Error("reconcile", "err", err, "took", took)
		return
	}
	if res.Added > 0 || res.Removed > 0 {
		a.log.Info("reconciled", "peers", len(fp), "added", res.Added, "removed", res.Removed, "took", took)
	}
}

// conflistOf is the node's conflist: it depends only on the node's lease
// and MTU, so the agent computes it once.
func conflistOf(node cluster.Node, mtu int, cfg Config) ([]byte, error) {
	var subnets []string
	for _, s := range []*net.IPNet{node.Subnet, node.Subnet6} {
		if s != nil {
			subnets = append(subnets, s.String())
		}
	}
	data, err := cniconf.Cluster{Subnets: subnets, MTU: mtu, IPAMDir: cfg.IPAMDir, Chain: cfg.Chain}.Conflist()
	if err != nil {
		return nil, fmt.Errorf("CNI configuration: %w", err)
	}
	return data, nil
}

// installCNI writes the conflist unless it is already in place and, with
// plugins, installs the plugin binary unless an identical one is there
// (which costs reading both binaries, so not on every reconcile).
func (a *Agent) installCNI(conf []byte, plugins bool) error {
	if plugins {
		if err := installPlugins(a.cfg.CNIBinary, a.cfg.CNIBinDir, all.Names()); err != nil {
			return err
		}
	}
	path := filepath.Join(a.cfg.CNIConfDir, cniconf.FileName)
	wrote, err := writeAtomic(path, conf)
	if err != nil {
		return err
	}
	if wrote {
		a.log.Info("wrote CNI configuration", "path", path)
	}
	a.mu.Lock()
	a.confOK = true
	a.mu.Unlock()
	return nil
}

func clusterCIDRs(c cluster.Config) []*net.IPNet {
	var out []*net.IPNet
	for _, s := range []string{c.ClusterCIDR, c.ClusterCIDR6} {
		if _, n, err := net.ParseCIDR(s); err == nil {
			out = append(out, n)
		}
	}
	return out
}

// lastLease is the node's subnets, kept on disk so a node whose lease
// expired while it was down asks for the same subnets again.
type lastLease struct {
	Subnet  string `json:"subnet,omitempty"`
	Subnet6 string `json:"subnet6,omitempty"`
}

func (a *Agent) leaseFile() string { return filepath.Join(a.cfg.DataDir, "lease.json") }

func (a *Agent) loadLastLease() cluster.Node {
	var n cluster.Node
	b, err := os.ReadFile(a.leaseFile())
	if err != nil {
		return n
	}
	var l lastLease
	if json.Unmarshal(b, &l) != nil {
		return n
	}
	if _, s, err := net.ParseCIDR(l.Subnet); err == nil {
		n.Subnet = s
	}
	if _, s, err := net.ParseCIDR(l.Subnet6); err == nil {
		n.Subnet6 = s
	}
	return n
}

func (a *Agent) saveLastLease(n cluster.Node) {
	var l lastLease
	if n.Subnet != nil {
		l.Subnet = n.Subnet.String()
	}
	if n.Subnet6 != nil {
		l.Subnet6 = n.Subnet6.String()
	}
	b, _ := json.Marshal(l)
	if _, err := writeAtomic(a.leaseFile(), b); err != nil {
		a.log.Warn("cannot remember the lease", "err", err)
	}
}
