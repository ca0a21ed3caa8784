package dataplane

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// lab is a node namespace (the sandbox's host) with routed pods, each in
// a subnet of its own inside the cluster CIDRs and running TCP and UDP
// servers that answer with their name and the client's address, and a
// client outside the cluster on the node's underlay link.
type lab struct {
	sb     *sandbox.Sandbox
	node   *netns.Temp
	pods   []*pod
	client *pod
	// nodeIP4/6 are the node's underlay addresses, clientIP4/6 the
	// client's.
	nodeIP4, nodeIP6, clientIP4, clientIP6 netip.Addr
}

// pod is a namespace with its addresses and, for the lab's pods, servers.
type pod struct {
	name      string
	ns        *netns.Temp
	ip4, ip6  netip.Addr
	gw4, gw6  netip.Addr // the node's end of the pod's link
	listenTCP net.Listener
	listenUDP net.PacketConn
}

// Ports the pods' servers listen on.
const (
	tcpPort = 8080
	udpPort = 5353
)

var clusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:244::/48")}

// newLab builds the lab with n pods; it is removed when the test ends.
func newLab(t testing.TB, n int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	sb, err := sandbox.New(sandbox.Options{Prefix: "dpsvc"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
	})
	l := &lab{
		sb: sb, node: sb.Host,
		nodeIP4: netip.MustParseAddr("192.168.50.1"), nodeIP6: netip.MustParseAddr("fd50::1"),
		clientIP4: netip.MustParseAddr("192.168.50.2"), clientIP6: netip.MustParseAddr("fd50::2"),
	}
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}} {
		if err := link.Sysctl(sb.Host.NS, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	c, err := sb.NewPeer([]string{"192.168.50.1/24", "fd50::1/64"}, []string{"192.168.50.2/24", "fd50::2/64"})
	if err != nil {
		t.Fatal(err)
	}
	l.client = &pod{name: "client", ns: c.NS, ip4: l.clientIP4, ip6: l.clientIP6}
	// The node reaches service addresses through the client, its router:
	// its own connections to a ClusterIP need a route before the output
	// hook DNATs them.
	h, err := netlink.NewHandleAt(l.node.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	for _, gw := range []netip.Addr{l.clientIP4, l.clientIP6} {
		if err := h.RouteAdd(&netlink.Route{Gw: gw.AsSlice()}); err != nil {
			t.Fatalf("node default route via %v: %v", gw, err)
		}
	}
	for i := 1; i <= n; i++ {
		p := &pod{
			name: fmt.Sprintf("pod%d", i),
			ip4:  netip.MustParseAddr(fmt.Sprintf("10.244.%d.2", i)), gw4: netip.MustParseAddr(fmt.Sprintf("10.244.%d.1", i)),
			ip6: netip.MustParseAddr(fmt.Sprintf("fd00:244:0:%d::2", i)), gw6: netip.MustParseAddr(fmt.Sprintf("fd00:244:0:%d::1", i)),
		}
		pp, err := sb.NewPeer([]string{p.gw4.String() + "/24", p.gw6.String() + "/64"}, []string{p.ip4.String() + "/24", p.ip6.String() + "/64"})
		if err != nil {
			t.Fatal(err)
		}
		p.ns = pp.NS
		p.serve(t)
		l.pods = append(l.pods, p)
	}
	// IPv6 links need a moment (link-local addresses, neighbour
	// discovery) before the first packets pass: wait until the node
	// reaches every pod directly.
	for _, p := range l.pods {
		for _, a := range []netip.Addr{p.ip4, p.ip6} {
			eventually(t, fmt.Sprintf("node reaches %s at %v", p.name, a), func() error {
				_, err := helloTCP(l.node, netip.AddrPortFrom(a, tcpPort))
				return err
			})
		}
	}
	return l
}

// serve starts the pod's servers: TCP answers a connection with "name
// client-address" and then echoes lines prefixed with the name; UDP
// answers each datagram with "name client-address".
func (p *pod) serve(t testing.TB) {
	t.Helper()
	err := p.ns.Do(func() error {
		var err error
		if p.listenTCP, err = net.Listen("tcp", fmt.Sprintf(":%d", tcpPort)); err != nil {
			return err
		}
		p.listenUDP, err = net.ListenPacket("udp", fmt.Sprintf(":%d", udpPort))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.listenTCP.Close(); p.listenUDP.Close() })
	go func() {
		for {
			c, err := p.listenTCP.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				if _, err := fmt.Fprintf(c, "%s %s\n", p.name, hostOf(c.RemoteAddr())); err != nil {
					return
				}
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					if _, err := fmt.Fprintf(c, "%s %s\n", p.name, sc.Text()); err != nil {
						return
					}
				}
			}()
		}
	}()
	go func() {
		buf := make([]byte, 1500)
		for {
			_, from, err := p.listenUDP.ReadFrom(buf)
			if err != nil {
				return
			}
			_, _ = p.listenUDP.WriteTo([]byte(p.name+" "+hostOf(from)), from)
		}
	}()
}

// hostOf is the unmapped address of a socket address.
func hostOf(a net.Addr) string {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return a.String()
	}
	return ap.Addr().Unmap().String()
}

// answer is what a server told a client: its name and the client's
// address it saw.
type answer struct{ server, source string }

// hello connects over TCP from ns to addr and returns the server's
// greeting; conn stays open for the caller when keep is set.
func hello(ns *netns.Temp, addr netip.AddrPort) (answer, net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	c, err := ns.DialContext(ctx, nil, "tcp", addr.String())
	if err != nil {
		return answer{}, nil, err
	}
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return answer{}, nil, fmt.Errorf("read greeting from %v: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return parseAnswer(line), c, nil
}

// helloTCP is hello that closes the connection.
func helloTCP(ns *netns.Temp, addr netip.AddrPort) (answer, error) {
	a, c, err := hello(ns, addr)
	if c != nil {
		c.Close()
	}
	return a, err
}

func parseAnswer(line string) answer {
	server, source, _ := strings.Cut(strings.TrimSpace(line), " ")
	return answer{server, source}
}

// udpClient is a connected UDP socket in a namespace: the same 5-tuple,
// one conntrack entry, across datagrams.
type udpClient struct{ c net.Conn }

func dialUDP(t *testing.T, ns *netns.Temp, addr netip.AddrPort) *udpClient {
	t.Helper()
	c, err := ns.DialContext(context.Background(), nil, "udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpClient{c}
}

// ask sends one datagram and waits for the answer.
func (u *udpClient) ask(timeout time.Duration) (answer, error) {
	_ = u.c.SetDeadline(time.Now().Add(timeout))
	if _, err := u.c.Write([]byte("?")); err != nil {
		return answer{}, err
	}
	buf := make([]byte, 1500)
	n, err := u.c.Read(buf)
	if err != nil {
		return answer{}, err
	}
	return parseAnswer(string(buf[:n])), nil
}

// eventually polls f until it returns nil or the deadline passes.
func eventually(t testing.TB, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// isRefused tells whether err is a refused connection (TCP reset or ICMP
// port unreachable).
func isRefused(err error) bool { return errors.Is(err, unix.ECONNREFUSED) }

// isTimeout tells whether err is a timeout (dropped traffic).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
