package attach

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
)

// A routed veth (the ptp and podnet plugins) is a veth pair without a
// bridge: the container end holds the addresses, the host end holds their
// gateways and the host routes each address to it, so the pods' traffic
// beyond the host depends on IP forwarding.

// RoutedIdx is the container interface's index in a routed veth's result,
// after the host end.
const RoutedIdx = 1

// Routing is what a routed veth plugin decides in its ADD.
type Routing struct {
	// MTU of the veth (0: the kernel's default).
	MTU int
	// Shape turns IPAM's result into the pod's addresses, gateways and
	// routes, before anything is created.
	Shape func(res *current.Result) error
	// OnLink makes the gateways reachable on the container's link l, once
	// its addresses are on it and before the result's routes go via them.
	OnLink func(h *netlink.Handle, l netlink.Link, res *current.Result) error
	// Masquerade the pod's traffic that leaves through the host.
	Masquerade bool
	// After, if set, runs last, once the pod is wired (veth, addresses,
	// routes), with the host end of its veth: what the plugin does
	// beyond the veth (the capabilities it honours itself). What it
	// registers with the session is undone with the rest if ADD fails.
	After func(s *Session, host netlink.Link, res *current.Result) error
}

// AddRouted is ADD of a routed veth plugin: IPAM's addresses, shaped by r,
// on the container end of a new veth pair (IP forwarding on for their
// families), the result's routes via the gateways, and the host routing
// each address to its end, which holds the gateways. The result lists the
// host end, then the container's (RoutedIdx).
func AddRouted(args *skel.CmdArgs, conf *cniplugin.NetConf, r Routing) (types.Result, error) {
	s, err := Begin(args, conf)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	res, err := s.AllocateIPs()
	if err != nil {
		return nil, err
	}
	if err := r.Shape(res); err != nil {
		return nil, err
	}
	if err := link.EnableForwarding(res.IPs); err != nil {
		return nil, err
	}
	veth, err := s.CreateVeth(r.MTU, nil)
	if err != nil {
		return nil, err
	}
	res.Interfaces = []*current.Interface{
		{Name: veth.Host.Attrs().Name, Mac: veth.Host.Attrs().HardwareAddr.String()},
		{Name: args.IfName, Mac: veth.Container.Attrs().HardwareAddr.String(), Sandbox: args.Netns},
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(RoutedIdx)
	}
	cont := s.Iface(veth.Container)
	addrs := *res
	addrs.Routes = nil
	if err := cont.Configure(&addrs, RoutedIdx, false); err != nil {
		return nil, err
	}
	if err := r.OnLink(s.Cont, veth.Container, res); err != nil {
		return nil, err
	}
	if err := cont.AddRoutes(res, RoutedIdx); err != nil {
		return nil, err
	}
	if err := link.RouteToContainer(s.Host, veth.Host, res); err != nil {
		return nil, err
	}
	if r.Masquerade {
		if err := s.Masquerade(res.IPs); err != nil {
			return nil, err
		}
	}
	if r.After != nil {
		if err := r.After(s, veth.Host, res); err != nil {
			return nil, err
		}
	}
	ApplyDNS(res, conf)
	s.Done()
	return res, nil
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
