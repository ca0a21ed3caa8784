package routed

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/fabric"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// lab is a set of "node" namespaces on one or more L2 segments. Each
// segment is a bridge in the "router" namespace; with more than one segment
// the router has an address on each bridge and forwards between them, and
// the nodes route the other segments through it. Each node has a "pod"
// namespace attached by a veth: the pod holds a /32 (/128) with an onlink
// default route to the node, the node a host route to the pod.
type lab struct {
	router *netns.Temp
	nodes  []*node
}

type node struct {
	name            string
	ns, pod         *netns.Temp
	h               *netlink.Handle
	ip, ip6         net.IP
	subnet, subnet6 *net.IPNet
	podIP, podIP6   net.IP
	mac             net.HardwareAddr
	fab             *Fabric
}

func cidr(s string) *net.IPNet {
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		panic(err)
	}
	if v4 := ip.To4(); v4 != nil {
		ip = v4
	}
	n.IP = ip
	return n
}

func newTemp(t *testing.T, prefix string) *netns.Temp {
	t.Helper()
	ns, err := netns.NewTemp(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	return ns
}

func handleIn(t *testing.T, ns *netns.Temp) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// must fails the test on a setup error.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// sysctlIn writes a sysctl inside a test namespace.
func sysctlIn(t *testing.T, ns *netns.Temp, key, value string) {
	t.Helper()
	must(t, ns.Do(func() error {
		return os.WriteFile("/proc/sys/"+key, []byte(value), 0o644)
	}))
}

// newLab builds segments[i] nodes on segment i; pods get podMTU.
func newLab(t *testing.T, podMTU int, segments ...int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
	l := &lab{router: newTemp(t, "pnfab-rt")}
	rh := handleIn(t, l.router)
	routed := len(segments) > 1
	if routed {
		sysctlIn(t, l.router, "net/ipv4/ip_forward", "1")
		sysctlIn(t, l.router, "net/ipv6/conf/all/forwarding", "1")
	}
	k := 0
	for s, count := range segments {
		seg := s + 1
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("br%d", seg)}}
		must(t, rh.LinkAdd(br))
		must(t, rh.LinkSetUp(br))
		if routed {
			must(t, rh.AddrAdd(br, &netlink.Addr{IPNet: cidr(fmt.Sprintf("198.18.%d.254/24", seg))}))
			must(t, rh.AddrAdd(br, &netlink.Addr{IPNet: cidr(fmt.Sprintf("fd00:18:%d::fe/64", seg)), Flags: unix.IFA_F_NODAD}))
		}
		for range count {
			k++
			n := &node{
				name:    fmt.Sprintf("n%d", k),
				ns:      newTemp(t, fmt.Sprintf("pnfab-n%d", k)),
				ip:      net.IPv4(198, 18, byte(seg), byte(k)).To4(),
				ip6:     net.ParseIP(fmt.Sprintf("fd00:18:%d::%d", seg, k)),
				subnet:  cidr(fmt.Sprintf("10.244.%d.0/24", k)),
				subnet6: cidr(fmt.Sprintf("fd00:244:%d::/64", k)),
				podIP:   net.IPv4(10, 244, byte(k), 2).To4(),
				podIP6:  net.ParseIP(fmt.Sprintf("fd00:244:%d::2", k)),
			}
			n.h = handleIn(t, n.ns)
			// Underlay: eth0 in the node, its peer a port of the bridge.
			port := fmt.Sprintf("p%d", k)
			must(t, n.h.LinkAdd(&netlink.Veth{
				LinkAttrs: netlink.LinkAttrs{Name: "eth0", MTU: 1500},
				PeerName:  port, PeerNamespace: netlink.NsFd(l.router.Fd()),
			}))
			p, err := rh.LinkByName(port)
			must(t, err)
			must(t, rh.LinkSetMaster(p, br))
			must(t, rh.LinkSetUp(p))
			eth, err := n.h.LinkByName("eth0")
			must(t, err)
			must(t, n.h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.ip, Mask: net.CIDRMask(24, 32)}}))
			must(t, n.h.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.ip6, Mask: net.CIDRMask(64, 128)}, Flags: unix.IFA_F_NODAD}))
			must(t, n.h.LinkSetUp(eth))
			for other := 1; routed && other <= len(segments); other++ {
				if other == seg {
					continue
				}
				// A route per other segment (a covering /48 beside the
				// connected /64 is not found by this kernel's IPv6 lookup).
				must(t, n.h.RouteAdd(&netlink.Route{Dst: cidr(fmt.Sprintf("198.18.%d.0/24", other)), Gw: net.IPv4(198, 18, byte(seg), 254), LinkIndex: eth.Attrs().Index}))
				must(t, n.h.RouteAdd(&netlink.Route{Dst: cidr(fmt.Sprintf("fd00:18:%d::/64", other)), Gw: net.ParseIP(fmt.Sprintf("fd00:18:%d::fe", seg)), LinkIndex: eth.Attrs().Index}))
			}
			n.addPod(t, podMTU)
			l.nodes = append(l.nodes, n)
		}
	}
	return l
}

