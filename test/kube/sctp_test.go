package kube

import (
	"errors"
	"fmt"
	"net"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// SCTP through one-to-one style sockets, made with system calls: the
// standard library has no SCTP. Used only where the kernel has SCTP
// (haveSCTP).

// sctpSocket makes a one-to-one SCTP socket inside ns whose blocking
// calls give up after askTimeout.
func sctpSocket(ns *netns.NS) (int, error) {
	var fd int
	err := ns.Do(func() error {
		var err error
		fd, err = unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, unix.IPPROTO_SCTP)
		return err
	})
	if err != nil {
		return -1, fmt.Errorf("SCTP socket: %w", err)
	}
	tv := unix.NsecToTimeval(askTimeout.Nanoseconds())
	for _, opt := range []int{unix.SO_RCVTIMEO, unix.SO_SNDTIMEO} {
		if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, opt, &tv); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("SCTP socket timeout: %w", err)
		}
	}
	return fd, nil
}

// serveSCTP answers every SCTP association to backendPort inside ns with
// name and the source address seen, until the test ends.
func serveSCTP(t *testing.T, ns *netns.NS, name string) {
	t.Helper()
	fd, err := sctpSocket(ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: backendPort}); err != nil {
		unix.Close(fd)
		t.Fatalf("SCTP bind in %s: %v", name, err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		unix.Close(fd)
		t.Fatalf("SCTP listen in %s: %v", name, err)
	}
	var stop atomic.Bool
	done := make(chan struct{})
	t.Cleanup(func() {
		stop.Store(true)
		<-done // accept returns within askTimeout
		unix.Close(fd)
	})
	go func() {
		defer close(done)
		for !stop.Load() {
			conn, sa, err := unix.Accept(fd)
			if err != nil {
				continue // timed out (EAGAIN) or interrupted
			}
			src := "?"
			if in, ok := sa.(*unix.SockaddrInet4); ok {
				src = net.IP(in.Addr[:]).String()
			}
			_, _ = unix.Write(conn, []byte(name+" "+src+"\n"))
			unix.Close(conn)
		}
	}()
}

// askSCTP associates from ns with addr (IPv4 host:port) and reads the
// backend's reply.
func askSCTP(ns *netns.NS, addr string) (reply, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return reply{}, err
	}
	ip := net.ParseIP(host).To4()
	p, err := strconv.Atoi(port)
	if ip == nil || err != nil {
		return reply{}, fmt.Errorf("SCTP address %q: want IPv4 host:port", addr)
	}
	fd, err := sctpSocket(ns)
	if err != nil {
		return reply{}, err
	}
	defer unix.Close(fd)
	sa := &unix.SockaddrInet4{Port: p}
	copy(sa.Addr[:], ip)
	if err := unix.Connect(fd, sa); err != nil {
		if errors.Is(err, unix.EINPROGRESS) || errors.Is(err, unix.EAGAIN) {
			err = fmt.Errorf("no association within %s: %w", askTimeout, err)
		}
		return reply{}, fmt.Errorf("SCTP to %s: %w", addr, err)
	}
	buf := make([]byte, 256)
	deadline := time.Now().Add(askTimeout)
	for time.Now().Before(deadline) {
		n, err := unix.Read(fd, buf)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return reply{}, fmt.Errorf("SCTP reply from %s: %w", addr, err)
		}
		return parseReply(string(buf[:n]))
	}
	return reply{}, fmt.Errorf("SCTP reply from %s: none within %s", addr, askTimeout)
}
