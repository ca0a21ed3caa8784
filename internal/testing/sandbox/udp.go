package sandbox

import (
	"net"
	"time"

	"github.com/podnet/podnet/internal/netns"
)

// ListenUDP opens a UDP socket inside a namespace; it stays there.
func ListenUDP(ns *netns.NS, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := ns.Do(func() error {
		var err error
		c, err = net.ListenPacket("udp", addr)
		return err
	})
	return c, err
}

// EchoUDP sends every datagram back to its sender until c closes.
func EchoUDP(c net.PacketConn) {
	buf := make([]byte, 1500)
	for {
		n, from, err := c.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = c.WriteTo(buf[:n], from)
	}
}

// RoundTripUDP sends msg from ns to addr and returns the first answer
// (which, on a connected socket, must come from addr).
func RoundTripUDP(ns *netns.NS, addr, msg string) (string, error) {
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		return "", err
	}
	buf := make([]byte, len(msg)+1)
	n, err := c.Read(buf)
	return string(buf[:n]), err
}
