package lab

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// The lab's addressing. Segment s (1-based) is 10.100.s.0/24 and
// fd00:100:s::/64, its router at .254 / ::fe; node i holds .i / ::i on its
// segment. The outside network beyond the router is 203.0.113.0/24 and
// 2001:db8:ff::/64, the outside host at .1 / ::1.
const (
	clusterCIDR  = "10.244.0.0/16"
	clusterCIDR6 = "fd00:10:244::/56"
	subnetSize6  = 64
	agentPort    = 9099
)

var (
	// OutsideIP and OutsideIP6 are the outside host's addresses.
	OutsideIP  = net.ParseIP("203.0.113.1").To4()
	OutsideIP6 = net.ParseIP("2001:db8:ff::1")
	outsideGW  = net.ParseIP("203.0.113.254").To4()
	outsideGW6 = net.ParseIP("2001:db8:ff::fe")
	underlay4  = mustCIDR("10.100.0.0/16")
	underlay6  = mustCIDR("fd00:100::/32")
)

func mustCIDR(s string) *net.IPNet {
	_, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	return n
}

func segmentIP(seg, host int) net.IP { return net.IPv4(10, 100, byte(seg), byte(host)).To4() }

func segmentIP6(seg, host int) net.IP {
	ip := make(net.IP, 16)
	copy(ip, net.ParseIP("fd00:100::"))
	ip[4], ip[5] = byte(seg>>8), byte(seg)
	ip[14], ip[15] = byte(host>>8), byte(host)
	return ip
}

// space is one namespace of the lab with a netlink handle inside it.
type space struct {
	ns *netns.Temp
	h  *netlink.Handle
}

func (s *space) close() {
	if s.h != nil {
		s.h.Close()
	}
	if s.ns != nil {
		s.ns.Close()
	}
}

// makeNS creates one of the lab's namespaces and records it first, so
// Down finds it whatever happens next.
func (l *Lab) makeNS(role string) (*space, error) {
	name := l.nsName(role)
	l.mu.Lock()
	l.Namespaces = append(l.Namespaces, name)
	err := l.save()
	l.mu.Unlock()
	if err != nil {
		return nil, err
	}
	ns, err := netns.Create(name)
	if err != nil {
		return nil, err
	}
	return withHandle(ns)
}

// openNS opens one of the lab's namespaces.
func openNS(name string) (*space, error) {
	ns, err := netns.OpenNamed(name)
	if err != nil {
		return nil, err
	}
	return withHandle(ns)
}

// withHandle adds a netlink handle inside ns.
func withHandle(ns *netns.Temp) (*space, error) {
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("netlink in %s: %w", ns.Name, err)
	}
	return &space{ns: ns, h: h}, nil
}

// wire connects a and b with a veth pair named aName in a and bName in b,
// both up; with bridge, b's end becomes a port of that bridge in b.
func wire(a *space, aName string, b *space, bName, bridge string) (netlink.Link, error) {
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: aName},
		PeerName:      bName,
		PeerNamespace: netlink.NsFd(b.ns.Fd()),
	}
	if err := a.h.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	la, err := a.h.LinkByName(aName)
	if err != nil {
		return nil, err
	}
	lb, err := b.h.LinkByName(bName)
	if err != nil {
		return nil, err
	}
	if bridge != "" {
		br, err := b.h.LinkByName(bridge)
		if err != nil {
			return nil, err
		}
		if err := b.h.LinkSetMaster(lb, br); err != nil {
			return nil, fmt.Errorf("attach %s to %s: %w", bName, bridge, err)
		}
	}
	for _, x := range []struct {
		h *netlink.Handle
		l netlink.Link
	}{{a.h, la}, {b.h, lb}} {
		if err := x.h.LinkSetUp(x.l); err != nil {
			return nil, fmt.Errorf("set %s up: %w", x.l.Attrs().Name, err)
		}
	}
	return la, nil
}

// addAddr adds ip/bits to l (IPv6 without DAD: the lab's addresses are
// unique by construction).
func addAddr(s *space, l netlink.Link, ip net.IP, bits int) error {
	total := 32
	a := &netlink.Addr{}
	if ip.To4() == nil {
		total = 128
		a.Flags = unix.IFA_F_NODAD
	}
	a.IPNet = &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, total)}
	if err := s.h.AddrAdd(l, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("add %s to %s: %w", a.IPNet, l.Attrs().Name, err)
	}
	return nil
}

