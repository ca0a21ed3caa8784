package bandwidth

import (
	"errors"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// Plugin returns the bandwidth plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc}
}

// ingressHandle is the handle of the ingress qdisc (ffff:).
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// filterPrio is the priority of the redirect filter on the host veth.
const filterPrio = 1

func add(args *skel.CmdArgs) (types.Result, error) {
	c, p, err := load(args.StdinData)
	if err != nil {
		return nil, err
	}
	prev, err := c.Prev()
	if err != nil {
		return nil, err
	}
	if p.None() {
		return prev, nil
	}
	if c.NetConf.PrevResult == nil {
		return nil, cniplugin.Invalid("bandwidth must be called as a chained plugin: no prevResult")
	}
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return nil, err
	}
	defer s.Close()
	hostLink, err := link.HostPeer(s.Host, s.Cont, args.IfName, prev)
	if err != nil {
		return nil, cniplugin.NewError(types.ErrInvalidNetworkConfig, "cannot find the pod's host interface", err.Error())
	}
	ifb, err := p.Apply(s, hostLink)
	if err != nil {
		return nil, err
	}
	if ifb != nil {
		prev.Interfaces = append(prev.Interfaces, ifb)
	}
	s.Done()
	return prev, nil
}

// Apply shapes the pod whose veth's host end is hostLink, in the session
// of its attachment: a tbf on hostLink for the ingress limit; for the
// egress limit, the attachment's ifb with a tbf and a redirect to it of
// what hostLink receives. It returns the ifb as a result interface (nil
// without an egress limit). What it did is undone if the session fails.
func (p Plan) Apply(s *attach.Session, hostLink netlink.Link) (*current.Interface, error) {
	if p.hasIngress {
		q := p.ingress.tbf(hostLink.Attrs().Index)
		if err := s.Host.QdiscAdd(q); err != nil {
			return nil, fmt.Errorf("add tbf to %s: %w", hostLink.Attrs().Name, err)
		}
		s.OnFailure(func() { _ = s.Host.QdiscDel(q) })
	}
	if !p.hasEgress {
		return nil, nil
	}
	ifb, err := addEgress(s, hostLink, p.egress)
	if err != nil {
		return nil, err
	}
	return &current.Interface{Name: ifb.Attrs().Name, Mac: ifb.Attrs().HardwareAddr.String()}, nil
}

// addEgress creates the attachment's ifb with the shaping, and redirects
// what the host veth receives (the pod's egress) to it.
func addEgress(s *attach.Session, hostLink netlink.Link, sh shaping) (netlink.Link, error) {
	name := link.IfbName(s.ID)
	ifb, err := link.CreateOwned(s.Host, &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{
		Name:   name,
		MTU:    hostLink.Attrs().MTU,
		TxQLen: hostLink.Attrs().TxQLen,
		Flags:  net.FlagUp,
	}}, s.ID)
	if err != nil {
		if errors.Is(err, unix.EEXIST) {
			return nil, fmt.Errorf("create ifb %s: a link of that name already exists (ADD twice without DEL?)", name)
		}
		return nil, fmt.Errorf("ifb: %w", err)
	}
	s.OnFailure(func() { _ = s.Host.LinkDel(ifb) })
	if err := s.Host.LinkSetUp(ifb); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	if err := s.Host.QdiscAdd(sh.tbf(ifb.Attrs().Index)); err != nil {
		return nil, fmt.Errorf("add tbf to %s: %w", name, err)
	}
	ingress := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: hostLink.Attrs().Index,
		Handle:    ingressHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := s.Host.QdiscAdd(ingress); err != nil {
		return nil, fmt.Errorf("add ingress qdisc to %s: %w", hostLink.Attrs().Name, err)
	}
	s.OnFailure(func() { _ = s.Host.QdiscDel(ingress) })
	if err := s.Host.FilterAdd(redirect(hostLink.Attrs().Index, ifb.Attrs().Index)); err != nil {
		return nil, fmt.Errorf("redirect %s to %s: %w", hostLink.Attrs().Name, name, err)
	}
	return ifb, nil
}

// redirect is the filter on the host veth's ingress qdisc that sends every
// packet to the ifb: a u32 filter matching all (matchall is not built into
// every kernel) with a mirred egress redirect.
func redirect(hostIndex, ifbIndex int) *netlink.U32 {
	return &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: hostIndex,
			Parent:    ingressHandle,
			Priority:  filterPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		ClassId:    netlink.MakeHandle(1, 1),
		RedirIndex: ifbIndex,
	}
}

// del removes the attachment's ifb (found by identity, so neither the
// netns nor prevResult is needed) and, while the pod's veth still exists,
// the qdiscs the plugin put on its host end.
func del(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	id := cniplugin.AttachmentOf(c.Name, args)
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	errs := []error{link.DelOwnedLink(h, link.IfbName(id), id)}
	if hostLink := hostLinkIfAny(h, args, c); hostLink != nil {
		errs = append(errs, clearQdiscs(h, hostLink))
	}
	return errors.Join(errs...)
}

// hostLinkIfAny finds the pod's host veth when the namespace and the
// prevResult still allow it; nil otherwise (the veth then dies with the
// pod, and its qdiscs with it).
func hostLinkIfAny(h *netlink.Handle, args *skel.CmdArgs, c *Conf) netlink.Link {
	if args.Netns == "" || c.NetConf.PrevResult == nil {
		return nil
	}
	prev, err := c.Prev()
	if err != nil {
		return nil
	}
	ns, err := netns.Open(args.Netns)
	if err != nil {
		return nil
	}
	defer ns.Close()
	cont, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil
	}
	defer cont.Close()
	l, err := link.HostPeer(h, cont, args.IfName, prev)
	if err != nil {
		return nil
	}
	return l
}

// clearQdiscs removes the root tbf and the ingress qdisc (with its
// filters) from the host veth.
func clearQdiscs(h *netlink.Handle, l netlink.Link) error {
	qs, err := h.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	var errs []error
	for _, q := range qs {
		_, isTbf := q.(*netlink.Tbf)
		_, isIngress := q.(*netlink.Ingress)
		if (isTbf && q.Attrs().Parent == netlink.HANDLE_ROOT) || isIngress {
			if err := h.QdiscDel(q); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete %s qdisc of %s: %w", q.Type(), l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

// gc removes the ifbs of the network's attachments the runtime no longer
// lists as valid.
func gc(args *skel.CmdArgs) error {
	c, err := decode(args.StdinData)
	if err != nil {
		return err
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	return link.GCLinks(h, link.IfbPrefix, c.Name, func(a attachment.ID) bool { return c.KeepsAttachment(a) })
}
