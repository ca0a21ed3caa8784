package link

import (
	"net"
	"os"
	"testing"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// pair is a host namespace and a container namespace with netlink handles.
type pair struct {
	host, cont   *netns.Temp
	hostH, contH *netlink.Handle
}

func newPair(t *testing.T) *pair {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
	p := &pair{}
	var err error
	if p.host, err = netns.NewTemp("pnlink-host"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.host.Remove() })
	if p.cont, err = netns.NewTemp("pnlink-pod"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cont.Remove() })
	if p.hostH, err = netlink.NewHandleAt(p.host.Handle()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.hostH.Close)
	if p.contH, err = netlink.NewHandleAt(p.cont.Handle()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.contH.Close)
	return p
}

func mustCIDR(t *testing.T, s string) net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return *n
}

func TestHostVethName(t *testing.T) {
	a := attachment.ID{Network: "net", ContainerID: "c1", IfName: "eth0"}
	b := a
	b.IfName = "eth1"
	if HostVethName(a) == HostVethName(b) {
		t.Error("different attachments share a host name")
	}
	if n := HostVethName(a); len(n) > 15 || n[:2] != HostPrefix {
		t.Errorf("bad name %q", n)
	}
	got, ok := attachmentOfAlias(Alias(a))
	if !ok || got != a {
		t.Errorf("alias round trip: %v %v", got, ok)
	}
}

func TestVethConfigureAndDelete(t *testing.T) {
	p := newPair(t)
	a := attachment.ID{Network: "n1", ContainerID: "c1", IfName: "eth0"}
	mac, _ := net.ParseMAC("0a:58:0a:01:02:03")
	v, err := CreateVeth(p.hostH, p.contH, p.cont.NS, VethSpec{Attachment: a, MTU: 1400, MAC: mac})
	if err != nil {
		t.Fatal(err)
	}
	if v.Container.Attrs().HardwareAddr.String() != mac.String() || v.Container.Attrs().MTU != 1400 {
		t.Errorf("container end: mac %s mtu %d", v.Container.Attrs().HardwareAddr, v.Container.Attrs().MTU)
	}
	if v.Host.Attrs().Alias != Alias(a) || v.Host.Attrs().Flags&net.FlagUp == 0 {
		t.Errorf("host end: alias %q flags %v", v.Host.Attrs().Alias, v.Host.Attrs().Flags)
	}
	if _, err := CreateVeth(p.hostH, p.contH, p.cont.NS, VethSpec{Attachment: a}); err == nil {
		t.Error("second veth with the same identity succeeded")
	}

	res := &current.Result{
		IPs: []*current.IPConfig{
			{Interface: current.Int(0), Address: mustCIDR(t, "10.9.0.5/24"), Gateway: net.ParseIP("10.9.0.1")},
			{Interface: current.Int(0), Address: mustCIDR(t, "fd00:9::5/64"), Gateway: net.ParseIP("fd00:9::1")},
		},
		Routes: []*types.Route{
			{Dst: mustCIDR(t, "0.0.0.0/0")},
			{Dst: mustCIDR(t, "10.200.0.0/16"), GW: net.ParseIP("10.9.0.254")},
			{Dst: mustCIDR(t, "::/0")},
		},
	}
	iface := &Iface{NS: p.cont.NS, Handle: p.contH, Link: v.Container}
	if err := iface.Configure(res, 0, false); err != nil {
		t.Fatal(err)
	}
	addrs, _ := p.contH.AddrList(v.Container, netlink.FAMILY_V6)
	for _, ad := range addrs {
		if ad.IP.IsGlobalUnicast() && ad.Flags&unix.IFA_F_TENTATIVE != 0 {
			t.Errorf("address %s is tentative: DAD should be skipped", ad.IPNet)
		}
	}
	if err := iface.CheckAddrs(res, 0); err != nil {
		t.Error(err)
	}
	if err := CheckRoutes(p.contH, res.Routes); err != nil {
		t.Error(err)
	}
	missing := []*types.Route{{Dst: mustCIDR(t, "10.201.0.0/16"), GW: net.ParseIP("10.9.0.254")}}
	if err := CheckRoutes(p.contH, missing); err == nil {
		t.Error("CheckRoutes accepted a missing route")
	}

	ips, err := DelContainerLink(p.cont.Path(), "eth0")
	if err != nil {
		t.Fatal(err)
	}
	if len(ips) != 2 {
		t.Errorf("deleted link had %v", ips)
	}
	if _, err := p.hostH.LinkByName(HostVethName(a)); err == nil {
		t.Error("host end survived deletion of the container end")
	}
	if ips, err := DelContainerLink(p.cont.Path(), "eth0"); err != nil || ips != nil {
		t.Errorf("second delete: %v %v", ips, err)
	}
	if _, err := DelContainerLink("/var/run/netns/pn-does-not-exist", "eth0"); err != nil {
		t.Errorf("delete in a vanished netns: %v", err)
	}
}

