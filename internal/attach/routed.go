package attach

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/link"
)

// A routed veth (the ptp and podnet plugins) is a veth pair without a
// bridge: the container end holds the addresses, the host end holds their
// gateways and the host routes each address to it, so the pods' traffic
// beyond the host depends on IP forwarding.

// RoutedIdx is the container interface's index in a routed veth's result,
// after the host end.
const RoutedIdx = 1

// RoutedVeth turns IP forwarding on for res's families and creates the
// attachment's veth pair; res.Interfaces become the host end, then the
// container's (RoutedIdx), and every address refers to the container's.
func (s *Session) RoutedVeth(res *current.Result, mtu int) (*link.Veth, error) {
	if err := link.EnableForwarding(res.IPs); err != nil {
		return nil, err
	}
	veth, err := s.CreateVeth(mtu, nil)
	if err != nil {
		return nil, err
	}
	res.Interfaces = []*current.Interface{
		{Name: veth.Host.Attrs().Name, Mac: veth.Host.Attrs().HardwareAddr.String()},
		{Name: s.Args.IfName, Mac: veth.Container.Attrs().HardwareAddr.String(), Sandbox: s.Args.Netns},
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(RoutedIdx)
	}
	return veth, nil
}

// RoutedTeardown returns the DEL, GC and STATUS verbs of a routed veth
// plugin. STATUS is 51 when IP forwarding is off for a family of the
// addresses the network's host veths route to, else the IPAM plugin's.
func RoutedTeardown(load Loader) (del, gc, status func(*skel.CmdArgs) error) {
	del, gc, _ = Teardown(load)
	status = func(args *skel.CmdArgs) error {
		c, err := load(args)
		if err != nil {
			return err
		}
		return StatusWith(args, c, func(h *netlink.Handle) error {
			addrs, err := routedAddrs(h, c.Name)
			if err != nil {
				return err
			}
			return CheckForwarding(addrs)
		})
	}
	return del, gc, status
}

// routedAddrs returns the global addresses the host routes to the
// network's host veths: its pods' addresses.
func routedAddrs(h *netlink.Handle, network string) ([]net.IP, error) {
	links, err := link.HostLinks(h, network)
	if err != nil {
		return nil, err
	}
	var out []net.IP
	for _, o := range links {
		routes, err := h.RouteList(o.Link, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list routes of %s: %w", o.Link.Attrs().Name, err)
		}
		for _, r := range routes {
			if r.Dst != nil && r.Dst.IP.IsGlobalUnicast() {
				out = append(out, r.Dst.IP)
			}
		}
	}
	return out, nil
}

// CheckRouted is CHECK of a routed veth: CheckVeth, then the host's route
// to each address of prev through the attachment's host end.
func (s *Session) CheckRouted(prev *current.Result) error {
	_, host, _, err := s.CheckVeth(prev)
	if err != nil {
		return err
	}
	for _, ipc := range prev.IPs {
		routes, err := s.Host.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: link.HostNet(ipc.Address.IP)}, netlink.RT_FILTER_DST)
		if err != nil {
			return fmt.Errorf("list host routes: %w", err)
		}
		found := false
		for _, r := range routes {
			found = found || r.LinkIndex == host.Attrs().Index
		}
		if !found {
			return fmt.Errorf("host route to %s via %s is missing", ipc.Address.IP, host.Attrs().Name)
		}
	}
	return nil
}
