// Package macvlan is the macvlan and ipvlan plugins: the container's
// interface is a macvlan or ipvlan child of a master interface, created
// directly in the container's namespace, with the reference plugins'
// configuration and results. Both kinds share everything but the link
// type, its modes and macvlan's MAC address.
package macvlan

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"slices"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
)

// kind is what differs between macvlan and ipvlan.
type kind struct {
	name string
	// modes lists the mode names; the first is the default.
	modes []string
	// newLink returns the link to create with the mode's index in modes.
	newLink func(attrs netlink.LinkAttrs, mode int) netlink.Link
	// modeOf returns the mode index of a link of this kind; ok is false
	// for a link of another kind.
	modeOf func(netlink.Link) (mode int, ok bool)
	// hasMAC: the kind takes a MAC address (config, MAC=, capability).
	hasMAC bool
	// ipamRequired: without IPAM, ADD needs prevResult's addresses
	// (ipvlan); otherwise an interface without addresses is brought up
	// (macvlan, L2 only).
	ipamRequired bool
	// chained: with no master configured, prevResult's single interface
	// is the master (ipvlan), before the default route's.
	chained bool
}

// mode returns the index of a mode name ("" is the default).
func (k *kind) mode(name string) (int, bool) {
	if name == "" {
		return 0, true
	}
	i := slices.Index(k.modes, name)
	return i, i >= 0
}

var macvlanModes = []netlink.MacvlanMode{
	netlink.MACVLAN_MODE_BRIDGE, netlink.MACVLAN_MODE_PRIVATE,
	netlink.MACVLAN_MODE_VEPA, netlink.MACVLAN_MODE_PASSTHRU,
}

var macvlanKind = &kind{
	name:  "macvlan",
	modes: []string{"bridge", "private", "vepa", "passthru"},
	newLink: func(attrs netlink.LinkAttrs, mode int) netlink.Link {
		return &netlink.Macvlan{LinkAttrs: attrs, Mode: macvlanModes[mode]}
	},
	modeOf: func(l netlink.Link) (int, bool) {
		m, ok := l.(*netlink.Macvlan)
		if !ok {
			return 0, false
		}
		return slices.Index(macvlanModes, m.Mode), true
	},
	hasMAC: true,
}

var ipvlanModes = []netlink.IPVlanMode{netlink.IPVLAN_MODE_L2, netlink.IPVLAN_MODE_L3, netlink.IPVLAN_MODE_L3S}

var ipvlanKind = &kind{
	name:  "ipvlan",
	modes: []string{"l2", "l3", "l3s"},
	newLink: func(attrs netlink.LinkAttrs, mode int) netlink.Link {
		return &netlink.IPVlan{LinkAttrs: attrs, Mode: ipvlanModes[mode]}
	},
	modeOf: func(l netlink.Link) (int, bool) {
		v, ok := l.(*netlink.IPVlan)
		if !ok {
			return 0, false
		}
		return slices.Index(ipvlanModes, v.Mode), true
	},
	ipamRequired: true,
	chained:      true,
}

// Plugin returns the macvlan plugin.
func Plugin() cniplugin.Plugin { return macvlanKind.plugin() }

// IPVlanPlugin returns the ipvlan plugin.
func IPVlanPlugin() cniplugin.Plugin { return ipvlanKind.plugin() }

func (k *kind) plugin() cniplugin.Plugin {
	del, gc, status := attach.Teardown(func(args *skel.CmdArgs) (*cniplugin.NetConf, error) {
		c, err := decode(args.StdinData)
		if err != nil {
			return nil, err
		}
		return &c.NetConf, nil
	})
	return cniplugin.Plugin{
		Add:   k.add,
		Del:   del,
		Check: k.check,
		GC:    gc,
		Status: func(args *skel.CmdArgs) error {
			if err := k.status(args); err != nil {
				return err
			}
			return status(args)
		},
	}
}

// containerIdx is the container interface's position in the result: the
// only interface.
const containerIdx = 0

func (k *kind) add(args *skel.CmdArgs) (types.Result, error) {
	envArgs := ""
	if k.hasMAC {
		envArgs = args.Args
	}
	c, err := load(k, args.StdinData, envArgs)
	if err != nil {
		return nil, err
	}
	mode, _ := k.mode(c.Mode)
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return nil, err
	}
	defer s.Close()

	master, h, err := k.master(c, s, false)
	if err != nil {
		return nil, err
	}
	if c.MTU > master.Attrs().MTU {
		return nil, cniplugin.Invalid("invalid mtu %d: larger than the MTU %d of master %s", c.MTU, master.Attrs().MTU, master.Attrs().Name)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = args.IfName
	attrs.MTU = c.MTU
	attrs.ParentIndex = master.Attrs().Index
	attrs.HardwareAddr = c.mac
	if !c.LinkInContainer {
		attrs.Namespace = netlink.NsFd(s.NS.Fd())
	}
	l, err := s.CreateInContainer(h, k.newLink(attrs, mode))
	if err != nil {
		return nil, err
	}

	var res *current.Result
	switch {
	case c.IPAM.Type != "":
		ipam, err := s.AllocateIPs()
		if err != nil {
			return nil, err
		}
		res = &current.Result{CNIVersion: current.ImplementedSpecVersion, IPs: ipam.IPs, Routes: ipam.Routes}
	case k.ipamRequired:
		if res, err = c.prevIPs(); err != nil {
			return nil, err
		}
	default:
		res = &current.Result{CNIVersion: current.ImplementedSpecVersion}
	}
	for _, ipc := range res.IPs {
		ipc.Interface = current.Int(containerIdx)
	}
	res.Interfaces = []*current.Interface{{Name: args.IfName, Mac: l.Attrs().HardwareAddr.String(), Sandbox: args.Netns}}
	if len(res.IPs) > 0 {
		// Announce the addresses when the link comes up, as the
		// reference does, so neighbours on the master's segment learn
		// the new MAC at once.
		if err := announce(s, args.IfName); err != nil {
			return nil, err
		}
		if err := s.Iface(l).Configure(res, containerIdx, false); err != nil {
			return nil, err
		}
	} else if err := s.Cont.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", args.IfName, err)
	}
	res.DNS = c.DNS
	s.Done()
	return res, nil
}

