package agent

import (
	"errors"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/netns"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// findUnderlay finds the configured underlay in the node's namespace (nil:
// the agent's own).
func findUnderlay(ns *netns.NS, name string, ip, ip6 net.IP) (controller.Underlay, error) {
	h, err := controller.Env{NetNS: ns}.NetlinkHandle()
	if err != nil {
		return controller.Underlay{}, err
	}
	defer h.Close()
	return pickUnderlay(h, name, ip, ip6)
}

// pickUnderlay picks the underlay interface: the one named, else the one
// holding ip, else the one of the IPv4 default route; and its addresses:
// ip and ip6 when given, else its first global ones.
func pickUnderlay(h *netlink.Handle, name string, ip, ip6 net.IP) (controller.Underlay, error) {
	var l netlink.Link
	var err error
	switch {
	case name != "":
		if l, err = h.LinkByName(name); err != nil {
			return controller.Underlay{}, fmt.Errorf("underlay interface %s: %w", name, err)
		}
	case ip != nil:
		if l, err = linkWithAddr(h, ip); err != nil {
			return controller.Underlay{}, err
		}
	default:
		if l, err = defaultRouteLink(h); err != nil {
			return controller.Underlay{}, err
		}
	}
	u := controller.Underlay{Name: l.Attrs().Name, MTU: l.Attrs().MTU, IP: ip, IP6: ip6}
	addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
	if err != nil {
		return controller.Underlay{}, fmt.Errorf("addresses of %s: %w", u.Name, err)
	}
	for _, a := range addrs {
		if a.Scope != unix.RT_SCOPE_UNIVERSE {
			continue
		}
		u.Nets = append(u.Nets, &net.IPNet{IP: a.IP.Mask(a.Mask), Mask: a.Mask})
		if a.IP.To4() != nil && u.IP == nil {
			u.IP = a.IP.To4()
		}
		if a.IP.To4() == nil && u.IP6 == nil && a.IP.IsGlobalUnicast() {
			u.IP6 = a.IP
		}
	}
	if u.IP == nil {
		return controller.Underlay{}, fmt.Errorf("underlay interface %s has no global IPv4 address (set --node-ip)", u.Name)
	}
	if !hasAddr(addrs, u.IP) {
		return controller.Underlay{}, fmt.Errorf("node IP %s is not an address of %s", u.IP, u.Name)
	}
	return u, nil
}

func hasAddr(addrs []netlink.Addr, ip net.IP) bool {
	for _, a := range addrs {
		if a.IP.Equal(ip) {
			return true
		}
	}
	return false
}

func linkWithAddr(h *netlink.Handle, ip net.IP) (netlink.Link, error) {
	addrs, err := h.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list addresses: %w", err)
	}
	for _, a := range addrs {
		if a.IP.Equal(ip) {
			return h.LinkByIndex(a.LinkIndex)
		}
	}
	return nil, fmt.Errorf("no interface holds node IP %s", ip)
}

func defaultRouteLink(h *netlink.Handle) (netlink.Link, error) {
	routes, err := h.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("list routes: %w", err)
	}
	for _, r := range routes {
		if r.Dst == nil || r.Dst.IP.IsUnspecified() {
			if r.LinkIndex > 0 {
				return h.LinkByIndex(r.LinkIndex)
			}
		}
	}
	return nil, errors.New("no IPv4 default route to find the underlay interface by (set --iface or --node-ip)")
}
