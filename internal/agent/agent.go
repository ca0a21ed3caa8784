package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	npaclientset "sigs.k8s.io/network-policy-api/pkg/client/clientset/versioned"

	"github.com/podnet/podnet/internal/agent/cniinstall"
	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/agent/egress"
	"github.com/podnet/podnet/internal/agent/membership"
	"github.com/podnet/podnet/internal/agent/podcount"
	"github.com/podnet/podnet/internal/agent/routes"
	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/policy/enforce"
	"github.com/podnet/podnet/internal/services"
)

// Agent is one node's daemon.
type Agent struct {
	cfg Config
	log *slog.Logger
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
	return &Agent{cfg: cfg, log: log}, nil
}

// node is an agent's running parts: the datastore, the controllers'
// shared environment and the manager that runs them.
type node struct {
	store    datastore.Store // nil when leaving without a datastore
	storeErr error           // why, then
	env      controller.Env
	manager  *controller.Manager
	reg      *prometheus.Registry
}

// Run brings the node into the cluster network and keeps it converged
// until ctx ends. Ending leaves the kernel as it is, so pods keep their
// connectivity across an agent restart; Leave is the way out. It returns
// an error when the agent cannot start (no underlay, no datastore, a
// cluster configuration it cannot use) or its health server fails; a
// controller that fails is restarted by the manager.
func (a *Agent) Run(ctx context.Context) error {
	n, err := a.start(ctx, true)
	if err != nil {
		return err
	}
	return a.run(ctx, n)
}

// run runs a started node until ctx ends, then closes its datastore.
func (a *Agent) run(ctx context.Context, n *node) error {
	defer n.store.Close()
	g, gctx := errgroup.WithContext(ctx)
	if a.cfg.Listen != "" {
		g.Go(func() error { return a.serve(gctx, a.cfg.Listen, n.handler()) })
	}
	g.Go(func() error { return n.manager.Run(gctx) })
	err := g.Wait()
	a.log.Info("stopped; the node's network stays as it is")
	return err
}

// Leave takes the node out of the cluster for good, with its agent
// stopped: every controller undoes what it installed — the membership is
// released (every other node drops its routes at once instead of after the
// grace period), the fabric, the egress rules, the service table and the
// CNI configuration are removed. Pods left on the node lose their cross-node connectivity.
// A node whose Node was deleted from the Kubernetes API leaves all the same.
func (a *Agent) Leave(ctx context.Context) error {
	n, err := a.start(ctx, false)
	if err != nil {
		return err
	}
	if n.store != nil {
		defer n.store.Close()
	}
	storeErr := n.storeErr
	if apierrors.IsNotFound(storeErr) {
		// The node's Node was deleted from the API: every other node has
		// dropped its routes already, and there is nothing to release.
		a.log.Warn("the node's Node does not exist: nothing to release in the Kubernetes API", "err", storeErr)
		storeErr = nil
	}
	err = errors.Join(storeErr, n.manager.Cleanup(ctx))
	// Out of the cluster for good: the node may join another one.
	if rerr := os.Remove(a.clusterFile()); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
		err = errors.Join(err, rerr)
	}
	return err
}

// start finds the underlay, opens the datastore, settles the cluster
// configuration and builds the controllers. With propose, the agent's own
// cluster configuration is stored when none is; else it is only read.
func (a *Agent) start(ctx context.Context, propose bool) (*node, error) {
	ul, err := findUnderlay(a.cfg.NetNS, a.cfg.Iface, a.cfg.NodeIP, a.cfg.NodeIP6)
	if err != nil {
		return nil, err
	}
	a.log.Info("underlay", "iface", ul.Name, "ip", ul.IP, "ip6", ul.IP6, "mtu", ul.MTU)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	n := &node{reg: reg}
	clusterCfg, err := a.clusterConfig(ctx, n, ul, propose)
	if err != nil {
		return nil, err
	}
	env := controller.NewEnv()
	env.Log, env.Metrics, env.NodeName, env.NetNS = a.log, reg, a.cfg.NodeName, a.cfg.NetNS
	env.Underlay, env.Cluster, env.Resync = ul, clusterCfg, a.cfg.Resync
	m := controller.NewManager(a.log, reg)
	a.addControllers(m, env, n.store)
	n.env, n.manager = env, m
	return n, nil
}

// clusterConfig opens the datastore into n and settles the cluster
// configuration. Leaving (!propose) only reads it, and goes on without a
// datastore it cannot reach — the node's own state is still removed — with
// the agent's configuration and the error kept in n.storeErr.
func (a *Agent) clusterConfig(ctx context.Context, n *node, ul controller.Underlay, propose bool) (cluster.Config, error) {
	if propose {
		// This agent's own proposal is checked before it may be stored.
		if err := clusterCfgUnderlay(a.cfg.Cluster, ul); err != nil {
			return cluster.Config{}, err
		}
	}
	store, err := a.openStore(ctx, ul, n.reg)
	want := a.cfg.Cluster
	if !propose {
		want = cluster.Config{}
	}
	var stored cluster.Config
	var diffs []string
	if err == nil {
		n.store = store
		if stored, diffs, err = store.EnsureClusterConfig(ctx, want); err != nil {
			err = fmt.Errorf("cluster configuration: %w", err)
		}
	}
	for _, d := range diffs {
		a.log.Warn("the cluster's stored configuration wins over this agent's", "difference", d)
	}
	if err == nil && propose {
		err = a.checkClusterChange(stored)
	}
	if err == nil {
		if err := clusterCfgUnderlay(stored, ul); err != nil {
			if n.store != nil {
				n.store.Close()
			}
			return cluster.Config{}, err
		}
		return stored, nil
	}
	if propose {
		if n.store != nil {
			n.store.Close()
		}
		return cluster.Config{}, err
	}
	n.storeErr = err
	own := a.cfg.Cluster
	own.Default()
	return own, nil
}

