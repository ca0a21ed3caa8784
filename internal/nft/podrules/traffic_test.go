package podrules

import (
	"encoding/binary"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// handle returns a netlink handle inside the namespace.
func handle(t *testing.T, ns *netns.Temp) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// vethPair creates a veth whose end name is in h's namespace and whose
// peer is in the namespace peerNS.
func vethPair(t *testing.T, h *netlink.Handle, name string, peerNS *netns.Temp, peer string) {
	t.Helper()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer, PeerNamespace: netlink.NsFd(peerNS.Fd())}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("add veth %s/%s: %v", name, peer, err)
	}
}

// setUp brings a link up with the given addresses (without DAD).
func setUp(t *testing.T, h *netlink.Handle, name string, addrs ...string) netlink.Link {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: cidr(t, a), Flags: unix.IFA_F_NODAD}); err != nil {
			t.Fatalf("add %s to %s: %v", a, name, err)
		}
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	return l
}

// waitOperUp waits (up to 5s) until the links have carrier: the kernel
// reports it, and makes a bridge port forward, asynchronously (linkwatch),
// later still when it is busy tearing down other namespaces; a frame sent
// before that is dropped.
func waitOperUp(t *testing.T, h *netlink.Handle, names ...string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for _, n := range names {
		for {
			l, err := h.LinkByName(n)
			if err != nil {
				t.Fatal(err)
			}
			if l.Attrs().OperState == netlink.OperUp {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no carrier (operstate %s)", n, l.Attrs().OperState)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
}

func route(t *testing.T, h *netlink.Handle, l netlink.Link, dst, gw string) {
	t.Helper()
	r := &netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}
	if dst != "" {
		_, r.Dst, _ = net.ParseCIDR(dst)
	}
	if err := h.RouteAdd(r); err != nil {
		t.Fatalf("route %s via %s: %v", dst, gw, err)
	}
}

func sysctl(t *testing.T, ns *netns.Temp, path, value string) {
	t.Helper()
	if err := ns.Do(func() error { return os.WriteFile(path, []byte(value), 0o644) }); err != nil {
		t.Fatalf("%s=%s: %v", path, value, err)
	}
}

// sourceSeen connects from the pod namespace to ln, a listener in the
// outside namespace, and returns the source address the listener sees.
func sourceSeen(t *testing.T, pod *netns.Temp, ln net.Listener) string {
	t.Helper()
	type result struct {
		addr string
		err  error
	}
	accepted := make(chan result, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			accepted <- result{err: err}
			return
		}
		defer conn.Close()
		_, _ = io.Copy(io.Discard, conn)
		host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
		accepted <- result{addr: host}
	}()
	err := pod.Do(func() error {
		conn, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		_, err = conn.Write([]byte("hello"))
		conn.Close()
		return err
	})
	if err != nil {
		t.Fatalf("connect from pod to %s: %v", ln.Addr(), err)
	}
	select {
	case r := <-accepted:
		if r.err != nil {
			t.Fatal(r.err)
		}
		return r.addr
	case <-time.After(10 * time.Second):
		t.Fatalf("listener %s accepted nothing", ln.Addr())
	}
	return ""
}

// TestMasqueradeTraffic builds pod — host — outside out of three
// namespaces joined by veths, the host forwarding between them, and checks
// the source address the outside sees: the pod's own before AddMasquerade,
// the host's after, the pod's again for a destination inside the pod's
// subnet, and the pod's once DelAttachment has removed the rule.
//
// The rule is given a wider prefix (/16, /32) than the pod's interface
// (/24, /64) so that an outside address can be "inside the pod subnet" for
// the rule while being routed through the host.
func TestMasqueradeTraffic(t *testing.T) {
	for _, tc := range []struct {
		name        string
		forwarding  string
		podAddr     string // on the pod's interface
		podGw       string // host's address on the pod link
		hostOutAddr []string
		outAddr     []string
		outRoute    string // route back to the pod link, via hostInside
		hostInside  string
		ruleNet     string // what AddMasquerade gets
		far         string // outside address outside ruleNet
		near        string // outside address inside ruleNet
	}{
		{
			name: "ipv4", forwarding: "/proc/sys/net/ipv4/ip_forward",
			podAddr: "10.99.1.2/24", podGw: "10.99.1.1",
			hostOutAddr: []string{"192.168.77.1/24", "10.99.200.1/24"},
			outAddr:     []string{"192.168.77.2/24", "10.99.200.2/24"},
			outRoute:    "10.99.1.0/24", hostInside: "10.99.200.1",
			ruleNet: "10.99.1.2/16", far: "192.168.77.2", near: "10.99.200.2",
		},
		{
			name: "ipv6", forwarding: "/proc/sys/net/ipv6/conf/all/forwarding",
			podAddr: "fd00:1:0:1::2/64", podGw: "fd00:1:0:1::1",
			hostOutAddr: []string{"fd00:77::1/64", "fd00:1:0:200::1/64"},
			outAddr:     []string{"fd00:77::2/64", "fd00:1:0:200::2/64"},
			outRoute:    "fd00:1:0:1::/64", hostInside: "fd00:1:0:200::1",
			ruleNet: "fd00:1:0:1::2/32", far: "fd00:77::2", near: "fd00:1:0:200::2",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod, host, outside := tempNS(t, "nftpod"), tempNS(t, "nfthost"), tempNS(t, "nftout")
			for _, ns := range []*netns.Temp{pod, host, outside} {
				// No DAD for the link-local addresses either.
				sysctl(t, ns, "/proc/sys/net/ipv6/conf/default/accept_dad", "0")
			}
			hp, hh, ho := handle(t, pod), handle(t, host), handle(t, outside)
			vethPair(t, hh, "h0", pod, "p0")
			vethPair(t, hh, "h1", outside, "o0")
			hostPodAddr := tc.podGw + "/24"
			if tc.name == "ipv6" {
				hostPodAddr = tc.podGw + "/64"
			}
			setUp(t, hh, "h0", hostPodAddr)
			setUp(t, hh, "h1", tc.hostOutAddr...)
			p0 := setUp(t, hp, "p0", tc.podAddr)
			o0 := setUp(t, ho, "o0", tc.outAddr...)
			route(t, hp, p0, "", tc.podGw)
			route(t, ho, o0, tc.outRoute, tc.hostInside)
			sysctl(t, host, tc.forwarding, "1")

			listen := func(addr string) net.Listener {
				var ln net.Listener
				if err := outside.Do(func() (err error) {
					ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0"))
					return err
				}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				return ln
			}
			far, near := listen(tc.far), listen(tc.near)
			podIP := cidr(t, tc.podAddr).IP.String()
			hostFarIP := cidr(t, tc.hostOutAddr[0]).IP.String()

			if got := sourceSeen(t, pod, far); got != podIP {
				t.Fatalf("without masquerade the outside sees %s, want the pod's %s", got, podIP)
			}
			c := connIn(t, host)
			a := att("masqnet", "pod1", "eth0")
			if err := c.AddMasquerade(a, cidrs(t, tc.ruleNet)); err != nil {
				t.Fatal(err)
			}
			if got := sourceSeen(t, pod, far); got != hostFarIP {
				t.Errorf("with masquerade the outside sees %s, want the host's %s", got, hostFarIP)
			}
			if got := sourceSeen(t, pod, near); got != podIP {
				t.Errorf("to %s, inside the pod subnet, the source is %s, want the pod's %s", tc.near, got, podIP)
			}
			if err := c.DelAttachment(a); err != nil {
				t.Fatal(err)
			}
			if got := sourceSeen(t, pod, far); got != podIP {
				t.Errorf("after DEL the outside sees %s, want the pod's %s", got, podIP)
			}
		})
	}
}

// TestMacSpoofTraffic bridges two pods in a host namespace and sends them
// hand-made UDP frames through a packet socket in pod A: with A's MAC as
// source they reach pod B; with a forged source MAC they are dropped while
// the spoof check is in place, and pass again once DelAttachment removed it.
func TestMacSpoofTraffic(t *testing.T) {
	host, podA, podB := tempNS(t, "nfthost"), tempNS(t, "nftpoda"), tempNS(t, "nftpodb")
	hh, ha, hb := handle(t, host), handle(t, podA), handle(t, podB)
	if err := hh.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}); err != nil {
		t.Fatal(err)
	}
	br := setUp(t, hh, "br0")
	vethPair(t, hh, "va", podA, "pa")
	vethPair(t, hh, "vb", podB, "pb")
	for _, n := range []string{"va", "vb"} {
		l, err := hh.LinkByName(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := hh.LinkSetMaster(l, br); err != nil {
			t.Fatal(err)
		}
		setUp(t, hh, n)
	}
	pa := setUp(t, ha, "pa", "10.98.0.2/24")
	pb := setUp(t, hb, "pb", "10.98.0.3/24")
	waitOperUp(t, hh, "va", "vb")
	waitOperUp(t, ha, "pa")
	waitOperUp(t, hb, "pb")
	macA, macB := pa.Attrs().HardwareAddr, pb.Attrs().HardwareAddr
	forged := net.HardwareAddr{0x02, 0xde, 0xad, 0xbe, 0xef, 0x01}

	var rx *net.UDPConn
	if err := podB.Do(func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 98, 0, 3)})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer rx.Close()
	port := rx.LocalAddr().(*net.UDPAddr).Port

	var fd int
	if err := podA.Do(func() (err error) {
		fd, err = unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	send := func(src net.HardwareAddr, payload string) {
		t.Helper()
		frame := udpFrame(src, macB, net.IPv4(10, 98, 0, 2), net.IPv4(10, 98, 0, 3), 40000, port, []byte(payload))
		sa := &unix.SockaddrLinklayer{Ifindex: pa.Attrs().Index, Halen: 6}
		copy(sa.Addr[:], macB)
		if err := unix.Sendto(fd, frame, 0, sa); err != nil {
			t.Fatalf("send %q: %v", payload, err)
		}
	}
	// recv returns the next datagram pod B receives within d, or "".
	recv := func(d time.Duration) string {
		t.Helper()
		buf := make([]byte, 1500)
		rx.SetReadDeadline(time.Now().Add(d))
		n, _, err := rx.ReadFrom(buf)
		if err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				return ""
			}
			t.Fatal(err)
		}
		return string(buf[:n])
	}

	c := connIn(t, host)
	a := att("brnet", "podA", "eth0")
	if err := c.AddMacSpoofCheck(a, "va", macA); err != nil {
		t.Fatal(err)
	}
	send(macA, "own-1")
	if got := recv(5 * time.Second); got != "own-1" {
		t.Fatalf("frame with the pod's own MAC: received %q", got)
	}
	// A forged frame followed by a genuine one: the genuine one must be
	// the next to arrive, and nothing may follow it.
	send(forged, "forged")
	send(macA, "own-2")
	if got := recv(5 * time.Second); got != "own-2" {
		t.Fatalf("after a forged and a genuine frame, received %q first, want own-2", got)
	}
	if got := recv(300 * time.Millisecond); got != "" {
		t.Fatalf("received %q after own-2; the forged frame passed", got)
	}
	// Without the rule the same forged frame passes: the drop was ours.
	if err := c.DelAttachment(a); err != nil {
		t.Fatal(err)
	}
	send(forged, "forged-no-rule")
	if got := recv(5 * time.Second); got != "forged-no-rule" {
		t.Fatalf("without the spoof check, received %q", got)
	}
}

// udpFrame builds an Ethernet/IPv4/UDP frame (UDP checksum 0, allowed
// over IPv4).
func udpFrame(src, dst net.HardwareAddr, sip, dip net.IP, sport, dport int, payload []byte) []byte {
	udpLen := 8 + len(payload)
	ipLen := 20 + udpLen
	f := make([]byte, 14+ipLen)
	copy(f[0:6], dst)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	ip := f[14:34]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	binary.BigEndian.PutUint16(ip[6:], 0x4000) // DF
	ip[8] = 64
	ip[9] = unix.IPPROTO_UDP
	copy(ip[12:16], sip.To4())
	copy(ip[16:20], dip.To4())
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], uint16(sport))
	binary.BigEndian.PutUint16(udp[2:], uint16(dport))
	binary.BigEndian.PutUint16(udp[4:], uint16(udpLen))
	copy(udp[8:], payload)
	return f
}
