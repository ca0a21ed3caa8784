package routed

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cluster"
)

// vtepMAC derives the VXLAN device's MAC from the node's identity (underlay
// addresses, pod subnets, VNI): a restarted agent recreates the same MAC, so
// the entries its peers hold stay right. Locally administered, unicast.
func vtepMAC(cfg Config) net.HardwareAddr {
	id := fmt.Sprintf("podnet-vtep|%s|%s|%s|%s|%d", cfg.LocalIP, cfg.LocalIP6, cfg.Subnet, cfg.Subnet6, cfg.VNI)
	sum := sha256.Sum256([]byte(id))
	mac := net.HardwareAddr(sum[:6])
	mac[0] = mac[0]&^0x01 | 0x02
	return mac
}

// vtepAddr is a node's VTEP address for a pod subnet: its network address,
// as a host prefix (flannel.1 does the same).
func vtepAddr(subnet *net.IPNet) *net.IPNet {
	ip := subnet.IP.Mask(subnet.Mask)
	bits := 128
	if v4 := ip.To4(); v4 != nil {
		ip, bits = v4, 32
	}
	return &net.IPNet{IP: ip, Mask: net.CIDRMask(bits, bits)}
}

// underlayV6 tells whether the VXLAN device encapsulates over IPv6 (only
// when the node has no IPv4 underlay address).
func (f *Fabric) underlayV6() bool { return f.cfg.LocalIP == nil }

func (f *Fabric) underlay() (netlink.Link, error) {
	u, err := f.h.LinkByName(f.cfg.Underlay)
	if err != nil {
		return nil, fmt.Errorf("fabric: underlay %s: %w", f.cfg.Underlay, err)
	}
	return u, nil
}