func addRoute(s *space, dst *net.IPNet, gw net.IP) error {
	r := &netlink.Route{Dst: dst, Gw: gw}
	if err := s.h.RouteReplace(r); err != nil {
		return fmt.Errorf("route %v via %s: %w", dst, gw, err)
	}
	return nil
}

func forwarding(s *space, v6 bool) error {
	if err := link.Sysctl(s.ns.NS, "net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if v6 {
		return link.Sysctl(s.ns.NS, "net/ipv6/conf/all/forwarding", "1")
	}
	return nil
}

// buildUnderlay makes one switch (a bridge) per segment, the router on
// every segment and the outside host beyond it.
func (l *Lab) buildUnderlay() error {
	v6 := l.Spec.IPv6
	rt, err := l.makeNS("router")
	if err != nil {
		return err
	}
	defer rt.close()
	if err := forwarding(rt, v6); err != nil {
		return err
	}
	for seg := 1; seg <= l.Spec.Segments; seg++ {
		sw, err := l.makeNS(fmt.Sprintf("sw%d", seg))
		if err != nil {
			return err
		}
		err = func() error {
			defer sw.close()
			br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
			if err := sw.h.LinkAdd(br); err != nil {
				return fmt.Errorf("switch bridge: %w", err)
			}
			if err := sw.h.LinkSetUp(br); err != nil {
				return err
			}
			port, err := wire(rt, fmt.Sprintf("seg%d", seg), sw, "router", "br0")
			if err != nil {
				return err
			}
			if err := addAddr(rt, port, segmentIP(seg, 254), 24); err != nil {
				return err
			}
			if v6 {
				return addAddr(rt, port, segmentIP6(seg, 0xfe), 64)
			}
			return nil
		}()
		if err != nil {
			return err
		}
	}
	out, err := l.makeNS(Outside)
	if err != nil {
		return err
	}
	defer out.close()
	eth, err := wire(out, "eth0", rt, "outside", "")
	if err != nil {
		return err
	}
	rtOut, err := rt.h.LinkByName("outside")
	if err != nil {
		return err
	}
	if err := addAddr(out, eth, OutsideIP, 24); err != nil {
		return err
	}
	if err := addAddr(rt, rtOut, outsideGW, 24); err != nil {
		return err
	}
	if err := addRoute(out, underlay4, outsideGW); err != nil {
		return err
	}
	if v6 {
		if err := addAddr(out, eth, OutsideIP6, 64); err != nil {
			return err
		}
		if err := addAddr(rt, rtOut, outsideGW6, 64); err != nil {
			return err
		}
		if err := addRoute(out, underlay6, outsideGW6); err != nil {
			return err
		}
	}
	return nil
}

// buildNode makes a node's namespace and plugs it into its segment.
func (l *Lab) buildNode(n *Node) error { return l.buildHost(n.Name, n.Segment, n.IP, n.IP6) }

// buildHost makes the namespace of a host on the underlay (a node, the
// control plane): eth0 on segment seg with ip (and ip6, if any) and
// default routes via the router. The switch's port is named role.
func (l *Lab) buildHost(role string, seg int, ip, ip6 string) error {
	ns, err := l.makeNS(role)
	if err != nil {
		return err
	}
	defer ns.close()
	sw, err := openNS(l.nsName(fmt.Sprintf("sw%d", seg)))
	if err != nil {
		return err
	}
	defer sw.close()
	eth, err := wire(ns, "eth0", sw, role, "br0")
	if err != nil {
		return err
	}
	if err := addAddr(ns, eth, net.ParseIP(ip).To4(), 24); err != nil {
		return err
	}
	if err := addRoute(ns, nil, segmentIP(seg, 254)); err != nil {
		return err
	}
	if ip6 != "" {
		if err := addAddr(ns, eth, net.ParseIP(ip6), 64); err != nil {
			return err
		}
		if err := addRoute(ns, &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}, segmentIP6(seg, 0xfe)); err != nil {
			return err
		}
	}
	return nil
}