func TestConfigureWithDAD(t *testing.T) {
	p := newPair(t)
	a := attachment.ID{Network: "n1", ContainerID: "dad", IfName: "eth0"}
	v, err := CreateVeth(p.hostH, p.contH, p.cont.NS, VethSpec{Attachment: a})
	if err != nil {
		t.Fatal(err)
	}
	if err := Sysctl(p.cont.NS, "net/ipv6/conf/eth0/accept_dad", "1"); err != nil {
		t.Fatal(err)
	}
	res := &current.Result{IPs: []*current.IPConfig{{Interface: current.Int(0), Address: mustCIDR(t, "fd00:7::5/64")}}}
	iface := &Iface{NS: p.cont.NS, Handle: p.contH, Link: v.Container}
	if err := iface.Configure(res, 0, true); err != nil {
		t.Fatal(err)
	}
	if pending, err := iface.tentative(); err != nil || pending {
		t.Errorf("after Configure with DAD: tentative=%v err=%v", pending, err)
	}
}

func TestGCHostLinks(t *testing.T) {
	p := newPair(t)
	keepA := attachment.ID{Network: "n1", ContainerID: "keep", IfName: "eth0"}
	dropA := attachment.ID{Network: "n1", ContainerID: "drop", IfName: "eth0"}
	otherA := attachment.ID{Network: "n2", ContainerID: "other", IfName: "eth0"}
	for _, a := range []attachment.ID{keepA, dropA, otherA} {
		c, err := netns.NewTemp("pnlink-gc")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Remove() })
		ch, err := netlink.NewHandleAt(c.Handle())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := CreateVeth(p.hostH, ch, c.NS, VethSpec{Attachment: a}); err != nil {
			t.Fatal(err)
		}
		ch.Close()
		// A second host link of the attachment, created after its veth,
		// as bandwidth's ifb is: it carries the same alias.
		ifb := &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: IfbName(a)}}
		if err := p.hostH.LinkAdd(ifb); err != nil {
			t.Fatal(err)
		}
		if err := p.hostH.LinkSetAlias(ifb, Alias(a)); err != nil {
			t.Fatal(err)
		}
	}
	// Links an ADD killed before stamping them leaves: podnet's names, no
	// alias (of any network: GC cannot tell, and none is valid); and a
	// link of someone else's without an alias, which GC leaves alone.
	halfA := attachment.ID{Network: "n3", ContainerID: "killed", IfName: "eth0"}
	for _, l := range []netlink.Link{
		&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostVethName(halfA)}, PeerName: "half-peer"},
		&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: IfbName(halfA)}},
		&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "other0"}, PeerName: "other1"},
	} {
		if err := p.hostH.LinkAdd(l); err != nil {
			t.Fatal(err)
		}
	}
	keep := func(a attachment.ID) bool { return a == keepA }
	if err := GCHostLinks(p.hostH, "n1", keep); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{HostVethName(halfA): false, IfbName(halfA): false, "other0": true} {
		if _, err := p.hostH.LinkByName(name); (err == nil) != want {
			t.Errorf("%s present=%v, want %v", name, err == nil, want)
		}
	}
	for a, want := range map[attachment.ID]bool{keepA: true, dropA: false, otherA: true} {
		for _, name := range []string{HostVethName(a), IfbName(a)} {
			_, err := p.hostH.LinkByName(name)
			if (err == nil) != want {
				t.Errorf("%v: %s present=%v, want %v", a, name, err == nil, want)
			}
		}
	}
	if err := DelHostLink(p.hostH, keepA); err != nil {
		t.Fatal(err)
	}
	if _, err := p.hostH.LinkByName(HostVethName(keepA)); err == nil {
		t.Error("DelHostLink left the link")
	}
	// DEL after an ADD killed before stamping the veth removes it too.
	halfB := attachment.ID{Network: "n1", ContainerID: "killed2", IfName: "eth0"}
	if err := p.hostH.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: HostVethName(halfB)}, PeerName: "half-peer2"}); err != nil {
		t.Fatal(err)
	}
	if err := DelHostLink(p.hostH, halfB); err != nil {
		t.Fatal(err)
	}
	if _, err := p.hostH.LinkByName(HostVethName(halfB)); err == nil {
		t.Error("DelHostLink left the veth an ADD did not stamp")
	}
}
