// Package benchnet is the TCP traffic the benchmarks time between
// network namespaces: a server that sinks, echoes or just accepts, and
// clients for connect latency, throughput and request/response, each run
// on a thread inside the client's namespace.
package benchnet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"time"

	"github.com/podnet/podnet/internal/netns"
)

// Modes of a connection to Serve's server, its first byte.
const (
	modeSink = 's' // the client streams, the server discards
	modeEcho = 'r' // one byte each way per exchange
)

// Serve listens on port on every IPv4 address of the namespace ns until
// the listener is closed: a connection's first byte chooses what it gets
// (Stream's sink, RoundTrips' echo); one closed without a byte is just
// accepted (ConnectTimes).
func Serve(ns *netns.NS, port int) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", ":"+strconv.Itoa(port))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listener on port %d: %w", port, err)
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln, nil
}

func handle(c net.Conn) {
	defer c.Close()
	var b [1]byte
	if _, err := io.ReadFull(c, b[:]); err != nil {
		return
	}
	switch b[0] {
	case modeSink:
		_, _ = io.Copy(io.Discard, c)
	case modeEcho:
		for {
			if _, err := io.ReadFull(c, b[:]); err != nil {
				return
			}
			if _, err := c.Write(b[:]); err != nil {
				return
			}
		}
	}
}

// ConnectTimes times n TCP connects to addr from the client namespace,
// one after the other (each closed at once), on a thread inside it.
func ConnectTimes(ctx context.Context, client *netns.NS, addr netip.AddrPort, n int) ([]time.Duration, error) {
	var out []time.Duration
	d := &net.Dialer{Timeout: 3 * time.Second}
	err := client.Do(func() error {
		for range n {
			start := time.Now()
			c, err := d.DialContext(ctx, "tcp4", addr.String())
			took := time.Since(start)
			if err != nil {
				return fmt.Errorf("connect %s: %w", addr, err)
			}
			out = append(out, took)
			c.Close()
		}
		return nil
	})
	return out, err
}

// Stream sends to addr from the client namespace for d and returns the
// rate in Gbit/s.
func Stream(ctx context.Context, client *netns.NS, addr netip.AddrPort, d time.Duration) (float64, error) {
	c, err := client.DialContext(ctx, &net.Dialer{Timeout: 3 * time.Second}, "tcp4", addr.String())
	if err != nil {
		return 0, fmt.Errorf("connect %s: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{modeSink}); err != nil {
		return 0, err
	}
	buf := make([]byte, 128<<10)
	var sent int64
	start := time.Now()
	for time.Since(start) < d {
		n, err := c.Write(buf)
		sent += int64(n)
		if err != nil {
			return 0, fmt.Errorf("stream to %s: %w", addr, err)
		}
	}
	return float64(sent) * 8 / time.Since(start).Seconds() / 1e9, nil
}

// RoundTrips times n one-byte exchanges over one connection to addr.
func RoundTrips(ctx context.Context, client *netns.NS, addr netip.AddrPort, n int) ([]time.Duration, error) {
	c, err := client.DialContext(ctx, &net.Dialer{Timeout: 3 * time.Second}, "tcp4", addr.String())
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte{modeEcho}); err != nil {
		return nil, err
	}
	out := make([]time.Duration, 0, n)
	var b [1]byte
	for range n {
		start := time.Now()
		if _, err := c.Write(b[:]); err != nil {
			return nil, err
		}
		if _, err := io.ReadFull(c, b[:]); err != nil {
			return nil, errors.Join(fmt.Errorf("echo from %s", addr), err)
		}
		out = append(out, time.Since(start))
	}
	return out, nil
}
