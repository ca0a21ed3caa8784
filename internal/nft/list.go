package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"syscall"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniplugin"
)

// ruleRef is what deleting a rule and recognizing its owner take: where the
// rule is, its handle and its comment; and, when asked for, its
// expressions as the kernel encodes them.
type ruleRef struct {
	family  nftables.TableFamily
	table   string
	chain   string
	handle  uint64
	comment string
	exprs   []byte // NFTA_RULE_EXPRESSIONS, only when list was asked for them
}

var errDumpInterrupted = errors.New("nftables dump interrupted by concurrent commits")

// listAll returns the rules of every podnet table: one dump per table.
func (c *Conn) listAll() ([]ruleRef, error) {
	var all []ruleRef
	for _, t := range tables {
		rules, err := c.list(t, "", "")
		if err != nil {
			return nil, err
		}
		all = append(all, rules...)
	}
	return all, nil
}

// list dumps the rules of one table, or of one of its chains when chain is
// not empty; a missing table or chain has no rules. Expressions are kept
// only for the rules whose comment is exprsOf. A dump the kernel flags as
// interrupted by a commit (it may have skipped rules) is redone.
func (c *Conn) list(t *nftables.Table, chain, exprsOf string) ([]ruleRef, error) {
	attrs := []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: cstring(t.Name)}}
	if chain != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_CHAIN, Data: cstring(chain)})
	}
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return nil, err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_GETRULE),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(nfgenmsg(t.Family), data...),
	}
	for attempt := 1; ; attempt++ {
		rules, err := c.dump(req, exprsOf)
		if err == nil {
			return rules, nil
		}
		if !errors.Is(err, errDumpInterrupted) {
			c.dropNL()
		}
		if !errors.Is(err, errDumpInterrupted) {
			return nil, fmt.Errorf("list rules of %s %s: %w", familyName(t.Family), t.Name, err)
		}
		if attempt == maxAttempts {
			return nil, cniplugin.Wrap(types.ErrTryAgainLater, "nftables dumps kept being interrupted by other writers",
				fmt.Errorf("list rules of %s %s: gave up after %d attempts: %w", familyName(t.Family), t.Name, maxAttempts, err))
		}
	}
}

// dumpBufSize is the receive size of dumps: the kernel sizes each part of
// a dump after the largest read the socket has seen (up to 32 KiB), so
// reading in pages, as netlink.Conn.Receive does, would take eight times
// the system calls and restarts of the kernel's walk of the chain.
const dumpBufSize = 64 << 10

func (c *Conn) dump(req netlink.Message, exprsOf string) ([]ruleRef, error) {
	sent, err := c.nl.Send(req)
	if err != nil {
		return nil, err
	}
	raw, err := c.nl.SyscallConn()
	if err != nil {
		return nil, err
	}
	if c.buf == nil {
		c.buf = make([]byte, dumpBufSize)
	}
	var (
		rules       []ruleRef
		interrupted bool
	)
	for {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			return rerr != unix.EAGAIN && rerr != unix.EINTR
		}); err != nil {
			return nil, err
		}
		if rerr != nil {
			return nil, fmt.Errorf("netlink receive: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return nil, fmt.Errorf("netlink receive: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != sent.Header.Sequence {
				continue // a late answer to an abandoned request
			}
			// The kernel flags the messages of a dump written after a
			// commit that happened since its earlier parts. Only flagged
			// rules mean an inconsistent listing: a flagged NLMSG_DONE
			// follows rules that all predate the commit.
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 && m.Header.Type != unix.NLMSG_DONE {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if interrupted {
					return nil, errDumpInterrupted
				}
				return rules, nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return nil, errors.New("netlink receive: short error message")
				}
				if errno := -int32(binary.NativeEndian.Uint32(m.Data)); errno != 0 {
					if syscall.Errno(errno) == unix.ENOENT {
						return nil, nil
					}
					return nil, fmt.Errorf("netlink receive: %w", syscall.Errno(errno))
				}
				return rules, nil
			case unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_NEWRULE:
				r, err := decodeRule(m.Data, exprsOf)
				if err != nil {
					return nil, err
				}
				rules = append(rules, r)
			}
		}
	}
}

