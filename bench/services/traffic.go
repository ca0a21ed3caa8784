package main

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

// Modes of a connection to the endpoint server, its first byte.
const (
	modeSink = 's' // the client streams, the server discards
	modeEcho = 'r' // one byte each way per exchange
)

// serveEndpoint listens on targetPort in the endpoint namespace (all of
// svc-0's endpoint addresses) until the listener is closed.
func serveEndpoint(ns *netns.NS) (net.Listener, error) {
	var ln net.Listener
	err := ns.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", ":"+strconv.Itoa(targetPort))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("endpoint listener: %w", err)
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

// connectTimes times n TCP connects to addr from the client namespace,
// one after the other (each closed at once), on a thread inside it.
func connectTimes(ctx context.Context, client *netns.NS, addr netip.AddrPort, n int) ([]time.Duration, error) {
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

// stream sends to addr from the client namespace for d and returns the
// rate in Gbit/s.
func stream(ctx context.Context, client *netns.NS, addr netip.AddrPort, d time.Duration) (float64, error) {
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

// roundTrips times n one-byte exchanges over one connection to addr.
func roundTrips(ctx context.Context, client *netns.NS, addr netip.AddrPort, n int) ([]time.Duration, error) {
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
