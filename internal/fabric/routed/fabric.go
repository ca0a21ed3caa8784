// Package routed is the routed fabric backend: it programs cross-node pod connectivity into a node's network
// namespace through netlink, flannel-style: host-gw routes to peers that
// share the underlay link, a VXLAN overlay (one device; per peer a route
// onlink, a permanent neighbour and an FDB entry) to the others, and an
// auto mode that picks per peer. Everything podnet installs is findable:
// routes carry podnet's routing protocol number, neighbour and FDB entries
// live on podnet's own VXLAN device, so reconciling removes what is stale
// and never touches anyone else's state.
package routed

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/fabric"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// RouteProtocol is the routing protocol number (rtm_protocol) on every route
// podnet installs. It is in none of iproute2's rt_protos, nor is it used by
// the common routing daemons (BIRD 12, FRR/zebra 11 and 186–192,
// keepalived 18, babel 42, Calico felix 80), so podnet can tell its own
// routes from everyone else's.
const RouteProtocol netlink.RouteProtocol = 118

// Defaults of Config.
const (
	DefaultVNI    = 1
	DefaultPort   = 4789
	DefaultDevice = "podnet.vxlan"
)

// Encapsulation overhead of VXLAN: outer IP header + UDP (8) + VXLAN (8) +
// inner Ethernet (14).
const (
	vxlanOverhead4 = 20 + 8 + 8 + 14
	vxlanOverhead6 = 40 + 8 + 8 + 14
)

// Config describes the node the fabric programs.
type Config struct {
	// Mode is the backend; empty means cluster.Auto.
	Mode cluster.Backend
	// Underlay is the name of the node's underlay interface.
	Underlay string
	// LocalIP is the node's underlay IPv4 address (VXLAN source).
	LocalIP net.IP
	// LocalIP6 is the node's optional underlay IPv6 address.
	LocalIP6 net.IP
	// Subnet is this node's IPv4 pod subnet (nil when IPv6-only).
	Subnet *net.IPNet
	// Subnet6 is this node's IPv6 pod subnet (dual-stack), may be nil.
	Subnet6 *net.IPNet
	// VNI is the VXLAN network identifier (0: DefaultVNI).
	VNI int
	// Port is the VXLAN UDP port (0: DefaultPort).
	Port int
	// Device is the VXLAN device name (empty: DefaultDevice).
	Device string
	// MTU is the VXLAN device's MTU; 0 derives it from the underlay
	// interface's MTU minus the encapsulation overhead.
	MTU int
	// NetNS is the namespace the netlink handle given to New is bound to;
	// nil means the caller's current namespace. Sysctls and netlink
	// subscriptions are done in it. With a nil handle, New opens one in it.
	NetNS *netns.NS
}

// Fabric programs one node's namespace; it is a fabric.Backend.
type Fabric struct {
	cfg     Config
	h       *netlink.Handle
	ownH    bool
	mac     net.HardwareAddr
	mu      sync.Mutex
	v6ViaV4 bool // the kernel routes IPv6 via an IPv4 nexthop (RTA_VIA)
	probed  bool
}

// New binds a fabric to a netlink handle of the node's namespace (nil: one
// is opened in cfg.NetNS, or in the current namespace).
func New(cfg Config, h *netlink.Handle) (*Fabric, error) {
	if cfg.Mode == "" {
		cfg.Mode = cluster.Auto
	}
	if !cfg.Mode.Known() {
		return nil, fmt.Errorf("fabric: unknown mode %q (want auto, host-gw or vxlan)", cfg.Mode)
	}
	if cfg.Underlay == "" {
		return nil, errors.New("fabric: no underlay interface")
	}
	if cfg.Subnet == nil && cfg.Subnet6 == nil {
		return nil, errors.New("fabric: no pod subnet")
	}
	if cfg.LocalIP == nil && cfg.LocalIP6 == nil {
		return nil, errors.New("fabric: no underlay address")
	}
	if cfg.LocalIP != nil {
		if cfg.LocalIP = cfg.LocalIP.To4(); cfg.LocalIP == nil {
			return nil, errors.New("fabric: LocalIP is not IPv4")
		}
	}
	if cfg.LocalIP6 != nil && cfg.LocalIP6.To4() != nil {
		return nil, errors.New("fabric: LocalIP6 is not IPv6")
	}
	if cfg.Subnet != nil && cfg.Subnet.IP.To4() == nil {
		return nil, fmt.Errorf("fabric: subnet %s is not IPv4", cfg.Subnet)
	}
	if cfg.Subnet6 != nil && cfg.Subnet6.IP.To4() != nil {
		return nil, fmt.Errorf("fabric: subnet %s is not IPv6", cfg.Subnet6)
	}
	if cfg.VNI == 0 {
		cfg.VNI = DefaultVNI
	}
	if cfg.VNI < 0 || cfg.VNI > 1<<24-1 {
		return nil, fmt.Errorf("fabric: VNI %d out of range", cfg.VNI)
	}
	if cfg.Port == 0 {
		cfg.Port = DefaultPort
	}
	if cfg.Port < 0 || cfg.Port > 65535 {
		return nil, fmt.Errorf("fabric: port %d out of range", cfg.Port)
	}
	if cfg.Device == "" {
		cfg.Device = DefaultDevice
	}
	if len(cfg.Device) > 15 {
		return nil, fmt.Errorf("fabric: device name %q longer than 15 characters", cfg.Device)
	}
	f := &Fabric{cfg: cfg, h: h}
	if h == nil {
		var err error
		if cfg.NetNS != nil {
			f.h, err = netlink.NewHandleAt(cfg.NetNS.Handle())
		} else {
			f.h, err = netlink.NewHandle()
		}
		if err != nil {
			return nil, fmt.Errorf("fabric: netlink handle: %w", err)
		}
		f.ownH = true
	}
	f.mac = vtepMAC(cfg)
	return f, nil
}

