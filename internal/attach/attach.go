// Package attach is the lifecycle every veth-based interface plugin shares:
// opening the container's namespace, allocating addresses through IPAM,
// creating the veth, masquerading, rolling all of it back when ADD fails,
// and the DEL, GC and STATUS verbs that find an attachment's addresses,
// links and rules by its identity alone.
package attach

import (
	"context"
	"errors"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// Session is one ADD or CHECK in progress. On failure, Close undoes what
// the session did, in reverse order.
type Session struct {
	Ctx  context.Context
	Args *skel.CmdArgs
	Conf *cniplugin.NetConf
	ID   attachment.ID
	// NS is the container's namespace; Host and Cont are netlink handles in
	// the host's (the caller's) and the container's namespace.
	NS   *netns.NS
	Host *netlink.Handle
	Cont *netlink.Handle

	nft  *podrules.Conn
	undo []func()
	ok   bool
}

// Begin opens the container's namespace and netlink handles on both sides.
// Nothing in the kernel has changed when it fails.
func Begin(args *skel.CmdArgs, conf *cniplugin.NetConf) (*Session, error) {
	ns, err := netns.Open(args.Netns)
	if err != nil {
		return nil, err
	}
	s := &Session{Ctx: context.Background(), Args: args, Conf: conf, ID: cniplugin.AttachmentOf(conf.Name, args), NS: ns}
	if s.Host, err = netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		s.Close()
		return nil, fmt.Errorf("netlink: %w", err)
	}
	if s.Cont, err = netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE); err != nil {
		s.Close()
		return nil, fmt.Errorf("netlink in %s: %w", args.Netns, err)
	}
	return s, nil
}

// Done marks the session successful: Close will keep its work.
func (s *Session) Done() { s.ok = true }

// Close undoes the session's work unless Done was called, and releases
// its handles.
func (s *Session) Close() {
	if !s.ok {
		for i := len(s.undo) - 1; i >= 0; i-- {
			s.undo[i]()
		}
	}
	if s.nft != nil {
		s.nft.Close()
	}
	if s.Cont != nil {
		s.Cont.Close()
	}
	if s.Host != nil {
		s.Host.Close()
	}
	s.NS.Close()
}

// OnFailure registers an undo step run if the session fails.
func (s *Session) OnFailure(f func()) { s.undo = append(s.undo, f) }

// IPAM is the configuration's IPAM plugin bound to this call.
func (s *Session) IPAM() cniplugin.IPAM {
	return cniplugin.IPAM{Type: s.Conf.IPAM.Type, Args: s.Args}
}

// AllocateIPs runs the IPAM plugin; its addresses are released again if
// the session fails.
func (s *Session) AllocateIPs() (*current.Result, error) {
	res, err := s.IPAM().Add(s.Ctx)
	if err != nil {
		return nil, err
	}
	s.OnFailure(func() { _ = s.IPAM().Del(s.Ctx) })
	return res, nil
}

// CreateVeth creates the attachment's veth pair; it is deleted again if the
// session fails.
func (s *Session) CreateVeth(mtu int, mac net.HardwareAddr) (*link.Veth, error) {
	v, err := link.CreateVeth(s.Host, s.Cont, s.NS, link.VethSpec{Attachment: s.ID, MTU: mtu, MAC: mac})
	if err != nil {
		return nil, err
	}
	s.OnFailure(func() { _ = s.Host.LinkDel(v.Host) })
	return v, nil
}

// Iface returns the container interface for configuration.
func (s *Session) Iface(l netlink.Link) *link.Iface {
	return &link.Iface{NS: s.NS, Handle: s.Cont, Link: l}
}

// NFT returns a connection to podnet's nftables tables in the host
// namespace; any rule added through the session is removed if it fails.
func (s *Session) NFT() (*podrules.Conn, error) {
	if s.nft != nil {
		return s.nft, nil
	}
	c, err := podrules.New(0)
	if err != nil {
		return nil, fmt.Errorf("nftables: %w", err)
	}
	s.nft = c
	s.OnFailure(func() { _ = c.DelAttachment(s.ID) })
	return c, nil
}

// Masquerade masquerades traffic from the result's addresses that leaves
// their subnets, as the reference's ipMasq does.
func (s *Session) Masquerade(ips []*current.IPConfig) error {
	c, err := s.NFT()
	if err != nil {
		return err
	}
	if err := c.AddMasquerade(s.ID, Networks(ips)); err != nil {
		return fmt.Errorf("set up masquerade: %w", err)
	}
	return nil
}

