// Package ptp is the ptp plugin: a veth pair routed point to point, the
// host side holding the gateway address and a host route to the
// container, with the reference ptp's configuration and results.
package ptp

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

// Plugin returns the ptp plugin.
func Plugin() cniplugin.Plugin {
	del, gc, status := attach.RoutedTeardown(func(args *skel.CmdArgs) (*cniplugin.NetConf, error) {
		c, err := load(args.StdinData)
		if err != nil {
			return nil, err
		}
		return &c.NetConf, nil
	})
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc, Status: status}
}

// Conf is the ptp plugin's configuration.
type Conf struct {
	cniplugin.NetConf
	IPMasq bool `json:"ipMasq"`
	// IPMasqBackend is accepted for compatibility when it names a backend
	// the reference knows; podnet always programs its own nftables table.
	IPMasqBackend *string `json:"ipMasqBackend,omitempty"`
	MTU           int     `json:"mtu"`
}

func load(data []byte) (*Conf, error) {
	c := &Conf{}
	if err := cniplugin.Decode(data, c); err != nil {
		return nil, err
	}
	if c.IPAM.Type == "" {
		return nil, cniplugin.Invalid("ptp needs an IPAM plugin")
	}
	if c.MTU < 0 || c.MTU > 65535 {
		return nil, cniplugin.Invalid("invalid mtu %d", c.MTU)
	}
	return c, nil
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData)
	if err != nil {
		return nil, err
	}
	if err := attach.CheckMasqBackend(c.IPMasq, c.IPMasqBackend); err != nil {
		return nil, err
	}
	return attach.AddRouted(args, &c.NetConf, attach.Routing{
		MTU: c.MTU, Shape: needGateways, OnLink: routeViaGateway, Masquerade: c.IPMasq,
	})
}

// needGateways keeps IPAM's result as it is: the container gets each
// address with its subnet's prefix; every address needs its gateway.
func needGateways(res *current.Result) error {
	for _, ipc := range res.IPs {
		if ipc.Gateway == nil {
			return cniplugin.Invalid("ptp needs a gateway for %s from IPAM", ipc.Address.String())
		}
	}
	return nil
}

// routeViaGateway replaces the container's on-link subnet route with a host
// route to the gateway and the subnet via the gateway, so every packet goes
// to the host.
func routeViaGateway(h *netlink.Handle, l netlink.Link, res *current.Result) error {
	idx := l.Attrs().Index
	for _, ipc := range res.IPs {
		subnet := &net.IPNet{IP: ipc.Address.IP.Mask(ipc.Address.Mask), Mask: ipc.Address.Mask}
		if err := h.RouteDel(&netlink.Route{LinkIndex: idx, Dst: subnet, Scope: netlink.SCOPE_NOWHERE}); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %s: %w", subnet, err)
		}
		for _, r := range []*netlink.Route{
			{LinkIndex: idx, Dst: link.HostNet(ipc.Gateway), Scope: netlink.SCOPE_LINK, Src: ipc.Address.IP},
			{LinkIndex: idx, Dst: subnet, Gw: ipc.Gateway, Src: ipc.Address.IP},
		} {
			if err := h.RouteReplace(r); err != nil {
				return fmt.Errorf("add route %s: %w", r.Dst, err)
			}
		}
	}
	return nil
}

func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	s, prev, err := attach.BeginCheck(args, &c.NetConf)
	if err != nil {
		return err
	}
	defer s.Close()
	if err := s.CheckRouted(prev); err != nil {
		return err
	}
	if !c.IPMasq {
		return nil
	}
	n, err := s.NFT()
	if err != nil {
		return err
	}
	return n.CheckMasquerade(s.ID, attach.Networks(prev.IPs))
}