// addControllers wires the agent's features, in the order their cleanups
// run on leave. A new feature is a package with a Controller and one line
// here.
func (a *Agent) addControllers(m *controller.Manager, env controller.Env, store datastore.Store) {
	m.Add(membership.New(env, store, a.cfg.DataDir))
	m.Add(routes.New(env))
	m.Add(egress.New(env, a.cfg.Egress))
	m.Add(services.New(env, kubeClient(store), services.Config{
		Enabled: a.cfg.ServiceProxy, NodePortAddresses: a.cfg.NodePortAddresses, HealthAddr: a.cfg.ServiceProxyHealthAddr,
	}))
	m.Add(enforce.New(env, kubeClient(store), a.policyClient(store), enforce.Config{
		Enabled: a.cfg.NetworkPolicy, Gate: a.policyGate(), LogGroup: a.cfg.NetworkPolicyLogGroup,
	}))
	m.Add(cniinstall.New(env, cniinstall.Config{
		Binary: a.cfg.CNIBinary, BinDir: a.cfg.CNIBinDir, ConfDir: a.cfg.CNIConfDir, IPAMDir: a.cfg.IPAMDir, Chain: a.cfg.Chain, PolicyGate: a.policyGate(),
	}))
	m.Add(podcount.New(env))
}

// kubeClient is the Kubernetes API client of a kubernetes datastore, nil
// for another datastore or none.
func kubeClient(store datastore.Store) kubernetes.Interface {
	if s, ok := store.(interface{ Clientset() kubernetes.Interface }); ok {
		return s.Clientset()
	}
	return nil
}

// policyClient is the network-policy-api client (ClusterNetworkPolicies)
// of a kubernetes datastore, with its credentials and from its network
// namespace; nil for another datastore or none, or when it cannot be made
// (logged: network policy then goes without the cluster tiers).
func (a *Agent) policyClient(store datastore.Store) npaclientset.Interface {
	s, ok := store.(interface{ RESTConfig() *rest.Config })
	if !ok {
		return nil
	}
	rc := s.RESTConfig()
	// CRDs speak JSON, not protobuf.
	rc.ContentType, rc.AcceptContentTypes = "application/json", ""
	c, err := npaclientset.NewForConfig(rc)
	if err != nil {
		a.log.Error("no client of the ClusterNetworkPolicies: network policy goes without the cluster tiers", "err", err)
		return nil
	}
	return c
}

// policyGate is the pod gate's socket, "" while network policy is off.
func (a *Agent) policyGate() string {
	if !a.cfg.NetworkPolicy {
		return ""
	}
	return a.cfg.NetworkPolicyGate
}

// clusterCfgUnderlay refuses a cluster whose pod networks overlap the
// node's underlay networks.
func clusterCfgUnderlay(c cluster.Config, ul controller.Underlay) error {
	if err := c.CheckUnderlay(ul.Nets); err != nil {
		return fmt.Errorf("cluster configuration on %s: %w", ul.Name, err)
	}
	return nil
}

// checkClusterChange compares the stored cluster configuration with the
// one this node last ran with (<data-dir>/cluster.json): a change is
// refused unless the operator accepts it, so a datastore write alone
// never moves a node to another cluster CIDR. The configuration in use is
// remembered.
func (a *Agent) checkClusterChange(stored cluster.Config) error {
	path := a.clusterFile()
	if b, err := os.ReadFile(path); err == nil {
		var last cluster.Config
		if err := json.Unmarshal(b, &last); err != nil {
			return fmt.Errorf("the cluster configuration this node last ran with (%s): %w", path, err)
		}
		if d := last.Diff(stored, false); len(d) > 0 {
			var lines []string
			for _, f := range d {
				lines = append(lines, fmt.Sprintf("%s was %s, is now %s", f.Field, f.A, f.B))
			}
			if !a.cfg.AcceptClusterChange {
				return fmt.Errorf("the cluster configuration in the datastore changed since this node last ran (%s); "+
					"if the change is intended, start once with --accept-cluster-change", strings.Join(lines, "; "))
			}
			a.log.Warn("accepting a changed cluster configuration", "changes", strings.Join(lines, "; "))
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("the cluster configuration this node last ran with: %w", err)
	}
	b, err := json.Marshal(stored)
	if err != nil {
		return err
	}
	if _, err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("remember the cluster configuration: %w", err)
	}
	return nil
}

// clusterFile remembers the cluster configuration the node last ran with.
func (a *Agent) clusterFile() string { return filepath.Join(a.cfg.DataDir, "cluster.json") }
