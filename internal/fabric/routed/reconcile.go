package routed

import (
	"errors"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/fabric"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cluster"
)

// desired is the kernel state the peers call for.
type desired struct {
	routes map[string]netlink.Route // by destination
	neighs map[string]netlink.Neigh // VTEP address → peer MAC, by IP
	fdb    map[string]netlink.Neigh // peer MAC → underlay address, by MAC
}

// Reconcile converges the kernel to exactly the given peers: for each, a
// host-gw route or a VXLAN route + neighbour + FDB entry per pod subnet, as
// the mode picks; podnet's routes, neighbours and FDB entries of anything
// else are removed. What is already right is not rewritten. A peer whose
// underlay address is the node's own is skipped. Per-peer failures are
// returned joined; the other peers are still programmed.
func (f *Fabric) Reconcile(peers []fabric.Peer) (fabric.Result, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	res := fabric.Result{Backends: make(map[string]cluster.Backend), Backends6: make(map[string]cluster.Backend)}
	if err := f.forwarding(); err != nil {
		return res, err
	}
	u, err := f.underlay()
	if err != nil {
		return res, err
	}
	var vx *netlink.Vxlan
	if f.needsDevice() {
		if vx, res.DeviceCreated, err = f.ensureDevice(); err != nil {
			return res, err
		}
	} else if err := f.deleteDevice(); err != nil {
		return res, err
	}
	conn, err := f.h.AddrList(u, netlink.FAMILY_ALL)
	if err != nil {
		return res, fmt.Errorf("fabric: addresses of %s: %w", f.cfg.Underlay, err)
	}
	want := desired{
		routes: make(map[string]netlink.Route),
		neighs: make(map[string]netlink.Neigh),
		fdb:    make(map[string]netlink.Neigh),
	}
	var errs []error
	for _, p := range peers {
		if f.isSelf(p) {
			continue
		}
		if err := f.plan(&want, &res, p, u.Attrs().Index, vx, conn); err != nil {
			errs = append(errs, fmt.Errorf("fabric: peer %s: %w", p.Name, err))
		}
	}
	// Neighbours and FDB entries before routes: a new route never sends
	// traffic to a VTEP the device cannot resolve.
	if vx != nil {
		errs = append(errs, f.syncNeighs(&res, vx, want.neighs))
		errs = append(errs, f.syncFDB(&res, vx, want.fdb))
	}
	errs = append(errs, f.syncRoutes(&res, want.routes))
	return res, errors.Join(errs...)
}

func (f *Fabric) isSelf(p fabric.Peer) bool {
	return (f.cfg.LocalIP != nil && p.IP.Equal(f.cfg.LocalIP)) ||
		(f.cfg.LocalIP6 != nil && p.IP6.Equal(f.cfg.LocalIP6))
}

// connected tells whether ip is in a subnet of the underlay's addresses.
func connected(conn []netlink.Addr, ip net.IP) bool {
	if ip == nil {
		return false
	}
	for _, a := range conn {
		if a.IPNet != nil && a.Contains(ip) && !a.IP.Equal(ip) {
			return true
		}
	}
	return false
}

// errNoVTEPMAC marks a peer that needs VXLAN but has not published its
// VTEP MAC yet (it does right after its lease): it is pending, not failed.
var errNoVTEPMAC = errors.New("the peer has not published its VTEP MAC yet")

// plan adds one peer's desired state and records its backends; a subnet
// whose peer has no VTEP MAC yet is recorded in res.Pending.
func (f *Fabric) plan(want *desired, res *fabric.Result, p fabric.Peer, underlay int, vx *netlink.Vxlan, conn []netlink.Addr) error {
	if p.Subnet == nil && p.Subnet6 == nil {
		return errors.New("no pod subnet")
	}
	var errs []error
	if p.Subnet != nil {
		mode, err := f.plan4(want, p, underlay, vx, conn)
		if errors.Is(err, errNoVTEPMAC) {
			res.Pending = append(res.Pending, p.Name)
		} else if err != nil {
			errs = append(errs, err)
		} else {
			res.Backends[p.Name] = mode
		}
	}
	if p.Subnet6 != nil {
		mode, err := f.plan6(want, p, underlay, vx, conn)
		if errors.Is(err, errNoVTEPMAC) {
			res.Pending = append(res.Pending, p.Name)
		} else if err != nil {
			errs = append(errs, err)
		} else {
			res.Backends6[p.Name] = mode
			if p.Subnet == nil {
				res.Backends[p.Name] = mode
			}
		}
	}
	return errors.Join(errs...)
}