// announce turns on gratuitous ARP and unsolicited neighbour
// advertisements for the container interface; a namespace without IPv6
// has no ndisc_notify to set.
func announce(s *attach.Session, ifName string) error {
	if err := link.Sysctl(s.NS, "net/ipv4/conf/"+ifName+"/arp_notify", "1"); err != nil {
		return err
	}
	if err := link.Sysctl(s.NS, "net/ipv6/conf/"+ifName+"/ndisc_notify", "1"); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// master finds the master interface and the handle of the namespace it
// lives in. With no master configured it is prevResult's single interface
// for a chained kind, else the interface of the default route; for CHECK
// of a chained kind, whose prevResult is its own result, a missing master
// is not resolved (nil link, nil error).
func (k *kind) master(c *Conf, s *attach.Session, check bool) (netlink.Link, *netlink.Handle, error) {
	h, where := s.Host, "host"
	if c.LinkInContainer {
		h, where = s.Cont, "container"
	}
	name := c.Master
	if name == "" && k.chained {
		if check && c.NetConf.PrevResult != nil {
			return nil, h, nil
		}
		var err error
		if name, err = c.chainedMaster(); err != nil {
			return nil, nil, err
		}
	}
	if name == "" {
		l, err := defaultRouteLink(h)
		if err != nil {
			return nil, nil, err
		}
		if l == nil {
			return nil, nil, cniplugin.Invalid("no master given and the %s namespace has no default route to take it from", where)
		}
		return l, h, nil
	}
	l, err := h.LinkByName(name)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil, cniplugin.Invalid("master %q not found in the %s namespace", name, where)
		}
		return nil, nil, fmt.Errorf("look up master %q: %w", name, err)
	}
	if l.Attrs().Flags&net.FlagLoopback != 0 {
		return nil, nil, cniplugin.Invalid("master %q is a loopback interface: a %s needs an Ethernet master", name, k.name)
	}
	return l, h, nil
}

// defaultRouteLink returns the link of the first default route (IPv4
// first, then IPv6), or nil when there is none.
func defaultRouteLink(h *netlink.Handle) (netlink.Link, error) {
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := h.RouteList(nil, fam)
		if err != nil {
			return nil, fmt.Errorf("list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil {
				if ones, _ := r.Dst.Mask.Size(); ones != 0 {
					continue
				}
			}
			idx := r.LinkIndex
			if idx == 0 && len(r.MultiPath) > 0 {
				idx = r.MultiPath[0].LinkIndex
			}
			if idx == 0 {
				continue
			}
			l, err := h.LinkByIndex(idx)
			if err != nil {
				return nil, fmt.Errorf("link of the default route: %w", err)
			}
			return l, nil
		}
	}
	return nil, nil
}

func (k *kind) check(args *skel.CmdArgs) error {
	c, err := load(k, args.StdinData, "")
	if err != nil {
		return err
	}
	s, prev, err := attach.BeginCheck(args, &c.NetConf)
	if err != nil {
		return err
	}
	defer s.Close()
	master, _, err := k.master(c, s, true)
	if err != nil {
		return err
	}
	want, idx, err := attach.ContainerIface(prev, args.IfName, args.Netns)
	if err != nil {
		return err
	}
	l, err := s.Cont.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("container interface %s not found: %w", args.IfName, err)
	}
	mode, ok := k.modeOf(l)
	if !ok {
		return fmt.Errorf("container interface %s is a %s, not a %s", args.IfName, l.Type(), k.name)
	}
	wantMode, _ := k.mode(c.Mode)
	if mode != wantMode {
		got := "unknown"
		if mode >= 0 {
			got = k.modes[mode]
		}
		return fmt.Errorf("container %s %s is in mode %s, the configuration says %s", k.name, args.IfName, got, k.modes[wantMode])
	}
	if master != nil && l.Attrs().ParentIndex != master.Attrs().Index {
		return fmt.Errorf("container %s %s is not a child of master %s", k.name, args.IfName, master.Attrs().Name)
	}
	if want.Mac != "" && want.Mac != l.Attrs().HardwareAddr.String() {
		return fmt.Errorf("container interface %s has MAC %s, prevResult says %s", args.IfName, l.Attrs().HardwareAddr, want.Mac)
	}
	if err := s.Iface(l).CheckAddrs(prev, idx); err != nil {
		return err
	}
	return link.CheckRoutes(s.Cont, prev.Routes)
}

// status reports the plugin unavailable (error 50) when a master that
// lives in the host namespace is missing: no ADD could succeed.
func (k *kind) status(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	if c.LinkInContainer || c.Master == "" && k.chained {
		return nil
	}
	h, err := netlink.NewHandle()
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if c.Master == "" {
		l, err := defaultRouteLink(h)
		if err != nil {
			return err
		}
		if l == nil {
			return cniplugin.NewError(cniplugin.ErrPluginNotAvailable, "no master given and no default route to take it from", "")
		}
		return nil
	}
	if _, err := h.LinkByName(c.Master); err != nil {
		return cniplugin.NewError(cniplugin.ErrPluginNotAvailable, fmt.Sprintf("master %q not found", c.Master), err.Error())
	}
	return nil
}