// Close releases the netlink handle if New opened it; the kernel state stays.
func (f *Fabric) Close() {
	if f.ownH {
		f.h.Close()
	}
}

// Setup ensures the node-local part: forwarding on, and the VXLAN device
// (when a backend may need it) up with its VTEP addresses, learning off and
// a MAC derived from the node's identity. It returns the VTEP MAC the node
// publishes, nil when the fabric needs no VXLAN device. Idempotent.
func (f *Fabric) Setup() (fabric.Local, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.forwarding(); err != nil {
		return fabric.Local{}, err
	}
	if !f.needsDevice() {
		// A device left by an earlier mode is podnet's and stale.
		return fabric.Local{}, f.deleteDevice()
	}
	if _, _, err := f.ensureDevice(); err != nil {
		return fabric.Local{}, err
	}
	return fabric.Local{VTEPMAC: f.mac}, nil
}

func (f *Fabric) forwarding() error {
	if f.cfg.Subnet != nil {
		if err := link.Sysctl(f.cfg.NetNS, "net/ipv4/ip_forward", "1"); err != nil {
			return fmt.Errorf("fabric: %w", err)
		}
	}
	if f.cfg.Subnet6 != nil {
		if err := link.Sysctl(f.cfg.NetNS, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			return fmt.Errorf("fabric: %w", err)
		}
	}
	return nil
}

// needsDevice tells whether some peer may be reached over VXLAN: always in
// Auto and VXLAN modes; in HostGW mode only for IPv6 pod subnets when the
// node has no IPv6 underlay and the kernel cannot route IPv6 via an IPv4
// nexthop.
func (f *Fabric) needsDevice() bool {
	if f.cfg.Mode != cluster.HostGW {
		return true
	}
	return f.cfg.Subnet6 != nil && f.cfg.LocalIP6 == nil && !f.kernelV6ViaV4()
}

// MTU is the pod MTU for an underlay MTU: the underlay's in HostGW mode,
// less the VXLAN overhead (of an IPv6 underlay when ipv6Underlay) when VXLAN
// may carry pod traffic.
func MTU(underlayMTU int, mode cluster.Backend, ipv6Underlay bool) int {
	if mode == cluster.HostGW {
		return underlayMTU
	}
	if ipv6Underlay {
		return underlayMTU - vxlanOverhead6
	}
	return underlayMTU - vxlanOverhead4
}

// PodMTU is the MTU pods of this node should use: the underlay interface's
// MTU, less the VXLAN overhead whenever some traffic may be encapsulated
// (including IPv6 falling back to VXLAN in HostGW mode), or Config.MTU.
func (f *Fabric) PodMTU() (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.cfg.MTU > 0 {
		return f.cfg.MTU, nil
	}
	u, err := f.h.LinkByName(f.cfg.Underlay)
	if err != nil {
		return 0, fmt.Errorf("fabric: underlay %s: %w", f.cfg.Underlay, err)
	}
	mode := f.cfg.Mode
	if mode == cluster.HostGW && f.needsDevice() {
		mode = cluster.VXLAN
	}
	return MTU(u.Attrs().MTU, mode, f.cfg.LocalIP == nil), nil
}

// Teardown removes everything the fabric owns: routes with podnet's
// protocol and the VXLAN device (with its neighbour and FDB entries).
func (f *Fabric) Teardown() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	routes, err := f.ownedRoutes()
	if err != nil {
		errs = append(errs, err)
	}
	for _, r := range routes {
		if err := f.h.RouteDel(&r); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("fabric: delete route %s: %w", r.Dst, err))
		}
	}
	if err := f.deleteDevice(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

var _ fabric.Backend = (*Fabric)(nil)