func (f *Fabric) plan4(want *desired, p fabric.Peer, underlay int, vx *netlink.Vxlan, conn []netlink.Addr) (cluster.Backend, error) {
	ip := p.IP.To4()
	mode := f.cfg.Mode
	if mode == cluster.Auto {
		mode = cluster.VXLAN
		if f.cfg.LocalIP != nil && connected(conn, ip) {
			mode = cluster.HostGW
		}
	}
	if mode == cluster.VXLAN {
		return cluster.VXLAN, f.planVXLAN(want, p, p.Subnet, vx)
	}
	if ip == nil {
		return "", fmt.Errorf("host-gw route to %s needs the peer's IPv4 underlay address", p.Subnet)
	}
	return cluster.HostGW, addRoute(want, netlink.Route{Dst: canonical(p.Subnet), Gw: ip, LinkIndex: underlay})
}

func (f *Fabric) plan6(want *desired, p fabric.Peer, underlay int, vx *netlink.Vxlan, conn []netlink.Addr) (cluster.Backend, error) {
	mode := f.cfg.Mode
	direct := p.IP6 != nil && f.cfg.LocalIP6 != nil
	if mode == cluster.Auto {
		mode = cluster.VXLAN
		if direct && connected(conn, p.IP6) {
			mode = cluster.HostGW
		} else if f.cfg.LocalIP != nil && connected(conn, p.IP.To4()) && f.kernelV6ViaV4() {
			mode = cluster.HostGW
			direct = false
		}
	}
	if mode == cluster.VXLAN {
		return cluster.VXLAN, f.planVXLAN(want, p, p.Subnet6, vx)
	}
	switch {
	case direct:
		return cluster.HostGW, addRoute(want, netlink.Route{Dst: canonical(p.Subnet6), Gw: p.IP6, LinkIndex: underlay})
	case p.IP.To4() != nil && f.kernelV6ViaV4():
		return cluster.HostGW, addRoute(want, netlink.Route{
			Dst: canonical(p.Subnet6), LinkIndex: underlay,
			Via: &netlink.Via{AddrFamily: netlink.FAMILY_V4, Addr: p.IP.To4()},
		})
	case vx != nil && p.VTEPMAC != nil:
		// No IPv6 underlay and the kernel refuses an IPv4 nexthop for
		// IPv6: the IPv6 pod subnet rides VXLAN over the IPv4 underlay.
		return cluster.VXLAN, f.planVXLAN(want, p, p.Subnet6, vx)
	default:
		return "", fmt.Errorf("no way to reach %s: host-gw needs both nodes' IPv6 underlay addresses, and the peer publishes no VTEP MAC", p.Subnet6)
	}
}

// planVXLAN adds the route onlink via the peer's VTEP address, the
// permanent neighbour VTEP address → VTEP MAC and the FDB entry VTEP MAC →
// peer underlay address.
func (f *Fabric) planVXLAN(want *desired, p fabric.Peer, subnet *net.IPNet, vx *netlink.Vxlan) error {
	if vx == nil {
		return errors.New("no VXLAN device")
	}
	if len(p.VTEPMAC) != 6 {
		return fmt.Errorf("VXLAN to %s: %w", subnet, errNoVTEPMAC)
	}
	dst := p.IP.To4()
	if f.underlayV6() {
		dst = p.IP6
	}
	if dst == nil {
		return fmt.Errorf("VXLAN to %s needs the peer's underlay address of the VXLAN device's family", subnet)
	}
	vtep := vtepAddr(subnet).IP
	mac := p.VTEPMAC.String()
	if old, ok := want.fdb[mac]; ok && !old.IP.Equal(dst) {
		return fmt.Errorf("VTEP MAC %s is also published by the node at %s", mac, old.IP)
	}
	want.fdb[mac] = netlink.Neigh{
		LinkIndex: vx.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: p.VTEPMAC, IP: dst,
	}
	family := netlink.FAMILY_V4
	if vtep.To4() == nil {
		family = netlink.FAMILY_V6
	}
	want.neighs[vtep.String()] = netlink.Neigh{
		LinkIndex: vx.Index, Family: family, State: netlink.NUD_PERMANENT,
		IP: vtep, HardwareAddr: p.VTEPMAC,
	}
	return addRoute(want, netlink.Route{
		Dst: canonical(subnet), Gw: vtep, LinkIndex: vx.Index, Flags: int(netlink.FLAG_ONLINK),
	})
}

func canonical(n *net.IPNet) *net.IPNet {
	ip := n.IP.Mask(n.Mask)
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	return &net.IPNet{IP: ip, Mask: n.Mask}
}

func addRoute(want *desired, r netlink.Route) error {
	key := r.Dst.String()
	if _, dup := want.routes[key]; dup {
		return fmt.Errorf("pod subnet %s is also claimed by another peer", key)
	}
	r.Protocol = RouteProtocol
	r.Table = unix.RT_TABLE_MAIN
	want.routes[key] = r
	return nil
}

// ownedRoutes lists podnet's routes of both families in the main table.
func (f *Fabric) ownedRoutes() ([]netlink.Route, error) {
	rs, err := f.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return nil, fmt.Errorf("fabric: list podnet routes: %w", err)
	}
	return rs, nil
}

