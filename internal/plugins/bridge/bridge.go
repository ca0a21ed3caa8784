// Package bridge is the bridge plugin: it attaches a container to a Linux
// bridge in the host through a veth pair, with the reference bridge's
// configuration and results. Masquerade and MAC spoof checks live in
// podnet's own nftables tables, tagged with the attachment identity.
package bridge

import (
	"errors"
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
)

// Plugin returns the bridge plugin.
func Plugin() cniplugin.Plugin {
	del, gc, _ := attach.Teardown(func(args *skel.CmdArgs) (*cniplugin.NetConf, error) {
		c, err := load(args.StdinData, args.Args)
		if err != nil {
			return nil, err
		}
		return &c.NetConf, nil
	})
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc, Status: status}
}

// status reports the bridge's state, then the IPAM plugin's: 51 when the
// bridge is down or, for a gateway bridge, IP forwarding is off for a
// family of its addresses (the pods on it are cut off, though ADD would
// repair both); 50 when the name is taken by a link that is not a bridge.
// A bridge that does not exist yet is fine: ADD creates it.
func status(args *skel.CmdArgs) error {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	return attach.StatusWith(args, &c.NetConf, func(h *netlink.Handle) error {
		l, err := h.LinkByName(c.BrName)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			return nil
		case err != nil:
			return fmt.Errorf("find bridge %s: %w", c.BrName, err)
		case l.Type() != "bridge":
			return cniplugin.NewError(cniplugin.ErrPluginNotAvailable, fmt.Sprintf("%q exists but is not a bridge", c.BrName), "")
		case l.Attrs().Flags&net.FlagUp == 0:
			return cniplugin.NewError(cniplugin.ErrLimitedConnectivity,
				fmt.Sprintf("bridge %s is down: existing containers may have limited connectivity", c.BrName), "")
		case !c.IsGW:
			return nil
		}
		gws, err := attach.GlobalAddrs(h, l)
		if err != nil {
			return err
		}
		return attach.CheckForwarding(gws)
	})
}

// Positions of the interfaces in the result, as the reference orders them.
const (
	bridgeIdx    = 0
	containerIdx = 2
)

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData, args.Args)
	if err != nil {
		return nil, err
	}
	if err := attach.CheckMasqBackend(c.IPMasq, c.IPMasqBackend); err != nil {
		return nil, err
	}
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	br, err := ensureBridge(s.Host, c)
	if err != nil {
		return nil, err
	}
	res := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	if c.IPAM.Type != "" {
		ipam, err := s.AllocateIPs()
		if err != nil {
			return nil, err
		}
		res.IPs, res.Routes, res.DNS = ipam.IPs, ipam.Routes, ipam.DNS
	}
	veth, err := s.CreateVeth(c.MTU, c.mac)
	if err != nil {
		return nil, err
	}
	if err := attachPort(s.Host, br, veth.Host, c); err != nil {
		return nil, err
	}
	res.Interfaces = []*current.Interface{
		{Name: br.Attrs().Name},
		{Name: veth.Host.Attrs().Name, Mac: veth.Host.Attrs().HardwareAddr.String()},
		{Name: args.IfName, Mac: veth.Container.Attrs().HardwareAddr.String(), Sandbox: args.Netns},
	}
	if c.MacSpoofChk {
		n, err := s.NFT()
		if err != nil {
			return nil, err
		}
		if err := n.AddMacSpoofCheck(s.ID, veth.Host.Attrs().Name, veth.Container.Attrs().HardwareAddr); err != nil {
			return nil, fmt.Errorf("set up MAC spoof check: %w", err)
		}
	}

	iface := s.Iface(veth.Container)
	switch {
	case c.IPAM.Type != "":
		gws := gateways(res, c)
		if err := configureContainer(s, iface, res, c); err != nil {
			return nil, err
		}
		if c.IsGW {
			if err := setGateways(s.Host, br, gws, c.ForceAddress); err != nil {
				return nil, err
			}
			if err := link.EnableForwarding(res.IPs); err != nil {
				return nil, err
			}
		}
		if c.IPMasq {
			if err := s.Masquerade(res.IPs); err != nil {
				return nil, err
			}
		}
	case !c.DisableContainerInterface:
		if err := s.Cont.LinkSetUp(veth.Container); err != nil {
			return nil, fmt.Errorf("set %s up: %w", args.IfName, err)
		}
	}

	// The bridge takes its MAC from its ports until it has an address.
	if b, err := s.Host.LinkByIndex(br.Attrs().Index); err == nil {
		res.Interfaces[bridgeIdx].Mac = b.Attrs().HardwareAddr.String()
	}
	attach.ApplyDNS(res, &c.NetConf)
	s.Done()
	return res, nil
}

