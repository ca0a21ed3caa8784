// Package loopback is the loopback plugin: it sets the container's loopback
// interface up, as the reference plugin of the same name does.
package loopback

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/netns"
)

// Plugin returns the loopback plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check}
}

func add(args *skel.CmdArgs) (types.Result, error) {
	conf := &cniplugin.NetConf{}
	if err := cniplugin.Decode(args.StdinData, conf); err != nil {
		return nil, err
	}
	var addrs []net.IPNet
	err := withLoopback(args, func(h *netlink.Handle, lo netlink.Link) error {
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set %s up: %w", args.IfName, err)
		}
		for _, family := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			list, err := h.AddrList(lo, family)
			if err != nil {
				return fmt.Errorf("list addresses of %s: %w", args.IfName, err)
			}
			if len(list) > 0 {
				addrs = append(addrs, *list[0].IPNet)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if conf.NetConf.PrevResult != nil {
		return conf.NetConf.PrevResult, nil
	}
	r := &current.Result{
		CNIVersion: current.ImplementedSpecVersion,
		Interfaces: []*current.Interface{{Name: args.IfName, Mac: "00:00:00:00:00:00", Sandbox: args.Netns}},
	}
	for _, a := range addrs {
		r.IPs = append(r.IPs, &current.IPConfig{Interface: current.Int(0), Address: a})
	}
	return r, nil
}

func del(args *skel.CmdArgs) error {
	conf := &cniplugin.NetConf{}
	if err := cniplugin.Decode(args.StdinData, conf); err != nil {
		return err
	}
	if args.Netns == "" {
		return nil
	}
	err := withLoopback(args, func(h *netlink.Handle, lo netlink.Link) error {
		return h.LinkSetDown(lo)
	})
	if cniplugin.IsGone(err) {
		// The sandbox is gone and its loopback with it.
		return nil
	}
	return err
}

func check(args *skel.CmdArgs) error {
	conf := &cniplugin.NetConf{}
	if err := cniplugin.Decode(args.StdinData, conf); err != nil {
		return err
	}
	return withLoopback(args, func(h *netlink.Handle, lo netlink.Link) error {
		if lo.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("%s is down", args.IfName)
		}
		return nil
	})
}

// withLoopback runs f with a netlink handle in the container's namespace and
// its loopback link, checked to be one.
func withLoopback(args *skel.CmdArgs, f func(*netlink.Handle, netlink.Link) error) error {
	ns, err := netns.Open(args.Netns)
	if err != nil {
		return err
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", args.Netns, err)
	}
	defer h.Close()
	lo, err := h.LinkByName(args.IfName)
	if err != nil {
		return fmt.Errorf("find %s: %w", args.IfName, err)
	}
	if lo.Attrs().Flags&net.FlagLoopback == 0 {
		return cniplugin.Errorf(types.ErrInvalidEnvironmentVariables, "%s is not a loopback interface", args.IfName)
	}
	return f(h, lo)
}