// addPod attaches the node's pod namespace.
func (n *node) addPod(t *testing.T, mtu int) {
	t.Helper()
	n.pod = newTemp(t, "pnfab-pod"+strings.TrimPrefix(n.name, "n"))
	ph := handleIn(t, n.pod)
	must(t, n.h.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "pod0", MTU: mtu},
		PeerName:  "eth0", PeerNamespace: netlink.NsFd(n.pod.Fd()),
	}))
	host, err := n.h.LinkByName("pod0")
	must(t, err)
	gw := n.subnet.IP.To4()
	gw = net.IPv4(gw[0], gw[1], gw[2], 1).To4()
	gw6 := make(net.IP, 16)
	copy(gw6, n.subnet6.IP)
	gw6[15] = 1
	must(t, n.h.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: gw, Mask: net.CIDRMask(32, 32)}}))
	must(t, n.h.AddrAdd(host, &netlink.Addr{IPNet: &net.IPNet{IP: gw6, Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}))
	must(t, n.h.LinkSetUp(host))
	must(t, n.h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: n.podIP, Mask: net.CIDRMask(32, 32)}, LinkIndex: host.Attrs().Index, Scope: netlink.SCOPE_LINK}))
	must(t, n.h.RouteAdd(&netlink.Route{Dst: &net.IPNet{IP: n.podIP6, Mask: net.CIDRMask(128, 128)}, LinkIndex: host.Attrs().Index}))
	eth, err := ph.LinkByName("eth0")
	must(t, err)
	must(t, ph.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.podIP, Mask: net.CIDRMask(32, 32)}}))
	must(t, ph.AddrAdd(eth, &netlink.Addr{IPNet: &net.IPNet{IP: n.podIP6, Mask: net.CIDRMask(128, 128)}, Flags: unix.IFA_F_NODAD}))
	must(t, ph.LinkSetUp(eth))
	must(t, ph.RouteAdd(&netlink.Route{Gw: gw, LinkIndex: eth.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}))
	must(t, ph.RouteAdd(&netlink.Route{Dst: cidr("::/0"), Gw: gw6, LinkIndex: eth.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}))
}

// opts shapes the fabric config of a lab node.
type opts struct {
	mode       cluster.Backend
	dual       bool // IPv6 pod subnets
	underlayV6 bool // the nodes publish their IPv6 underlay address
	wantNoMAC  bool // Setup returns no VTEP MAC
	mtu, vni   int
	device     string
}

func (n *node) config(o opts) Config {
	c := Config{
		Mode: o.mode, Underlay: "eth0", LocalIP: n.ip, Subnet: n.subnet,
		VNI: o.vni, MTU: o.mtu, Device: o.device, NetNS: n.ns.NS,
	}
	if o.dual {
		c.Subnet6 = n.subnet6
	}
	if o.underlayV6 {
		c.LocalIP6 = n.ip6
	}
	return c
}

// start binds and sets up a fabric on every node.
func (l *lab) start(t *testing.T, o opts) {
	t.Helper()
	for _, n := range l.nodes {
		f, err := New(n.config(o), n.h)
		must(t, err)
		n.fab = f
		local, err := f.Setup()
		must(t, err)
		mac := local.VTEPMAC
		if o.wantNoMAC != (mac == nil) {
			t.Fatalf("%s: Setup returned MAC %v in mode %s", n.name, mac, o.mode)
		}
		n.mac = mac
	}
}

func (n *node) peer(o opts) fabric.Peer {
	p := fabric.Peer{Name: n.name, IP: n.ip, Subnet: n.subnet, VTEPMAC: n.mac}
	if o.dual {
		p.Subnet6 = n.subnet6
	}
	if o.underlayV6 {
		p.IP6 = n.ip6
	}
	return p
}