// ensureBridge creates the bridge if needed, checks an existing one really
// is a bridge, and sets it up.
func ensureBridge(h *netlink.Handle, c *Conf) (*netlink.Bridge, error) {
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: c.BrName, MTU: c.MTU, TxQLen: -1}}
	if c.Vlan != 0 || c.vlans != nil {
		on := true
		br.VlanFiltering = &on
	}
	created := true
	if err := h.LinkAdd(br); err != nil {
		if br.VlanFiltering != nil && errors.Is(err, unix.EOPNOTSUPP) {
			return nil, c.vlanUnsupported(fmt.Errorf("create bridge %s: %w", c.BrName, err))
		}
		if !errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create bridge %s: %w", c.BrName, err)
		}
		created = false
	}
	l, err := h.LinkByName(c.BrName)
	if err != nil {
		return nil, fmt.Errorf("find bridge %s: %w", c.BrName, err)
	}
	b, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, cniplugin.Invalid("%q already exists but is not a bridge", c.BrName)
	}
	if c.PromiscMode && b.Attrs().Promisc == 0 {
		if err := h.SetPromiscOn(b); err != nil {
			return nil, fmt.Errorf("set %s promiscuous: %w", c.BrName, err)
		}
	}
	if created {
		// The plugin owns the routes of its bridge.
		if err := link.Sysctl(nil, "net/ipv6/conf/"+c.BrName+"/accept_ra", "0"); err != nil {
			return nil, err
		}
	}
	if b.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(b); err != nil {
			return nil, fmt.Errorf("set %s up: %w", c.BrName, err)
		}
	}
	return b, nil
}

// attachPort makes the host end of the veth a port of the bridge with the
// configured hairpin, VLAN and isolation settings.
func attachPort(h *netlink.Handle, br *netlink.Bridge, port netlink.Link, c *Conf) error {
	name := port.Attrs().Name
	if err := h.LinkSetMasterByIndex(port, br.Attrs().Index); err != nil {
		return fmt.Errorf("connect %s to bridge %s: %w", name, br.Attrs().Name, err)
	}
	if c.HairpinMode {
		if err := h.LinkSetHairpin(port, true); err != nil {
			return fmt.Errorf("set hairpin mode on %s: %w", name, err)
		}
	}
	if c.PortIsolation {
		if err := h.LinkSetIsolated(port, true); err != nil {
			return fmt.Errorf("isolate port %s: %w", name, err)
		}
	}
	if (c.Vlan != 0 || c.vlans != nil) && !c.PreserveDefaultVlan {
		if err := h.BridgeVlanDel(port, 1, true, true, false, true); err != nil {
			return c.vlanUnsupported(fmt.Errorf("remove default vlan from %s: %w", name, err))
		}
	}
	if c.Vlan != 0 {
		if err := h.BridgeVlanAdd(port, uint16(c.Vlan), true, true, false, true); err != nil {
			return c.vlanUnsupported(fmt.Errorf("set vlan %d on %s: %w", c.Vlan, name, err))
		}
	}
	for _, v := range c.vlans {
		if err := h.BridgeVlanAdd(port, uint16(v), false, false, false, true); err != nil {
			return c.vlanUnsupported(fmt.Errorf("set trunk vlan %d on %s: %w", v, name, err))
		}
	}
	return nil
}

// vlanUnsupported turns a kernel's refusal of bridge VLAN filtering
// (EOPNOTSUPP) into error 2 naming the vlan field in use; other errors
// pass through.
func (c *Conf) vlanUnsupported(err error) error {
	if !errors.Is(err, unix.EOPNOTSUPP) {
		return err
	}
	why := "bridge VLAN filtering, which this kernel lacks (CONFIG_BRIDGE_VLAN_FILTERING): " + err.Error()
	if c.Vlan != 0 {
		return cniplugin.Unsupported("vlan", c.Vlan, why)
	}
	return cniplugin.Unsupported("vlanTrunk", c.VlanTrunk, why)
}

