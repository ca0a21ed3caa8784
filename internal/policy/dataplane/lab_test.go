package dataplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/poll"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// lab is a node namespace (the sandbox's host) with pods on veths in
// /30 (/64) subnets of the node's pod CIDRs, the node's end of each link
// holding the subnet's first address (an address of the node inside its
// pod CIDRs), and a client outside the cluster on an underlay link. Each
// pod (and the client) runs TCP servers on ports 8080 and 9090 and a UDP
// server on 5353 that answer with the pod's name.
type lab struct {
	sb     *sandbox.Sandbox
	node   *netns.Temp
	pods   []*pod
	client *pod
	nodeIP netip.Addr // on the underlay
}

type pod struct {
	name     string
	ns       *netns.Temp
	ip4, ip6 netip.Addr
	gw4      netip.Addr // the node's end of the link
}

// The servers' ports.
const (
	portA   = 8080
	portB   = 9090
	portUDP = 5353
)

var podCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("fd00:244:1::/48")}

// newLab builds the lab with n pods; it is removed when the test ends.
func newLab(t *testing.T, n int) *lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	sb, err := sandbox.New(sandbox.Options{Prefix: "dppol"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("remove lab: %v", err)
		}
	})
	l := &lab{sb: sb, node: sb.Host, nodeIP: netip.MustParseAddr("192.168.60.1")}
	for _, kv := range [][2]string{{"net/ipv4/ip_forward", "1"}, {"net/ipv6/conf/all/forwarding", "1"}} {
		if err := link.Sysctl(sb.Host.NS, kv[0], kv[1]); err != nil {
			t.Fatal(err)
		}
	}
	c, err := sb.NewPeer([]string{"192.168.60.1/24"}, []string{"192.168.60.2/24"})
	if err != nil {
		t.Fatal(err)
	}
	l.client = &pod{name: "client", ns: c.NS, ip4: netip.MustParseAddr("192.168.60.2")}
	l.client.serve(t)
	for i := 1; i <= n; i++ {
		p := &pod{
			name: fmt.Sprintf("pod%d", i),
			gw4:  netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", 4*i+1)),
			ip4:  netip.MustParseAddr(fmt.Sprintf("10.244.1.%d", 4*i+2)),
			ip6:  netip.MustParseAddr(fmt.Sprintf("fd00:244:1:%d::2", i)),
		}
		pp, err := sb.NewPeer(
			[]string{p.gw4.String() + "/30", fmt.Sprintf("fd00:244:1:%d::1/64", i)},
			[]string{p.ip4.String() + "/30", p.ip6.String() + "/64"})
		if err != nil {
			t.Fatal(err)
		}
		p.ns = pp.NS
		p.serve(t)
		l.pods = append(l.pods, p)
	}
	// IPv6 links need a moment (neighbour discovery) before the first
	// packets pass.
	for _, p := range l.pods {
		for _, a := range []netip.Addr{p.ip4, p.ip6} {
			poll.Until(t, 10*time.Second, fmt.Sprintf("node reaches %s at %v", p.name, a), func() bool {
				return dialTCP(l.node, netip.AddrPortFrom(a, portA), time.Second) == nil
			})
		}
	}
	return l
}

