// Package portmap is the portmap plugin: a chained plugin that forwards
// host ports to a pod (the portMappings capability), as the reference
// portmap does, with DNAT and masquerade rules in podnet's own nftables
// table instead of exec'd iptables. Every rule carries the attachment's
// identity, so DEL and GC find them without the runtime resending the
// mappings and without the pod's namespace.
package portmap

import (
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// Plugin returns the portmap plugin.
func Plugin() cniplugin.Plugin {
	return cniplugin.Plugin{Add: add, Del: del, Check: check, GC: gc}
}

// withNFT runs f with a connection to podnet's tables in the host
// namespace.
func withNFT(f func(*podrules.Conn) error) error {
	conn, err := podrules.New(0)
	if err != nil {
		return fmt.Errorf("nftables: %w", err)
	}
	defer conn.Close()
	return f(conn)
}

func add(args *skel.CmdArgs) (types.Result, error) {
	c, err := load(args.StdinData)
	if err != nil {
		return nil, err
	}
	if c.NetConf.PrevResult == nil {
		return nil, cniplugin.NewError(types.ErrInvalidNetworkConfig, "portmap must be called as a chained plugin: no prevResult", "")
	}
	if c.fwd.Empty() {
		return c.NetConf.PrevResult, nil
	}
	prev, err := c.Prev()
	if err != nil {
		return nil, err
	}
	if err := withNFT(func(conn *podrules.Conn) error {
		return c.fwd.Apply(conn, cniplugin.AttachmentOf(c.Name, args), prev, args.IfName)
	}); err != nil {
		return nil, err
	}
	return c.NetConf.PrevResult, nil
}

// Apply forwards the host ports to the pod's addresses on its interface
// ifName in res (its first of each family), for the attachment: the
// rules in one transaction on conn, route_localnet where the localhost
// connections need it (with SNAT), and a flush of the UDP flows to the
// mapped ports that predate the rules.
func (f *Forwarding) Apply(conn *podrules.Conn, id attachment.ID, res *current.Result, ifName string) error {
	maps := f.portMaps(res, ifName)
	if len(maps) == 0 || f.Empty() {
		return nil
	}
	if f.snat {
		for _, pm := range maps {
			if pm.ContainerIP.To4() != nil {
				if err := routeLocalnet(pm.ContainerIP); err != nil {
					return err
				}
			}
		}
	}
	if err := conn.AddPortMaps(id, maps); err != nil {
		return err
	}
	// Forget the UDP flows to the mapped ports that predate the rules:
	// conntrack would keep steering them past the new DNAT. As for the
	// reference, a failure here does not fail ADD.
	var flush []flow
	for _, pm := range maps {
		for _, m := range pm.Mappings {
			if m.Protocol == unix.IPPROTO_UDP && (m.HostIP == nil || podrules.NFProto(m.HostIP) == podrules.NFProto(pm.ContainerIP)) {
				flush = append(flush, flow{hostPort: m.HostPort, v6: pm.ContainerIP.To4() == nil})
			}
		}
	}
	if err := flushUDP(flush); err != nil {
		fmt.Fprintf(os.Stderr, "portmap: flush stale UDP conntrack entries: %v\n", err)
	}
	return nil
}

// Check verifies that every rule Apply installs for the attachment and
// res is in place.
func (f *Forwarding) Check(conn *podrules.Conn, id attachment.ID, res *current.Result, ifName string) error {
	if f.Empty() {
		return nil
	}
	return conn.CheckPortMaps(id, f.portMaps(res, ifName))
}

func del(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	return Unmap(cniplugin.AttachmentOf(c.Name, args))
}

// Unmap removes the attachment's port forwarding rules, found by its
// identity alone, and flushes the UDP flows they forwarded, which would
// keep black-holing its host ports until they time out. It succeeds when
// there is nothing to remove.
func Unmap(id attachment.ID) error {
	var removed []podrules.Forward
	if err := withNFT(func(conn *podrules.Conn) error {
		var err error
		removed, err = conn.DelPortMaps(id)
		return err
	}); err != nil {
		return err
	}
	var flush []flow
	for _, f := range removed {
		if f.Protocol == unix.IPPROTO_UDP {
			flush = append(flush, flow{hostPort: f.HostPort, v6: f.ContainerIP.To4() == nil, target: f.ContainerIP})
		}
	}
	if err := flushUDP(flush); err != nil {
		fmt.Fprintf(os.Stderr, "portmap: flush UDP conntrack entries: %v\n", err)
	}
	return nil
}

func check(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	if c.NetConf.PrevResult == nil {
		return cniplugin.NewError(types.ErrInvalidNetworkConfig, "portmap CHECK needs a prevResult", "")
	}
	if c.fwd.Empty() {
		return nil
	}
	prev, err := c.Prev()
	if err != nil {
		return err
	}
	return withNFT(func(conn *podrules.Conn) error {
		return c.fwd.Check(conn, cniplugin.AttachmentOf(c.Name, args), prev, args.IfName)
	})
}

func gc(args *skel.CmdArgs) error {
	c, err := load(args.StdinData)
	if err != nil {
		return err
	}
	return withNFT(func(conn *podrules.Conn) error { return conn.GCPortMaps(c.Name, c.KeepsAttachment) })
}

// routeLocalnet lets connections from 127.0.0.0/8, DNATed to the pod,
// leave through the host interface that routes to it (route_localnet), as
// the reference does; without it the kernel drops them as martians.
func routeLocalnet(ip net.IP) error {
	routes, err := netlink.RouteGet(ip)
	if err != nil || len(routes) == 0 {
		return nil // no route to the pod: nothing to enable
	}
	l, err := netlink.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return fmt.Errorf("find the interface routing to %s: %w", ip, err)
	}
	if err := link.Sysctl(nil, "net/ipv4/conf/"+l.Attrs().Name+"/route_localnet", "1"); err != nil {
		return fmt.Errorf("enable route_localnet: %w", err)
	}
	return nil
}

// flow selects UDP conntrack entries: to a host port, and when target is
// set, forwarded to that pod address.
type flow struct {
	hostPort uint16
	v6       bool
	target   net.IP
}

// flushUDP deletes the conntrack entries of flows, one table walk per
// address family.
func flushUDP(flows []flow) error {
	var errs []error
	for _, fam := range []netlink.InetFamily{unix.AF_INET, unix.AF_INET6} {
		var filters []netlink.CustomConntrackFilter
		for _, f := range flows {
			if f.v6 != (fam == unix.AF_INET6) {
				continue
			}
			cf := &netlink.ConntrackFilter{}
			err := cf.AddProtocol(unix.IPPROTO_UDP)
			if err == nil {
				err = cf.AddPort(netlink.ConntrackOrigDstPort, f.hostPort)
			}
			if err == nil && f.target != nil {
				err = cf.AddIP(netlink.ConntrackReplySrcIP, f.target)
			}
			if err != nil {
				return err
			}
			filters = append(filters, cf)
		}
		if len(filters) == 0 {
			continue
		}
		if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, fam, filters...); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
