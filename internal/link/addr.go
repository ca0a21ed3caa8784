package link

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// DADTimeout bounds the wait for IPv6 duplicate address detection when a
// plugin is asked to perform it.
const DADTimeout = 10 * time.Second

// Iface is a container interface being configured: its namespace, a
// netlink handle inside it, and the link.
type Iface struct {
	NS     *netns.NS
	Handle *netlink.Handle
	Link   netlink.Link
}

// Configure sets the interface up, adds the result's addresses that belong
// to it (result.Interfaces index ifIndex) and the result's routes. Unless
// dad is set, IPv6 addresses are added with IFA_F_NODAD: IPAM made them
// unique, so nobody waits for detection. With dad, it returns once
// detection has finished (no fixed sleep) and fails on a duplicate.
func (i *Iface) Configure(res *current.Result, ifIndex int, dad bool) error {
	name := i.Link.Attrs().Name
	hasV6 := false
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != ifIndex {
			continue
		}
		addr := &netlink.Addr{IPNet: &ipc.Address}
		if ipc.Address.IP.To4() == nil {
			hasV6 = true
			if !dad {
				addr.Flags = unix.IFA_F_NODAD
			}
		}
		if err := i.Handle.AddrAdd(i.Link, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to %s: %w", ipc.Address.String(), name, err)
		}
	}
	if err := i.Handle.LinkSetUp(i.Link); err != nil {
		return fmt.Errorf("set %s up: %w", name, err)
	}
	if err := i.AddRoutes(res, ifIndex); err != nil {
		return err
	}
	if dad && hasV6 {
		return i.waitDAD()
	}
	return nil
}

// AddRoutes adds the result's routes on the interface (result.Interfaces
// index ifIndex); a route without a gateway goes via the gateway of the
// interface's address of its family, or is on-link.
func (i *Iface) AddRoutes(res *current.Result, ifIndex int) error {
	name := i.Link.Attrs().Name
	for _, r := range res.Routes {
		gw := r.GW
		if gw == nil {
			gw = gatewayFor(res, ifIndex, r.Dst.IP)
		}
		route := &netlink.Route{
			LinkIndex: i.Link.Attrs().Index,
			Dst:       &r.Dst,
			Gw:        gw,
			Priority:  r.Priority,
			MTU:       r.MTU,
			AdvMSS:    r.AdvMSS,
			Table:     routeTable(r),
			Scope:     netlink.Scope(routeScope(r, gw)),
		}
		if err := i.Handle.RouteReplace(route); err != nil {
			return fmt.Errorf("add route %s via %v on %s: %w", r.Dst.String(), gw, name, err)
		}
	}
	return nil
}

func routeTable(r *types.Route) int {
	if r.Table != nil {
		return *r.Table
	}
	return 0
}

func routeScope(r *types.Route, gw net.IP) uint8 {
	if r.Scope != nil {
		return uint8(*r.Scope)
	}
	if gw == nil {
		return uint8(netlink.SCOPE_LINK)
	}
	return uint8(netlink.SCOPE_UNIVERSE)
}

// gatewayFor is the gateway of the first address of the destination's
// family on the interface, as the reference's ConfigureIface picks it.
func gatewayFor(res *current.Result, ifIndex int, dst net.IP) net.IP {
	v4 := dst.To4() != nil
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != ifIndex {
			continue
		}
		if (ipc.Address.IP.To4() != nil) == v4 && ipc.Gateway != nil {
			return ipc.Gateway
		}
	}
	return nil
}

// waitDAD returns when no IPv6 address of the interface is tentative.
func (i *Iface) waitDAD() error {
	updates := make(chan netlink.AddrUpdate, 16)
	done := make(chan struct{})
	defer close(done)
	h := i.NS.Handle()
	if err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{Namespace: &h}); err != nil {
		return fmt.Errorf("subscribe to address updates: %w", err)
	}
	deadline := time.After(DADTimeout)
	for {
		pending, err := i.tentative()
		if err != nil || !pending {
			return err
		}
		select {
		case <-updates:
		case <-deadline:
			return fmt.Errorf("IPv6 duplicate address detection on %s did not finish in %s", i.Link.Attrs().Name, DADTimeout)
		}
	}
}

func (i *Iface) tentative() (bool, error) {
	addrs, err := i.Handle.AddrList(i.Link, netlink.FAMILY_V6)
	if err != nil {
		return false, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.Flags&unix.IFA_F_DADFAILED != 0 {
			return false, fmt.Errorf("address %s on %s is a duplicate", a.IPNet, i.Link.Attrs().Name)
		}
		if a.Flags&unix.IFA_F_TENTATIVE != 0 && a.IP.IsGlobalUnicast() {
			return true, nil
		}
	}
	return false, nil
}