// serve starts the pod's servers, stopped when the test ends.
func (p *pod) serve(t *testing.T) {
	t.Helper()
	var listeners []io.Closer
	err := p.ns.Do(func() error {
		for _, port := range []int{portA, portB} {
			ln, err := net.Listen("tcp", fmt.Sprintf(":%d", port))
			if err != nil {
				return err
			}
			listeners = append(listeners, ln)
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() {
						defer c.Close()
						// Greet, then echo: a connection stays usable.
						if _, err := fmt.Fprintf(c, "%s\n", p.name); err != nil {
							return
						}
						_, _ = io.Copy(c, c)
					}()
				}
			}()
		}
		pc, err := net.ListenPacket("udp", fmt.Sprintf(":%d", portUDP))
		if err != nil {
			return err
		}
		listeners = append(listeners, pc)
		go func() {
			buf := make([]byte, 1500)
			for {
				_, from, err := pc.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = pc.WriteTo([]byte(p.name), from)
			}
		}()
		return nil
	})
	t.Cleanup(func() {
		for _, l := range listeners {
			l.Close()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
}

// probeTimeout is how long a probe waits: traffic that policy drops
// times out.
const probeTimeout = 400 * time.Millisecond

// dialTCP connects from ns to addr and reads the greeting.
func dialTCP(ns *netns.Temp, addr netip.AddrPort, timeout time.Duration) error {
	c, err := connectTCP(ns, addr, timeout)
	if err != nil {
		return err
	}
	return c.Close()
}

// connectTCP connects from ns to addr, reads the greeting and returns
// the connection.
func connectTCP(ns *netns.Temp, addr netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	c, err := ns.DialContext(ctx, nil, "tcp", addr.String())
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(timeout))
	buf := make([]byte, 64)
	if _, err := c.Read(buf); err != nil {
		c.Close()
		return nil, fmt.Errorf("greeting from %v: %w", addr, err)
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// askUDP sends a datagram from ns to addr and waits for the answer.
func askUDP(ns *netns.Temp, addr netip.AddrPort, timeout time.Duration) error {
	c, err := ns.DialContext(context.Background(), nil, "udp", addr.String())
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte("?")); err != nil {
		return err
	}
	buf := make([]byte, 64)
	_, err = c.Read(buf)
	return err
}

// echo writes a line on an established connection and reads it back.
func echo(c net.Conn, line string) error {
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	if _, err := fmt.Fprintf(c, "%s\n", line); err != nil {
		return err
	}
	buf := make([]byte, 128)
	n, err := c.Read(buf)
	if err != nil {
		return err
	}
	if got := strings.TrimSpace(string(buf[:n])); got != line {
		return fmt.Errorf("echo %q, want %q", got, line)
	}
	return nil
}

// probe is one connection attempt of a reachability matrix.
type probe struct {
	from  *pod
	to    netip.AddrPort
	udp   bool
	allow bool
}

func (p probe) String() string {
	proto := "tcp"
	if p.udp {
		proto = "udp"
	}
	return fmt.Sprintf("%s → %s/%v", p.from.name, proto, p.to)
}

// check runs the probes concurrently and reports each whose outcome is
// not the expected one. A denied probe must time out (dropped, not
// refused).
func check(t *testing.T, probes []probe) {
	t.Helper()
	errs := make([]error, len(probes))
	var wg sync.WaitGroup
	for i, p := range probes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var err error
			if p.udp {
				err = askUDP(p.from.ns, p.to, probeTimeout)
			} else {
				err = dialTCP(p.from.ns, p.to, probeTimeout)
			}
			switch {
			case p.allow && err != nil:
				errs[i] = fmt.Errorf("%v: %w, want allowed", p, err)
			case !p.allow && err == nil:
				errs[i] = fmt.Errorf("%v: allowed, want denied", p)
			case !p.allow && !isTimeout(err):
				errs[i] = fmt.Errorf("%v: %w, want a timeout (dropped)", p, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}

// isTimeout tells whether err is a timeout (dropped traffic).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// forgetNeighbours deletes the IPv6 neighbour entries of the namespaces:
// the next packets resolve their next hops again.
func forgetNeighbours(t *testing.T, nss ...*netns.Temp) {
	t.Helper()
	for _, ns := range nss {
		h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
		if err != nil {
			t.Fatal(err)
		}
		neighs, err := h.NeighList(0, netlink.FAMILY_V6)
		if err != nil {
			h.Close()
			t.Fatal(err)
		}
		for _, n := range neighs {
			if n.State&(netlink.NUD_NOARP|netlink.NUD_PERMANENT) != 0 {
				continue
			}
			if err := h.NeighDel(&n); err != nil && !errors.Is(err, unix.ENOENT) {
				h.Close()
				t.Fatalf("delete neighbour %v: %v", n.IP, err)
			}
		}
		h.Close()
	}
}