// sameRoute compares what podnet programs of a route.
func sameRoute(have, want netlink.Route) bool {
	onlink := int(netlink.FLAG_ONLINK)
	return have.LinkIndex == want.LinkIndex && have.Gw.Equal(want.Gw) &&
		have.Flags&onlink == want.Flags&onlink && viaString(have.Via) == viaString(want.Via) &&
		len(have.MultiPath) == 0
}

func viaString(v netlink.Destination) string {
	if v == nil {
		return ""
	}
	return v.String()
}

func (f *Fabric) syncRoutes(res *fabric.Result, want map[string]netlink.Route) error {
	have, err := f.ownedRoutes()
	if err != nil {
		return err
	}
	var errs []error
	seen := make(map[string]bool)
	for _, h := range have {
		if h.Dst == nil {
			continue
		}
		key := h.Dst.String()
		w, ok := want[key]
		switch {
		case ok && !seen[key] && sameRoute(h, w):
			seen[key] = true
		case ok && !seen[key]:
			seen[key] = true
			if err := f.h.RouteReplace(&w); err != nil {
				errs = append(errs, fmt.Errorf("fabric: replace route %s: %w", key, err))
				continue
			}
			res.Changed++
		default:
			if err := f.h.RouteDel(&h); err != nil && !isGone(err) {
				errs = append(errs, fmt.Errorf("fabric: delete stale route %s: %w", key, err))
				continue
			}
			res.Removed++
		}
	}
	for key, w := range want {
		if seen[key] {
			continue
		}
		if err := f.h.RouteAdd(&w); err != nil {
			if errors.Is(err, unix.EEXIST) {
				err = fmt.Errorf("a route to %s that podnet does not own is in the way: %w", key, err)
			}
			errs = append(errs, fmt.Errorf("fabric: add route %s: %w", key, err))
			continue
		}
		res.Added++
	}
	return errors.Join(errs...)
}

func (f *Fabric) syncNeighs(res *fabric.Result, vx *netlink.Vxlan, want map[string]netlink.Neigh) error {
	var have []netlink.Neigh
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		ns, err := f.h.NeighList(vx.Index, fam)
		if err != nil {
			return fmt.Errorf("fabric: neighbours of %s: %w", f.cfg.Device, err)
		}
		have = append(have, ns...)
	}
	var errs []error
	ok := make(map[string]bool)
	for _, n := range have {
		key := n.IP.String()
		w, wanted := want[key]
		if wanted && n.State&netlink.NUD_PERMANENT != 0 && n.HardwareAddr.String() == w.HardwareAddr.String() {
			ok[key] = true
			continue
		}
		if wanted || n.State&netlink.NUD_PERMANENT == 0 {
			// Rewritten below (NeighSet replaces), or the kernel's own.
			continue
		}
		if err := f.h.NeighDel(&n); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("fabric: delete stale neighbour %s: %w", key, err))
			continue
		}
		res.Removed++
	}
	return errors.Join(append(errs, f.setMissing(res, want, ok, "neighbour"))...)
}

func (f *Fabric) syncFDB(res *fabric.Result, vx *netlink.Vxlan, want map[string]netlink.Neigh) error {
	have, err := f.h.NeighList(vx.Index, unix.AF_BRIDGE)
	if err != nil {
		return fmt.Errorf("fabric: FDB of %s: %w", f.cfg.Device, err)
	}
	var errs []error
	ok := make(map[string]bool)
	for _, n := range have {
		if n.LinkIndex != vx.Index {
			continue
		}
		key := n.HardwareAddr.String()
		if w, wanted := want[key]; wanted && n.IP.Equal(w.IP) && !ok[key] {
			ok[key] = true
			continue
		}
		if err := f.h.NeighDel(&netlink.Neigh{
			LinkIndex: vx.Index, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
			HardwareAddr: n.HardwareAddr, IP: n.IP,
		}); err != nil && !isGone(err) {
			errs = append(errs, fmt.Errorf("fabric: delete stale FDB entry %s dst %s: %w", key, n.IP, err))
			continue
		}
		res.Removed++
	}
	return errors.Join(append(errs, f.setMissing(res, want, ok, "FDB entry"))...)
}

// setMissing creates (or replaces) the wanted neighbour or FDB entries that
// are not already right.
func (f *Fabric) setMissing(res *fabric.Result, want map[string]netlink.Neigh, ok map[string]bool, what string) error {
	var errs []error
	for key, w := range want {
		if ok[key] {
			continue
		}
		if err := f.h.NeighSet(&w); err != nil {
			errs = append(errs, fmt.Errorf("fabric: %s %s (%s, %s): %w", what, key, w.IP, w.HardwareAddr, err))
			continue
		}
		res.Added++
	}
	return errors.Join(errs...)
}