// CheckMasqBackend accepts the ipMasqBackend values the reference plugins
// know, "iptables" and "nftables" (podnet programs its nftables table for
// either). Another value is error 2 when ipMasq is on; with ipMasq off the
// reference never reads the field, and neither does podnet.
func CheckMasqBackend(ipMasq bool, backend *string) error {
	if !ipMasq || backend == nil || *backend == "iptables" || *backend == "nftables" {
		return nil
	}
	return cniplugin.Unsupported("ipMasqBackend", *backend, `known backends are "iptables" and "nftables"`)
}

// Networks returns the addresses of IP configurations with their prefixes.
func Networks(ips []*current.IPConfig) []*net.IPNet {
	out := make([]*net.IPNet, 0, len(ips))
	for _, ipc := range ips {
		a := ipc.Address
		out = append(out, &a)
	}
	return out
}

// ApplyDNS overrides the result's DNS with the configuration's when the
// configuration sets any DNS field, as the reference plugins do.
func ApplyDNS(res *current.Result, conf *cniplugin.NetConf) {
	d := conf.DNS
	if d.Nameservers != nil || d.Search != nil || d.Options != nil || d.Domain != "" {
		res.DNS = d
	}
}

// Del tears an attachment down: the container interface (if the namespace
// is still there), the host-side links (its veth, and the ifb of its egress
// shaping), every podnet rule of the attachment and its addresses. It is safe to repeat and needs neither the container's
// namespace nor the result of ADD.
func Del(args *skel.CmdArgs, conf *cniplugin.NetConf) error {
	ctx := context.Background()
	id := cniplugin.AttachmentOf(conf.Name, args)
	var errs []error
	if _, err := link.DelContainerLink(args.Netns, args.IfName); err != nil {
		errs = append(errs, err)
	}
	if h, err := netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		errs = append(errs, fmt.Errorf("netlink: %w", err))
	} else {
		errs = append(errs, link.DelHostLink(h, id), link.DelOwnedLink(h, link.IfbName(id), id))
		h.Close()
	}
	if c, err := podrules.New(0); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	} else {
		errs = append(errs, c.DelAttachment(id))
		c.Close()
	}
	if conf.IPAM.Type != "" {
		errs = append(errs, cniplugin.IPAM{Type: conf.IPAM.Type, Args: args}.Del(ctx))
	}
	return errors.Join(errs...)
}

// GC removes the links, rules and addresses of every attachment of the
// network that the runtime no longer lists as valid.
func GC(args *skel.CmdArgs, conf *cniplugin.NetConf) error {
	keep := func(a attachment.ID) bool { return conf.KeepsAttachment(a) }
	var errs []error
	if h, err := netlink.NewHandle(unix.NETLINK_ROUTE); err != nil {
		errs = append(errs, fmt.Errorf("netlink: %w", err))
	} else {
		errs = append(errs, link.GCHostLinks(h, conf.Name, keep))
		h.Close()
	}
	if c, err := podrules.New(0); err != nil {
		errs = append(errs, fmt.Errorf("nftables: %w", err))
	} else {
		errs = append(errs, c.GC(conf.Name, keep))
		c.Close()
	}
	if conf.IPAM.Type != "" {
		errs = append(errs, cniplugin.IPAM{Type: conf.IPAM.Type, Args: args}.GC(context.Background()))
	}
	return errors.Join(errs...)
}

// Status reports whether ADD can succeed: the IPAM plugin's own status.
func Status(args *skel.CmdArgs, conf *cniplugin.NetConf) error {
	if conf.IPAM.Type == "" {
		return nil
	}
	return cniplugin.IPAM{Type: conf.IPAM.Type, Args: args}.Status(context.Background())
}

// StatusWith is STATUS of a plugin that first checks the host for what its
// existing pods rely on (check gets a netlink handle in the host
// namespace; its error, typically 51, wins), then asks the IPAM plugin.
func StatusWith(args *skel.CmdArgs, conf *cniplugin.NetConf, check func(*netlink.Handle) error) error {
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	err = check(h)
	h.Close()
	if err != nil {
		return err
	}
	return Status(args, conf)
}