// CheckAddrs verifies the interface holds every address of the result that
// belongs to it (the CHECK verb).
func (i *Iface) CheckAddrs(res *current.Result, ifIndex int) error {
	addrs, err := i.Handle.AddrList(i.Link, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list addresses of %s: %w", i.Link.Attrs().Name, err)
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != ifIndex {
			continue
		}
		found := false
		for _, a := range addrs {
			if a.IP.Equal(ipc.Address.IP) && a.Mask.String() == ipc.Address.Mask.String() {
				found = true
				break
			}
		}
		if !found {
			return fmt.Errorf("address %s is missing on %s", ipc.Address.String(), i.Link.Attrs().Name)
		}
	}
	return nil
}

// CheckRoutes verifies every route of the result is in the namespace.
func CheckRoutes(h *netlink.Handle, routes []*types.Route) error {
	for _, r := range routes {
		family := netlink.FAMILY_V4
		if r.Dst.IP.To4() == nil {
			family = netlink.FAMILY_V6
		}
		filter := &netlink.Route{Dst: &r.Dst, Table: routeTable(r)}
		mask := netlink.RT_FILTER_DST
		if filter.Table != 0 {
			mask |= netlink.RT_FILTER_TABLE
		}
		if ones, _ := r.Dst.Mask.Size(); ones == 0 {
			// A default route is listed with a nil Dst.
			filter.Dst = nil
			mask &^= netlink.RT_FILTER_DST
		}
		found, err := h.RouteListFiltered(family, filter, mask)
		if err != nil {
			return fmt.Errorf("list routes: %w", err)
		}
		ok := false
		for _, f := range found {
			if filter.Dst == nil && f.Dst != nil && !isDefault(f.Dst) {
				continue
			}
			if r.GW == nil || f.Gw.Equal(r.GW) {
				ok = true
				break
			}
		}
		if !ok {
			if r.GW == nil {
				return fmt.Errorf("route to %s is missing", r.Dst.String())
			}
			return fmt.Errorf("route to %s via %s is missing", r.Dst.String(), r.GW)
		}
	}
	return nil
}

func isDefault(n *net.IPNet) bool {
	ones, _ := n.Mask.Size()
	return ones == 0
}

// Sysctl writes a /proc/sys key (slashed, or dotted when it names no
// interface) in the given namespace
// (nil: the caller's), skipping the write when the value is already set.
func Sysctl(ns *netns.NS, key, value string) error {
	if !strings.Contains(key, "/") {
		key = strings.ReplaceAll(key, ".", "/")
	}
	path := filepath.Join("/proc/sys", key)
	write := func() error {
		if cur, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(cur)) == value {
			return nil
		}
		if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", key, value, err)
		}
		return nil
	}
	if ns == nil {
		return write()
	}
	return ns.Do(write)
}

// ForwardingOff returns the forwarding sysctl (net.ipv4.ip_forward or
// net.ipv6.conf.all.forwarding) of the first family of ips whose
// forwarding is off in the caller's namespace, or "" when it is on for
// every family of ips.
func ForwardingOff(ips []net.IP) (string, error) {
	for _, ip := range ips {
		key := "net/ipv4/ip_forward"
		if ip.To4() == nil {
			key = "net/ipv6/conf/all/forwarding"
		}
		b, err := os.ReadFile(filepath.Join("/proc/sys", key))
		if err != nil {
			return "", fmt.Errorf("read sysctl %s: %w", key, err)
		}
		if strings.TrimSpace(string(b)) == "0" {
			return strings.ReplaceAll(key, "/", "."), nil
		}
	}
	return "", nil
}

// EnableForwarding turns on IP forwarding in the caller's namespace for the
// families of the given addresses.
func EnableForwarding(ips []*current.IPConfig) error {
	v4, v6 := false, false
	for _, ipc := range ips {
		if ipc.Address.IP.To4() != nil {
			v4 = true
		} else {
			v6 = true
		}
	}
	if v4 {
		if err := Sysctl(nil, "net/ipv4/ip_forward", "1"); err != nil {
			return err
		}
	}
	if v6 {
		if err := Sysctl(nil, "net/ipv6/conf/all/forwarding", "1"); err != nil {
			return err
		}
	}
	return nil
}
