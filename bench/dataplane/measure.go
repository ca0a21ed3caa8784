package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/net/icmp"
	"golang.org/x/net/ipv4"

	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
)

// endpoint is one end of a measured path: a namespace (by name) and the
// address a peer reaches it by.
type endpoint struct {
	Label string `json:"label"`
	NS    string `json:"ns"`
	IP    net.IP `json:"ip"`
}

// in runs f inside the endpoint's namespace.
func (e endpoint) in(f func() error) error {
	ns, err := netns.OpenNamed(e.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	return ns.Do(f)
}

// iperfPort is the iperf3 server's port inside the server's namespace.
const iperfPort = 5201

// throughput is one iperf3 run.
type throughput struct {
	BitsPerSecond float64 `json:"bitsPerSecond"`
	Bytes         int64   `json:"bytes"`
	Retransmits   int     `json:"retransmits"`
}

// iperf runs one iperf3 TCP test from client to server (a one-off server
// started in the server's namespace) for secs seconds, the first omit
// seconds (TCP slow start) not counted.
func iperf(ctx context.Context, client, server endpoint, secs, omit int) (throughput, error) {
	var t throughput
	srv := exec.CommandContext(ctx, "iperf3", "-s", "-1", "-B", server.IP.String(), "-p", strconv.Itoa(iperfPort))
	var serr bytes.Buffer
	srv.Stdout, srv.Stderr = &serr, &serr
	if err := server.in(srv.Start); err != nil {
		return t, fmt.Errorf("iperf3 server in %s: %w", server.Label, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	defer func() {
		select {
		case <-done:
		default:
			_ = srv.Process.Kill()
			<-done
		}
	}()
	if err := waitListen(srv.Process.Pid, iperfPort, done); err != nil {
		return t, fmt.Errorf("iperf3 server in %s: %w: %s", server.Label, err, serr.String())
	}
	args := []string{"-c", server.IP.String(), "-p", strconv.Itoa(iperfPort), "-t", strconv.Itoa(secs), "-J"}
	if omit > 0 {
		args = append(args, "-O", strconv.Itoa(omit))
	}
	cli := exec.CommandContext(ctx, "iperf3", args...)
	var out, cerr bytes.Buffer
	cli.Stdout, cli.Stderr = &out, &cerr
	if err := client.in(cli.Run); err != nil {
		return t, fmt.Errorf("iperf3 %s → %s: %w: %s%s", client.Label, server.Label, err, cerr.String(), iperfError(out.Bytes()))
	}
	var r struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int `json:"retransmits"`
			} `json:"sum_sent"`
			SumReceived struct {
				Bytes         int64   `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		return t, fmt.Errorf("iperf3 output: %w", err)
	}
	if r.Error != "" {
		return t, fmt.Errorf("iperf3 %s → %s: %s", client.Label, server.Label, r.Error)
	}
	t = throughput{BitsPerSecond: r.End.SumReceived.BitsPerSecond, Bytes: r.End.SumReceived.Bytes, Retransmits: r.End.SumSent.Retransmits}
	if t.Bytes == 0 {
		return t, fmt.Errorf("iperf3 %s → %s moved no data", client.Label, server.Label)
	}
	return t, nil
}

func iperfError(out []byte) string {
	var r struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(out, &r) == nil && r.Error != "" {
		return " " + r.Error
	}
	return ""
}

// waitListen waits until the process listens on TCP port (its own
// namespace's /proc/PID/net/tcp*), or it exited (done), or 10 s passed.
func waitListen(pid, port int, done <-chan error) error {
	want := fmt.Sprintf(":%04X ", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, f := range []string{"tcp", "tcp6"} {
			b, err := os.ReadFile(fmt.Sprintf("/proc/%d/net/%s", pid, f))
			if err != nil {
				continue
			}
			for _, line := range strings.Split(string(b), "\n")[1:] {
				fields := strings.Fields(line)
				if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
					return nil
				}
			}
		}
		select {
		case err := <-done:
			return fmt.Errorf("exited before listening: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return errors.New("not listening after 10s")
		}
	}
}

// listen opens a TCP listener on the endpoint's address, any port; the
// socket stays in the endpoint's namespace.
func (e endpoint) listen() (net.Listener, error) {
	var ln net.Listener
	err := e.in(func() error {
		var err error
		ln, err = net.Listen("tcp", net.JoinHostPort(e.IP.String(), "0"))
		return err
	})
	return ln, err
}

// dial connects from the endpoint's namespace to addr.
func (e endpoint) dial(addr string) (net.Conn, error) {
	var c net.Conn
	err := e.in(func() error {
		var err error
		c, err = net.DialTimeout("tcp", addr, 5*time.Second)
		return err
	})
	return c, err
}

// pingPong measures request/response round trips over one TCP connection
// (TCP_NODELAY, 1-byte request, 1-byte answer, one outstanding: netperf's
// TCP_RR): warm untimed ones first, then n timed ones.
func pingPong(client, server endpoint, n, warm int) ([]time.Duration, error) {
	ln, err := server.listen()
	if err != nil {
		return nil, fmt.Errorf("echo server in %s: %w", server.Label, err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_, _ = io.Copy(c, c)
	}()
	c, err := client.dial(ln.Addr().String())
	if err != nil {
		return nil, fmt.Errorf("dial %s → %s: %w", client.Label, server.Label, err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Minute))
	rtts := make([]time.Duration, 0, n)
	b := []byte{'x'}
	for i := 0; i < warm+n; i++ {
		start := time.Now()
		if _, err := c.Write(b); err != nil {
			return nil, fmt.Errorf("round trip %s → %s: %w", client.Label, server.Label, err)
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return nil, fmt.Errorf("round trip %s → %s: %w", client.Label, server.Label, err)
		}
		if i >= warm {
			rtts = append(rtts, time.Since(start))
		}
	}
	return rtts, nil
}

// transfer sends size bytes of a pseudo-random stream from client to
// server over TCP and checks that the server received all of it, intact
// (a sum of what it read), within timeout: an MTU black hole stalls it.
func transfer(client, server endpoint, size int64, timeout time.Duration) (time.Duration, error) {
	ln, err := server.listen()
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	type got struct {
		n   int64
		sum [32]byte
		err error
	}
	res := make(chan got, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- got{err: err}
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		h := sha256.New()
		n, err := io.Copy(h, c)
		var g got
		g.n, g.err = n, err
		copy(g.sum[:], h.Sum(nil))
		_, _ = c.Write([]byte{1})
		res <- g
	}()
	start := time.Now()
	c, err := client.dial(ln.Addr().String())
	if err != nil {
		return 0, err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(timeout))
	h := sha256.New()
	block := make([]byte, 1<<16)
	var seed uint64 = 0x9e3779b97f4a7c15
	for sent := int64(0); sent < size; sent += int64(len(block)) {
		for i := 0; i < len(block); i += 8 {
			seed ^= seed << 13
			seed ^= seed >> 7
			seed ^= seed << 17
			binary.LittleEndian.PutUint64(block[i:], seed)
		}
		h.Write(block)
		if _, err := c.Write(block); err != nil {
			return 0, fmt.Errorf("send after %d bytes: %w", sent, err)
		}
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return 0, err
	}
	_, _ = io.ReadFull(c, make([]byte, 1))
	g := <-res
	took := time.Since(start)
	var want [32]byte
	copy(want[:], h.Sum(nil))
	switch {
	case g.err != nil:
		return took, fmt.Errorf("receiver: %w after %d of %d bytes", g.err, g.n, size)
	case g.n != size || g.sum != want:
		return took, fmt.Errorf("receiver got %d of %d bytes (checksum match %v)", g.n, size, g.sum == want)
	}
	return took, nil
}

// linkMTU is the MTU of the endpoint's eth0.
func (e endpoint) linkMTU(name string) (int, error) {
	var mtu int
	err := e.in(func() error {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return err
		}
		mtu = l.Attrs().MTU
		return nil
	})
	return mtu, err
}

// dfPing sends ICMP echo requests of exactly size bytes (IP header
// included) with Don't Fragment set from the endpoint to dst and waits
// for a reply (3 tries, 1 s each). A size above the path's first-hop MTU
// fails locally with EMSGSIZE.
func (e endpoint) dfPing(dst net.IP, size int) error {
	var c *net.IPConn
	err := e.in(func() error {
		pc, err := net.ListenPacket("ip4:icmp", "0.0.0.0")
		if err != nil {
			return err
		}
		c = pc.(*net.IPConn)
		return nil
	})
	if err != nil {
		return fmt.Errorf("icmp socket in %s: %w", e.Label, err)
	}
	defer c.Close()
	if err := link.DontFragment(c); err != nil {
		return err
	}
	id := os.Getpid() & 0xffff
	buf := make([]byte, 65536)
	for seq := 1; seq <= 3; seq++ {
		msg := icmp.Message{Type: ipv4.ICMPTypeEcho, Body: &icmp.Echo{ID: id, Seq: seq, Data: make([]byte, size-20-8)}}
		wire, err := msg.Marshal(nil)
		if err != nil {
			return err
		}
		if _, err := c.WriteTo(wire, &net.IPAddr{IP: dst}); err != nil {
			return fmt.Errorf("send %d-byte DF echo: %w", size, err)
		}
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		for {
			n, peer, err := c.ReadFrom(buf)
			if err != nil {
				break // timeout: try again
			}
			m, err := icmp.ParseMessage(1, buf[:n])
			if err != nil {
				continue
			}
			if echo, ok := m.Body.(*icmp.Echo); ok && m.Type == ipv4.ICMPTypeEchoReply && echo.ID == id && echo.Seq == seq &&
				peer.(*net.IPAddr).IP.Equal(dst) && len(echo.Data) == size-28 {
				return nil
			}
		}
	}
	return fmt.Errorf("no reply to a %d-byte DF echo in 3 tries", size)
}
