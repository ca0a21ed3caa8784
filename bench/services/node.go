package main

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// Addresses of a node's topology (every node has its own namespaces, so
// they repeat but for the underlay, which ends in the shared control
// plane namespace).
var (
	clientIP   = netip.MustParseAddr("172.31.0.2")
	nodeToCl   = netip.MustParseAddr("172.31.0.1")
	nodeToEp   = netip.MustParseAddr("10.244.255.254")
	underlayGW = func(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(k), 1}) }
	underlayIP = func(k int) netip.Addr { return netip.AddrFrom4([4]byte{198, 18, byte(k), 2}) }
)

// node is one proxy's node: its namespace with an underlay veth into the
// control plane's namespace (a route to the API server through it), a
// client namespace routed through the node, and the endpoint namespace
// holding svc-0's endpoint addresses.
type node struct {
	k                    int
	name                 string
	ns, client, endpoint *netns.Temp
	ip                   netip.Addr
}

// newNode builds node number k (1 …); on error what was built is removed.
func newNode(k int, cp *netns.Temp) (_ *node, err error) {
	n := &node{k: k, ip: underlayIP(k)}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.remove())
		}
	}()
	for _, p := range []struct {
		ns     **netns.Temp
		prefix string
	}{{&n.ns, "bsvc-node"}, {&n.client, "bsvc-cl"}, {&n.endpoint, "bsvc-ep"}} {
		if *p.ns, err = netns.NewTemp(p.prefix); err != nil {
			return nil, err
		}
	}
	n.name = n.ns.Name
	if err := vethPair(n.ns.NS, "eth0", []netip.Addr{n.ip}, 24, cp.NS, fmt.Sprintf("n%d", k), []netip.Addr{underlayGW(k)}); err != nil {
		return nil, err
	}
	if err := vethPair(n.ns.NS, "cl0", []netip.Addr{nodeToCl}, 24, n.client.NS, "eth0", []netip.Addr{clientIP}); err != nil {
		return nil, err
	}
	if err := vethPair(n.ns.NS, "ep0", []netip.Addr{nodeToEp}, 24, n.endpoint.NS, "eth0", realEndpoints); err != nil {
		return nil, err
	}
	for _, r := range []struct {
		ns *netns.NS
		gw netip.Addr
	}{{n.ns.NS, underlayGW(k)}, {n.client.NS, nodeToCl}, {n.endpoint.NS, nodeToEp}} {
		if err := defaultRoute(r.ns, r.gw); err != nil {
			return nil, err
		}
	}
	if err := link.Sysctl(n.ns.NS, "net/ipv4/ip_forward", "1"); err != nil {
		return nil, err
	}
	return n, nil
}

// remove deletes the node's namespaces (and with them its links).
func (n *node) remove() error {
	var err error
	for _, ns := range []*netns.Temp{n.ns, n.client, n.endpoint} {
		if ns != nil {
			err = errors.Join(err, ns.Remove())
		}
	}
	return err
}

// vethPair links namespaces a and b by a veth pair named aName in a and
// bName in b, each end up with its addresses (/bits).
func vethPair(a *netns.NS, aName string, aAddrs []netip.Addr, bits int, b *netns.NS, bName string, bAddrs []netip.Addr) error {
	ha, err := netlink.NewHandleAt(a.Handle())
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer ha.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: aName, Flags: net.FlagUp}, PeerName: bName, PeerNamespace: netlink.NsFd(b.Fd())}
	if err := ha.LinkAdd(veth); err != nil {
		return fmt.Errorf("veth %s/%s: %w", aName, bName, err)
	}
	if err := addrsUp(ha, aName, aAddrs, bits); err != nil {
		return err
	}
	hb, err := netlink.NewHandleAt(b.Handle())
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer hb.Close()
	return addrsUp(hb, bName, bAddrs, bits)
}

func addrsUp(h *netlink.Handle, name string, addrs []netip.Addr, bits int) error {
	l, err := h.LinkByName(name)
	if err != nil {
		return fmt.Errorf("link %s: %w", name, err)
	}
	for _, a := range addrs {
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(bits, 32)}}); err != nil {
			return fmt.Errorf("address %s on %s: %w", a, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return fmt.Errorf("link %s up: %w", name, err)
	}
	return nil
}

func defaultRoute(ns *netns.NS, gw netip.Addr) error {
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		return fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	if err := h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: gw.AsSlice()}); err != nil {
		return fmt.Errorf("default route via %s: %w", gw, err)
	}
	return nil
}