// decodeRule decodes the location, handle and comment of a rule message;
// its expressions are copied out, undecoded, for a rule whose comment is
// exprsOf.
func decodeRule(data []byte, exprsOf string) (ruleRef, error) {
	if len(data) < 4 {
		return ruleRef{}, errors.New("short nftables rule message")
	}
	r := ruleRef{family: nftables.TableFamily(data[0])}
	var exprs []byte
	err := walkAttrs(data[4:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NFTA_RULE_TABLE:
			r.table = cstringOf(v)
		case unix.NFTA_RULE_CHAIN:
			r.chain = cstringOf(v)
		case unix.NFTA_RULE_HANDLE:
			if len(v) == 8 {
				r.handle = binary.BigEndian.Uint64(v)
			}
		case unix.NFTA_RULE_USERDATA:
			r.comment = commentFrom(v)
		case unix.NFTA_RULE_EXPRESSIONS:
			exprs = v
		}
	})
	if err != nil {
		return ruleRef{}, err
	}
	if exprsOf != "" && r.comment == exprsOf {
		r.exprs = bytes.Clone(exprs)
	}
	if r.handle == 0 {
		return ruleRef{}, errors.New("nftables rule message without handle")
	}
	return r, nil
}

// cstringOf returns a NUL-terminated attribute as a string.
func cstringOf(b []byte) string {
	if i := bytes.IndexByte(b, 0); i >= 0 {
		b = b[:i]
	}
	return string(b)
}

// walkAttrs calls f with the type (without flags) and value of each
// netlink attribute in b.
func walkAttrs(b []byte, f func(typ uint16, v []byte)) error {
	for len(b) >= unix.SizeofNlAttr {
		n := int(binary.NativeEndian.Uint16(b[0:2]))
		if n < unix.SizeofNlAttr || n > len(b) {
			return errors.New("malformed netlink attribute")
		}
		f(binary.NativeEndian.Uint16(b[2:4])&^(unix.NLA_F_NESTED|unix.NLA_F_NET_BYTEORDER), b[unix.SizeofNlAttr:n])
		a := (n + unix.NLA_ALIGNTO - 1) &^ (unix.NLA_ALIGNTO - 1)
		if a >= len(b) {
			break
		}
		b = b[a:]
	}
	return nil
}

// sameExprs reports whether raw, a rule's expressions as the kernel dumps
// them, are want. Each kernel expression is decoded into a value of the
// type of the wanted expression at its position, once its name matched.
func sameExprs(family nftables.TableFamily, raw []byte, want []expr.Any) bool {
	type elem struct {
		name string
		data []byte
	}
	parse := func(b []byte) (e elem, err error) {
		err = walkAttrs(b, func(typ uint16, v []byte) {
			switch typ {
			case unix.NFTA_EXPR_NAME:
				e.name = cstringOf(v)
			case unix.NFTA_EXPR_DATA:
				e.data = v
			}
		})
		return e, err
	}
	var have []elem
	err := walkAttrs(raw, func(typ uint16, v []byte) {
		if typ != unix.NFTA_LIST_ELEM {
			return
		}
		e, perr := parse(v)
		if perr != nil {
			e.name = ""
		}
		have = append(have, e)
	})
	if err != nil || len(have) != len(want) {
		return false
	}
	fam := byte(family)
	for i, w := range want {
		b, err := expr.Marshal(fam, w)
		if err != nil {
			return false
		}
		we, err := parse(b)
		if err != nil || we.name == "" || we.name != have[i].name {
			return false
		}
		got, ok := reflect.New(reflect.TypeOf(w).Elem()).Interface().(expr.Any)
		if !ok || expr.Unmarshal(fam, have[i].data, got) != nil || !reflect.DeepEqual(got, w) {
			return false
		}
	}
	return true
}

// nfgenmsg is the header of every nftables message.
func nfgenmsg(family nftables.TableFamily) []byte {
	return []byte{byte(family), unix.NFNETLINK_V0, 0, 0}
}

func cstring(s string) []byte { return append([]byte(s), 0) }

func familyName(f nftables.TableFamily) string {
	switch f {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	case nftables.TableFamilyIPv4:
		return "ip"
	case nftables.TableFamilyIPv6:
		return "ip6"
	case nftables.TableFamilyNetdev:
		return "netdev"
	case nftables.TableFamilyARP:
		return "arp"
	}
	return fmt.Sprintf("family-%d", f)
}