// CheckForwarding is STATUS's check of the gateways through which a
// network's existing pods leave their host (the addresses on a bridge, on
// ptp host veths): when IP forwarding is off in the host namespace for the
// family of one of them, those pods lost connectivity beyond the host —
// error 51. (ADD turns forwarding on again.)
func CheckForwarding(gateways []net.IP) error {
	key, err := link.ForwardingOff(gateways)
	if err != nil {
		return err
	}
	if key != "" {
		return cniplugin.NewError(cniplugin.ErrLimitedConnectivity,
			"IP forwarding is off in the host: existing containers may have limited connectivity", key+" = 0")
	}
	return nil
}

// GlobalAddrs returns the global unicast addresses on links.
func GlobalAddrs(h *netlink.Handle, links ...netlink.Link) ([]net.IP, error) {
	var out []net.IP
	for _, l := range links {
		addrs, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return nil, fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				out = append(out, a.IP)
			}
		}
	}
	return out, nil
}

// CheckPrev returns the prevResult CHECK must verify, which the spec
// requires. An address whose interface index is outside the result's
// interfaces is invalid (7): CHECK would otherwise match it to no
// interface and never verify it.
func CheckPrev(conf *cniplugin.NetConf) (*current.Result, error) {
	if conf.NetConf.PrevResult == nil {
		return nil, cniplugin.NewError(types.ErrInvalidNetworkConfig, "CHECK needs a prevResult", "")
	}
	prev, err := conf.Prev()
	if err != nil {
		return nil, err
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface != nil && (*ipc.Interface < 0 || *ipc.Interface >= len(prev.Interfaces)) {
			return nil, cniplugin.Invalid("prevResult address %s names interface %d of %d", ipc.Address.String(), *ipc.Interface, len(prev.Interfaces))
		}
	}
	return prev, nil
}

// ContainerIface finds the result's interface that lives in the given
// sandbox under the given name, and its index in result.Interfaces.
func ContainerIface(res *current.Result, ifName, sandbox string) (*current.Interface, int, error) {
	for i, intf := range res.Interfaces {
		if intf.Name == ifName && intf.Sandbox == sandbox {
			return intf, i, nil
		}
	}
	return nil, -1, fmt.Errorf("prevResult has no interface %s in sandbox %s", ifName, sandbox)
}

// CheckVeth verifies the container interface of prev: present, a veth,
// with the MAC prev recorded, and paired with the attachment's host veth.
// It returns both ends and the interface's index in prev.
func (s *Session) CheckVeth(prev *current.Result) (cont, host netlink.Link, idx int, err error) {
	name := s.Args.IfName
	want, idx, err := ContainerIface(prev, name, s.Args.Netns)
	if err != nil {
		return nil, nil, -1, err
	}
	cont, err = s.Cont.LinkByName(name)
	if err != nil {
		return nil, nil, -1, fmt.Errorf("container interface %s not found: %w", name, err)
	}
	if _, ok := cont.(*netlink.Veth); !ok {
		return nil, nil, -1, fmt.Errorf("container interface %s is not a veth", name)
	}
	if want.Mac != "" && want.Mac != cont.Attrs().HardwareAddr.String() {
		return nil, nil, -1, fmt.Errorf("container interface %s has MAC %s, prevResult says %s", name, cont.Attrs().HardwareAddr, want.Mac)
	}
	host, err = s.Host.LinkByName(link.HostVethName(s.ID))
	if err != nil {
		return nil, nil, -1, fmt.Errorf("host veth of %s not found: %w", name, err)
	}
	if cont.Attrs().ParentIndex != host.Attrs().Index {
		return nil, nil, -1, fmt.Errorf("host veth %s is not the peer of %s", host.Attrs().Name, name)
	}
	if err := s.Iface(cont).CheckAddrs(prev, idx); err != nil {
		return nil, nil, -1, err
	}
	if err := link.CheckRoutes(s.Cont, prev.Routes); err != nil {
		return nil, nil, -1, err
	}
	return cont, host, idx, nil
}

// Loader decodes and validates a plugin's configuration and returns its
// common part.
type Loader func(args *skel.CmdArgs) (*cniplugin.NetConf, error)

// Teardown returns the DEL, GC and STATUS verbs of a veth plugin, which
// differ only in how the configuration is loaded.
func Teardown(load Loader) (del, gc, status func(*skel.CmdArgs) error) {
	with := func(f func(*skel.CmdArgs, *cniplugin.NetConf) error) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			c, err := load(args)
			if err != nil {
				return err
			}
			return f(args, c)
		}
	}
	return with(Del), with(GC), with(Status)
}
