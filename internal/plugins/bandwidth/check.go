package bandwidth

import (
	"fmt"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/attach"
	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
)

// check verifies that the qdiscs and the redirect match the limits in
// force: a root tbf of the configured rate, buffer and limit on the host
// veth (ingress), and the attachment's ifb with its tbf and the host
// veth's redirect to it (egress).
func check(args *skel.CmdArgs) error {
	c, p, err := load(args.StdinData)
	if err != nil {
		return err
	}
	prev, err := attach.CheckPrev(&c.NetConf)
	if err != nil {
		return err
	}
	if p.None() {
		return nil
	}
	s, err := attach.Begin(args, &c.NetConf)
	if err != nil {
		return err
	}
	s.Done()
	defer s.Close()
	hostLink, err := link.HostPeer(s.Host, s.Cont, args.IfName, prev)
	if err != nil {
		return cniplugin.NewError(types.ErrInvalidNetworkConfig, "cannot find the pod's host interface", err.Error())
	}
	return p.Check(s.Host, hostLink, s.ID)
}

// Check verifies that the qdiscs and the redirect Apply set up for the
// attachment on its host veth hostLink are there, with the plan's limits.
func (p Plan) Check(h *netlink.Handle, hostLink netlink.Link, id attachment.ID) error {
	if p.hasIngress {
		if err := checkTbf(h, hostLink, p.ingress); err != nil {
			return err
		}
	}
	if !p.hasEgress {
		return nil
	}
	ifb, err := h.LinkByName(link.IfbName(id))
	if err != nil || ifb.Attrs().Alias != link.Alias(id) {
		return fmt.Errorf("ifb %s of %s is missing", link.IfbName(id), id)
	}
	if err := checkTbf(h, ifb, p.egress); err != nil {
		return err
	}
	filters, err := h.FilterList(hostLink, ingressHandle)
	if err != nil {
		return fmt.Errorf("list ingress filters of %s: %w", hostLink.Attrs().Name, err)
	}
	for _, f := range filters {
		if u, ok := f.(*netlink.U32); ok && u.RedirIndex == ifb.Attrs().Index {
			return nil
		}
	}
	return fmt.Errorf("%s does not redirect its traffic to %s", hostLink.Attrs().Name, ifb.Attrs().Name)
}

// checkTbf verifies the link's root qdisc is the shaping's tbf.
func checkTbf(h *netlink.Handle, l netlink.Link, want shaping) error {
	qs, err := h.QdiscList(l)
	if err != nil {
		return fmt.Errorf("list qdiscs of %s: %w", l.Attrs().Name, err)
	}
	for _, q := range qs {
		t, ok := q.(*netlink.Tbf)
		if !ok || t.Parent != netlink.HANDLE_ROOT {
			continue
		}
		if t.Rate != want.rate || t.Buffer != want.buffer || t.Limit != want.limit {
			return fmt.Errorf("tbf on %s has rate %d B/s, buffer %d, limit %d B; configured %d B/s, buffer %d, limit %d B",
				l.Attrs().Name, t.Rate, t.Buffer, t.Limit, want.rate, want.buffer, want.limit)
		}
		return nil
	}
	return fmt.Errorf("no tbf qdisc on %s", l.Attrs().Name)
}
