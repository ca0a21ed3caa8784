package sandbox

import (
	"errors"
	"fmt"
	"net"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NewPeer creates a namespace wired to the host by a veth pair, as a
// machine on the node's network: hostAddrs (CIDRs) go on the host end,
// peerAddrs (same prefixes) on the peer's eth0, whose default routes go
// through the host's addresses. Addresses skip duplicate address
// detection. The namespace is removed with the sandbox.
func (s *Sandbox) NewPeer(hostAddrs, peerAddrs []string) (*Pod, error) {
	if len(hostAddrs) != len(peerAddrs) {
		return nil, errors.New("NewPeer: one peer address per host address")
	}
	p, err := s.NewPod()
	if err != nil {
		return nil, err
	}
	hh, err := netlink.NewHandleAt(s.Host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer hh.Close()
	ph, err := netlink.NewHandleAt(p.NS.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer ph.Close()
	hostName := "pe" + cniruntime.RandomID()[:8]
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: "eth0", PeerNamespace: netlink.NsFd(p.NS.Fd())}
	if err := hh.LinkAdd(veth); err != nil {
		return nil, fmt.Errorf("peer veth: %w", err)
	}
	if _, err := configure(hh, hostName, hostAddrs); err != nil {
		return nil, err
	}
	pl, err := configure(ph, "eth0", peerAddrs)
	if err != nil {
		return nil, err
	}
	for _, a := range hostAddrs {
		gw, _, _ := net.ParseCIDR(a)
		if err := ph.RouteAdd(&netlink.Route{LinkIndex: pl.Attrs().Index, Gw: gw}); err != nil {
			return nil, fmt.Errorf("peer default route via %s: %w", gw, err)
		}
	}
	return p, nil
}

// configure puts addresses (without DAD) on a link and sets it up.
func configure(h *netlink.Handle, name string, addrs []string) (netlink.Link, error) {
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, err
	}
	for _, a := range addrs {
		ip, n, err := net.ParseCIDR(a)
		if err != nil {
			return nil, err
		}
		n.IP = ip
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: n, Flags: unix.IFA_F_NODAD}); err != nil {
			return nil, fmt.Errorf("address %s on %s: %w", a, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("set %s up: %w", name, err)
	}
	return l, nil
}