// peers is every node of the lab, the reconciling node included (the
// fabric skips itself).
func (l *lab) peers(o opts, except ...string) []fabric.Peer {
	var ps []fabric.Peer
	for _, n := range l.nodes {
		if !contains(except, n.name) {
			ps = append(ps, n.peer(o))
		}
	}
	return ps
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// reconcileAll reconciles every node with every peer.
func (l *lab) reconcileAll(t *testing.T, o opts) map[string]fabric.Result {
	t.Helper()
	out := make(map[string]fabric.Result)
	for _, n := range l.nodes {
		res, err := n.fab.Reconcile(l.peers(o))
		if err != nil {
			t.Fatalf("%s: Reconcile: %v", n.name, err)
		}
		out[n.name] = res
	}
	return out
}

// ipcmd runs `ip` inside a namespace to observe the kernel.
func ipcmd(t *testing.T, ns *netns.Temp, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// ownedRoutesText is the `ip route` lines of podnet's protocol, both
// families.
func ownedRoutesText(t *testing.T, n *node) string {
	t.Helper()
	var out strings.Builder
	mark := fmt.Sprintf(" proto %d ", int(RouteProtocol))
	for _, fam := range []string{"-4", "-6"} {
		for _, line := range strings.Split(ipcmd(t, n.ns, fam, "route", "show"), "\n") {
			if strings.Contains(line+" ", mark) {
				out.WriteString(line + "\n")
			}
		}
	}
	return out.String()
}

// tcpExchange connects from one node's pod to another's over TCP, sends
// size bytes, and checks that the server received them all from the
// client pod's own address (no NAT) and that its acknowledgement arrives.
func tcpExchange(from, to *node, v6 bool, size int) error {
	src, dst := from.podIP, to.podIP
	if v6 {
		src, dst = from.podIP6, to.podIP6
	}
	var ln net.Listener
	if err := to.pod.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(dst.String(), "0"))
		return err
	}); err != nil {
		return fmt.Errorf("listen in %s's pod: %w", to.name, err)
	}
	defer ln.Close()
	srv := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srv <- err
			return
		}
		defer c.Close()
		if ra := c.RemoteAddr().(*net.TCPAddr).IP; !ra.Equal(src) {
			srv <- fmt.Errorf("server saw peer %s, want the pod address %s", ra, src)
			return
		}
		n, err := io.Copy(io.Discard, c)
		if err != nil {
			srv <- err
			return
		}
		_, err = fmt.Fprintf(c, "%d", n)
		srv <- err
	}()
	var reply []byte
	err := from.pod.Do(func() error {
		d := net.Dialer{Timeout: 20 * time.Second}
		c, err := d.Dial("tcp", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		// Bounds a black-holed transfer; a working one takes milliseconds.
		_ = c.SetDeadline(time.Now().Add(60 * time.Second))
		if _, err := io.CopyN(c, zeroes{}, int64(size)); err != nil {
			return fmt.Errorf("send: %w", err)
		}
		if err := c.(*net.TCPConn).CloseWrite(); err != nil {
			return err
		}
		reply, err = io.ReadAll(c)
		return err
	})
	if err != nil {
		ln.Close()
		<-srv
		return fmt.Errorf("%s pod → %s pod (%s): %w", from.name, to.name, dst, err)
	}
	if err := <-srv; err != nil {
		return fmt.Errorf("%s pod → %s pod (%s): server: %w", from.name, to.name, dst, err)
	}
	if string(reply) != fmt.Sprint(size) {
		return fmt.Errorf("%s pod → %s pod: server received %q bytes, sent %d", from.name, to.name, reply, size)
	}
	return nil
}

type zeroes struct{}

func (zeroes) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// mustReach checks TCP both ways between each pair, v4 and (dual) v6.
func mustReach(t *testing.T, dual bool, pairs ...[2]*node) {
	t.Helper()
	for _, p := range pairs {
		for _, dir := range [][2]*node{{p[0], p[1]}, {p[1], p[0]}} {
			if err := tcpExchange(dir[0], dir[1], false, 64<<10); err != nil {
				t.Error(err)
			}
			if dual {
				if err := tcpExchange(dir[0], dir[1], true, 64<<10); err != nil {
					t.Error(err)
				}
			}
		}
	}
}

// udpDF sends one UDP datagram of payload bytes with DF set (no local
// fragmentation) from one pod to another and waits for it to arrive.
func udpDF(from, to *node, payload int) error {
	var pc net.PacketConn
	if err := to.pod.Do(func() error {
		var err error
		pc, err = net.ListenPacket("udp4", net.JoinHostPort(to.podIP.String(), "0"))
		return err
	}); err != nil {
		return err
	}
	defer pc.Close()
	err := from.pod.Do(func() error {
		c, err := net.DialUDP("udp4", nil, pc.LocalAddr().(*net.UDPAddr))
		if err != nil {
			return err
		}
		defer c.Close()
		if err := link.DontFragment(c); err != nil {
			return err
		}
		_, err = c.Write(bytes.Repeat([]byte{'x'}, payload))
		return err
	})
	if err != nil {
		return err
	}
	_ = pc.SetReadDeadline(time.Now().Add(20 * time.Second))
	buf := make([]byte, 65536)
	n, _, err := pc.ReadFrom(buf)
	if err != nil {
		return fmt.Errorf("datagram of %d bytes did not arrive: %w", payload, err)
	}
	if n != payload {
		return fmt.Errorf("received %d bytes, sent %d", n, payload)
	}
	return nil
}

func isMsgSize(err error) bool { return errors.Is(err, syscall.EMSGSIZE) }