// gateways points every address at the container interface, fills in the
// gateway (first address of the subnet) when the bridge is the gateway,
// adds default routes for isDefaultGateway, and returns the addresses the
// bridge must hold.
func gateways(res *current.Result, c *Conf) []net.IPNet {
	var gws []net.IPNet
	defaultSet := map[bool]bool{}
	for _, r := range res.Routes {
		if ones, _ := r.Dst.Mask.Size(); ones == 0 && r.GW != nil {
			defaultSet[r.Dst.IP.To4() != nil] = true
		}
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(containerIdx)
		v4 := ipc.Address.IP.To4() != nil
		if ipc.Gateway == nil && c.IsGW {
			ipc.Gateway = nextIP(ipc.Address.IP.Mask(ipc.Address.Mask))
		}
		if c.IsDefaultGW && !defaultSet[v4] {
			dst := net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
			if !v4 {
				dst = net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			res.Routes = append(res.Routes, &types.Route{Dst: dst, GW: ipc.Gateway})
			defaultSet[v4] = true
		}
		if c.IsGW {
			gws = append(gws, net.IPNet{IP: ipc.Gateway, Mask: ipc.Address.Mask})
		}
	}
	return gws
}

func nextIP(ip net.IP) net.IP {
	out := make(net.IP, len(ip))
	copy(out, ip)
	for i := len(out) - 1; i >= 0; i-- {
		out[i]++
		if out[i] != 0 {
			break
		}
	}
	return out
}

// configureContainer applies the addresses and routes inside the container.
func configureContainer(s *attach.Session, iface *link.Iface, res *current.Result, c *Conf) error {
	name := s.Args.IfName
	dad := "0"
	if c.EnableDad {
		dad = "1"
	}
	err := s.NS.Do(func() error {
		hasV6 := false
		for _, ipc := range res.IPs {
			hasV6 = hasV6 || ipc.Address.IP.To4() == nil
		}
		if hasV6 {
			if err := link.Sysctl(nil, "net/ipv6/conf/"+name+"/accept_dad", dad); err != nil {
				return err
			}
			if c.EnableDad {
				_ = link.Sysctl(nil, "net/ipv6/conf/"+name+"/enhanced_dad", "1")
			}
		}
		return link.Sysctl(nil, "net/ipv4/conf/"+name+"/arp_notify", "1")
	})
	if err != nil {
		return err
	}
	return iface.Configure(res, containerIdx, c.EnableDad)
}

// setGateways puts the gateway addresses on the bridge. An existing
// different address of the same family (for IPv6: an overlapping one) is
// an error unless forceAddress replaces it.
func setGateways(h *netlink.Handle, br *netlink.Bridge, gws []net.IPNet, force bool) error {
	for _, gw := range gws {
		family := netlink.FAMILY_V4
		if gw.IP.To4() == nil {
			family = netlink.FAMILY_V6
		}
		addrs, err := h.AddrList(br, family)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", br.Attrs().Name, err)
		}
		present := false
		for _, a := range addrs {
			if a.IPNet.String() == gw.String() {
				present = true
				break
			}
			if a.IP.IsLinkLocalUnicast() {
				continue
			}
			if family == netlink.FAMILY_V4 || a.IPNet.Contains(gw.IP) || gw.Contains(a.IP) {
				if !force {
					return cniplugin.Invalid("%q already has an IP address different from %v", br.Attrs().Name, gw.String())
				}
				if err := h.AddrDel(br, &a); err != nil {
					return fmt.Errorf("remove %s from %s: %w", a.IPNet, br.Attrs().Name, err)
				}
			}
		}
		if present {
			continue
		}
		addr := &netlink.Addr{IPNet: &gw}
		if family == netlink.FAMILY_V6 {
			addr.Flags = unix.IFA_F_NODAD
		}
		if err := h.AddrAdd(br, addr); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("add %s to %s: %w", gw.String(), br.Attrs().Name, err)
		}
		// Pin the bridge's MAC so it no longer follows its ports.
		if err := h.LinkSetHardwareAddr(br, br.Attrs().HardwareAddr); err != nil {
			return fmt.Errorf("set MAC of %s: %w", br.Attrs().Name, err)
		}
	}
	return nil
}
