package link

import (
	"errors"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// HostNet is ip as a /32 or /128.
func HostNet(ip net.IP) *net.IPNet {
	if v4 := ip.To4(); v4 != nil {
		return &net.IPNet{IP: v4, Mask: net.CIDRMask(32, 32)}
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(128, 128)}
}

// RouteToContainer makes the host end l of a routed veth the container's
// next hop: it holds each result address's gateway as a /32 or /128
// (IPv6 without DAD) and the host routes each container address to it.
func RouteToContainer(h *netlink.Handle, l netlink.Link, res *current.Result) error {
	for _, ipc := range res.IPs {
		addr := &netlink.Addr{IPNet: HostNet(ipc.Gateway)}
		if ipc.Gateway.To4() == nil {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(l, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to %s: %w", addr.IPNet, l.Attrs().Name, err)
		}
		r := &netlink.Route{LinkIndex: l.Attrs().Index, Dst: HostNet(ipc.Address.IP), Scope: netlink.SCOPE_LINK}
		if err := h.RouteReplace(r); err != nil {
			return fmt.Errorf("add host route to %s: %w", ipc.Address.IP, err)
		}
	}
	return nil
}