// device returns the VXLAN device, nil when it does not exist.
func (f *Fabric) device() (*netlink.Vxlan, error) {
	l, err := f.h.LinkByName(f.cfg.Device)
	if err != nil {
		var nf netlink.LinkNotFoundError
		if errors.As(err, &nf) {
			return nil, nil
		}
		return nil, fmt.Errorf("fabric: find %s: %w", f.cfg.Device, err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		return nil, fmt.Errorf("fabric: %s exists and is a %s link, not podnet's VXLAN device", f.cfg.Device, l.Type())
	}
	return vx, nil
}

func (f *Fabric) deleteDevice() error {
	vx, err := f.device()
	if err != nil || vx == nil {
		return err
	}
	if err := f.h.LinkDel(vx); err != nil && !isGone(err) {
		return fmt.Errorf("fabric: delete %s: %w", f.cfg.Device, err)
	}
	return nil
}

// ensureDevice makes the VXLAN device exist with the configured parameters,
// MAC, MTU, VTEP addresses, and up. It changes only what differs; a device
// whose VNI, port, source or underlay differ is recreated.
func (f *Fabric) ensureDevice() (vx *netlink.Vxlan, created bool, err error) {
	u, err := f.underlay()
	if err != nil {
		return nil, false, err
	}
	src := f.cfg.LocalIP
	if src == nil {
		src = f.cfg.LocalIP6
	}
	mtu := f.cfg.MTU
	if mtu == 0 {
		mtu = MTU(u.Attrs().MTU, cluster.VXLAN, f.underlayV6())
	}
	vx, err = f.device()
	if err != nil {
		return nil, false, err
	}
	if vx != nil && (vx.VxlanId != f.cfg.VNI || vx.Port != f.cfg.Port || !vx.SrcAddr.Equal(src) ||
		vx.VtepDevIndex != u.Attrs().Index || vx.Learning) {
		if err := f.h.LinkDel(vx); err != nil && !isGone(err) {
			return nil, false, fmt.Errorf("fabric: delete outdated %s: %w", f.cfg.Device, err)
		}
		vx = nil
	}
	if vx == nil {
		want := &netlink.Vxlan{
			LinkAttrs: netlink.LinkAttrs{
				Name:         f.cfg.Device,
				MTU:          mtu,
				HardwareAddr: f.mac,
				TxQLen:       -1,
				Flags:        net.FlagUp,
			},
			VxlanId:      f.cfg.VNI,
			VtepDevIndex: u.Attrs().Index,
			SrcAddr:      src,
			Port:         f.cfg.Port,
			Learning:     false,
		}
		if err := f.h.LinkAdd(want); err != nil {
			return nil, false, fmt.Errorf("fabric: create %s: %w", f.cfg.Device, err)
		}
		created = true
		if vx, err = f.device(); err != nil {
			return nil, false, err
		}
		if vx == nil {
			return nil, false, fmt.Errorf("fabric: %s vanished after creation", f.cfg.Device)
		}
	}
	if vx.MTU != mtu {
		if err := f.h.LinkSetMTU(vx, mtu); err != nil {
			return nil, false, fmt.Errorf("fabric: set MTU of %s: %w", f.cfg.Device, err)
		}
	}
	if vx.HardwareAddr.String() != f.mac.String() {
		if err := f.h.LinkSetHardwareAddr(vx, f.mac); err != nil {
			return nil, false, fmt.Errorf("fabric: set MAC of %s: %w", f.cfg.Device, err)
		}
	}
	if err := f.ensureAddrs(vx); err != nil {
		return nil, false, err
	}
	if vx.Flags&net.FlagUp == 0 {
		if err := f.h.LinkSetUp(vx); err != nil {
			return nil, false, fmt.Errorf("fabric: set %s up: %w", f.cfg.Device, err)
		}
	}
	return vx, created, nil
}

// ensureAddrs gives the device exactly the node's VTEP addresses (link-local
// addresses the kernel adds are left alone).
func (f *Fabric) ensureAddrs(vx netlink.Link) error {
	var want []*net.IPNet
	for _, s := range []*net.IPNet{f.cfg.Subnet, f.cfg.Subnet6} {
		if s != nil {
			want = append(want, vtepAddr(s))
		}
	}
	have, err := f.h.AddrList(vx, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("fabric: addresses of %s: %w", f.cfg.Device, err)
	}
	present := make(map[string]bool)
	for _, a := range have {
		if !a.IP.IsGlobalUnicast() {
			continue
		}
		keep := false
		for _, w := range want {
			if w.String() == a.IPNet.String() {
				keep = true
			}
		}
		if keep {
			present[a.IPNet.String()] = true
			continue
		}
		if err := f.h.AddrDel(vx, &a); err != nil && !isGone(err) {
			return fmt.Errorf("fabric: remove stale address %s from %s: %w", a.IPNet, f.cfg.Device, err)
		}
	}
	for _, w := range want {
		if present[w.String()] {
			continue
		}
		a := &netlink.Addr{IPNet: w}
		if w.IP.To4() == nil {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := f.h.AddrAdd(vx, a); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("fabric: add %s to %s: %w", w, f.cfg.Device, err)
		}
	}
	return nil
}

// discardPrefix is RFC 6666's discard-only IPv6 prefix: the destination of
// the probe route, which nothing else routes.
var discardPrefix = &net.IPNet{IP: net.ParseIP("100::"), Mask: net.CIDRMask(128, 128)}

// kernelV6ViaV4 probes once whether the kernel accepts an IPv6 route with an
// IPv4 nexthop (RTA_VIA). Linux rejects it ("IPv6 does not support RTA_VIA
// attribute"; nexthop objects likewise: "IPv6 routes can not use an IPv4
// nexthop"), so IPv6 pod subnets of peers without an IPv6 underlay address
// go over VXLAN. A kernel that accepts it gets the probe route removed at
// once; any error counts as unsupported.
func (f *Fabric) kernelV6ViaV4() bool {
	if f.probed {
		return f.v6ViaV4
	}
	f.probed = true
	if f.cfg.LocalIP == nil {
		return false
	}
	u, err := f.underlay()
	if err != nil {
		return false
	}
	r := &netlink.Route{
		Family:    netlink.FAMILY_V6,
		Dst:       discardPrefix,
		LinkIndex: u.Attrs().Index,
		Via:       &netlink.Via{AddrFamily: netlink.FAMILY_V4, Addr: f.cfg.LocalIP},
		Protocol:  RouteProtocol,
	}
	if err := f.h.RouteAdd(r); err != nil {
		return false
	}
	_ = f.h.RouteDel(r)
	f.v6ViaV4 = true
	return true
}

// isGone tells whether a delete failed because the object is already gone.
func isGone(err error) bool {
	return errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ESRCH) || errors.Is(err, unix.ENODEV) ||
		errors.Is(err, unix.EADDRNOTAVAIL)
}
