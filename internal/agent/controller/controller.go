// Package controller runs the node agent's features. Each feature is a
// Controller: a small type whose Run converges one part of the node to its
// desired state until its context ends, reporting its readiness through a
// Health. A Manager runs them together (an errgroup), restarts one that
// fails, joins them all before returning, and aggregates their readiness
// and status; Vars carry the state one controller produces and others
// consume (this node's record, its peers, its pod MTU).
package controller

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/fabric"
	"github.com/podnet/podnet/internal/netns"
)

// Controller is one feature of the agent.
type Controller interface {
	// Name names the controller in logs, /readyz, /status and metrics.
	Name() string
	// Run works until ctx ends, then returns nil; an error stops it and
	// the Manager restarts it. It reports its readiness through h (a
	// controller is not ready until it says so).
	Run(ctx context.Context, h *Health) error
}

// Cleaner is a controller that can undo what it installed: the agent's
// leave runs Cleanup of every controller, in the order they were added,
// and a controller whose feature is turned off runs it too. Cleanup is
// idempotent.
type Cleaner interface {
	Cleanup(ctx context.Context) error
}

// StatusFiller is a controller that adds what it knows to the node's
// /status. It must copy what it shares: the status is encoded after the
// call returns, while the controller goes on.
type StatusFiller interface {
	FillStatus(*cluster.NodeStatus)
}

// Underlay is the node's link to the other nodes.
type Underlay struct {
	Name    string
	MTU     int
	IP, IP6 net.IP
	// Nets are the networks of the interface's global addresses.
	Nets []*net.IPNet
}

// Env is what every controller is built from: the node's identity and
// namespace, the cluster configuration, the shared state and where to log
// and register metrics.
type Env struct {
	// Log is the agent's logger; a controller adds its name.
	Log *slog.Logger
	// Metrics registers a controller's Prometheus collectors; they are
	// served at the agent's /metrics. Controllers register in their
	// constructor with MustRegister: a name registered twice is a
	// programming error, which the agent's tests catch.
	Metrics prometheus.Registerer
	// NodeName is this node's name.
	NodeName string
	// NetNS is the node's network namespace; nil is the agent's own.
	NetNS *netns.NS
	// Underlay is the node's underlay interface and addresses.
	Underlay Underlay
	// Cluster is the cluster configuration in use (the stored one).
	Cluster cluster.Config
	// Resync is the period of the full reconcile behind event-driven ones.
	Resync time.Duration

	// Self is this node's record with its pod subnets, once it joined.
	Self *Var[cluster.Node]
	// Peers is every node's record (this node's included), as the
	// datastore last reported them.
	Peers *Var[[]cluster.Node]
	// Local is what the fabric needs this node to publish (VTEP MAC).
	Local *Var[fabric.Local]
	// PodMTU is the MTU of the node's pod interfaces.
	PodMTU *Var[int]
	// Policy is set by the network policy controller once the node's
	// policy is enforced (true: its table had its first sync) or off
	// (false: a left-over table removed). The CNI configuration is
	// written only then, so no pod gets a network before its policy can
	// be in the kernel.
	Policy *Var[bool]
}

// NewEnv returns an Env with empty Vars.
func NewEnv() Env {
	return Env{
		Self: NewVar[cluster.Node](), Peers: NewVar[[]cluster.Node](), Local: NewVar[fabric.Local](), PodMTU: NewVar[int](),
		Policy: NewVar[bool](),
	}
}

// NetNSFd is the file descriptor of the node's namespace, 0 for the
// agent's own (as nftables and netlink constructors take it).
func (e Env) NetNSFd() int {
	if e.NetNS == nil {
		return 0
	}
	return e.NetNS.Fd()
}

// NetlinkHandle opens a netlink handle in the node's namespace.
func (e Env) NetlinkHandle() (*netlink.Handle, error) {
	var h *netlink.Handle
	var err error
	if e.NetNS != nil {
		h, err = netlink.NewHandleAt(e.NetNS.Handle())
	} else {
		h, err = netlink.NewHandle()
	}
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	return h, nil
}
