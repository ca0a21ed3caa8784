// Package nflogtest subscribes a test to an nflog group of a network
// namespace and decodes the packets the kernel logs to it (the nftables
// "log group N" statement), speaking nfnetlink_log through
// github.com/mdlayher/netlink: the prefix each was logged with, and its
// IP addresses and protocol.
package nflogtest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nfnetlink_log's message types, configuration attributes and
// commands, and packet attributes (linux/netfilter/nfnetlink_log.h;
// golang.org/x/sys/unix has only the subsystem).
const (
	msgPacket = 0
	msgConfig = 1

	cfgCmd        = 1
	cfgMode       = 2
	cfgQThreshold = 5

	cmdBind    = 1
	copyPacket = 2

	attrPayload = 9
	attrPrefix  = 10
)

// Message is one logged packet.
type Message struct {
	// Prefix is the prefix the rule logged the packet with.
	Prefix string
	// Src and Dst are the packet's IP addresses, Protocol its
	// transport protocol (unix.IPPROTO_*): zero when the payload is no
	// IP packet.
	Src, Dst netip.Addr
	Protocol uint8
}

func (m Message) String() string {
	return fmt.Sprintf("%q %v → %v proto %d", m.Prefix, m.Src, m.Dst, m.Protocol)
}

// Listener receives the packets logged to one group.
type Listener struct {
	conn    *netlink.Conn
	pending []Message
}

// Listen binds group in the network namespace netNSFd (0: the
// caller's; nflog groups are per namespace) and asks for each packet's
// headers, delivered as soon as it is logged. A group has one listener
// at a time: binding one already bound fails.
func Listen(netNSFd int, group uint16) (*Listener, error) {
	conn, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: netNSFd})
	if err != nil {
		return nil, fmt.Errorf("nflog socket: %w", err)
	}
	mode := make([]byte, 6) // struct nfulnl_msg_config_mode: copy_range, copy_mode, pad
	binary.BigEndian.PutUint32(mode, 128)
	mode[4] = copyPacket
	qthresh := binary.BigEndian.AppendUint32(nil, 1)
	for _, attr := range []netlink.Attribute{
		{Type: cfgCmd, Data: []byte{cmdBind}},
		{Type: cfgMode, Data: mode},
		{Type: cfgQThreshold, Data: qthresh},
	} {
		if err := configure(conn, group, attr); err != nil {
			conn.Close()
			return nil, fmt.Errorf("nflog group %d: %w", group, err)
		}
	}
	return &Listener{conn: conn}, nil
}

// configure sends one configuration attribute for group and waits for
// its acknowledgement.
func configure(conn *netlink.Conn, group uint16, attr netlink.Attribute) error {
	attrs, err := netlink.MarshalAttributes([]netlink.Attribute{attr})
	if err != nil {
		return err
	}
	hdr := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, 0} // struct nfgenmsg
	binary.BigEndian.PutUint16(hdr[2:], group)
	_, err = conn.Execute(netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8 | msgConfig),
			Flags: netlink.Request | netlink.Acknowledge,
		},
		Data: append(hdr, attrs...),
	})
	if err != nil {
		return fmt.Errorf("configure attribute %d: %w", attr.Type, err)
	}
	return nil
}

// Next returns the next logged packet, waiting for it until timeout.
func (l *Listener) Next(timeout time.Duration) (Message, error) {
	if err := l.conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
		return Message{}, err
	}
	for len(l.pending) == 0 {
		msgs, err := l.conn.Receive()
		if err != nil {
			return Message{}, fmt.Errorf("receive nflog messages: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(unix.NFNL_SUBSYS_ULOG<<8|msgPacket) {
				continue
			}
			msg, err := decode(m.Data)
			if err != nil {
				return Message{}, err
			}
			l.pending = append(l.pending, msg)
		}
	}
	msg := l.pending[0]
	l.pending = l.pending[1:]
	return msg, nil
}

// decode decodes a packet message: struct nfgenmsg, then attributes.
func decode(b []byte) (Message, error) {
	if len(b) < 4 {
		return Message{}, errors.New("nflog message shorter than its header")
	}
	ad, err := netlink.NewAttributeDecoder(b[4:])
	if err != nil {
		return Message{}, fmt.Errorf("nflog message: %w", err)
	}
	var m Message
	for ad.Next() {
		switch ad.Type() {
		case attrPrefix:
			m.Prefix = ad.String()
		case attrPayload:
			m.Src, m.Dst, m.Protocol = ipHeader(ad.Bytes())
		}
	}
	if err := ad.Err(); err != nil {
		return Message{}, fmt.Errorf("nflog message: %w", err)
	}
	return m, nil
}

// ipHeader returns the addresses and protocol of an IPv4 or IPv6
// packet; zeros for anything else.
func ipHeader(p []byte) (src, dst netip.Addr, proto uint8) {
	switch {
	case len(p) >= 20 && p[0]>>4 == 4:
		return netip.AddrFrom4([4]byte(p[12:16])), netip.AddrFrom4([4]byte(p[16:20])), p[9]
	case len(p) >= 40 && p[0]>>4 == 6:
		return netip.AddrFrom16([16]byte(p[8:24])), netip.AddrFrom16([16]byte(p[24:40])), p[6]
	}
	return netip.Addr{}, netip.Addr{}, 0
}

// Close unbinds the group.
func (l *Listener) Close() error {
	return l.conn.Close()
}
