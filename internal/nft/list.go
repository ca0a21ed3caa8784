package nft

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"syscall"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Rule is a rule as a dump shows it: where it is, its handle, its owner
// and, when asked for, its expressions as the kernel encodes them (see
// SameExprs and WalkExprs).
type Rule struct {
	Family nftables.TableFamily
	Table  string
	Chain  string
	Handle uint64
	Owner  Owner
	Exprs  []byte // NFTA_RULE_EXPRESSIONS, only when asked for
}

var (
	errDumpInterrupted = errors.New("nftables dump interrupted by concurrent commits")
	// errMissing is a dump of a table, chain or set that does not exist.
	errMissing = errors.New("no such nftables object")
)

// List dumps the rules of table t, or of its chain when chain is not
// empty, without their expressions; a missing table or chain has no rules.
func (c *Conn) List(t *nftables.Table, chain string) ([]Rule, error) {
	var rules []Rule
	err := c.read(func(tx *Tx) (err error) {
		rules, err = tx.Rules(t, chain, "")
		return err
	})
	return rules, err
}

// listRules dumps the rules of one table, or of one of its chains when
// chain is not empty. Expressions are kept only for the rules whose
// owner is exprsOf.
func (c *Conn) listRules(t *nftables.Table, chain string, exprsOf Owner) ([]Rule, error) {
	attrs := []netlink.Attribute{{Type: unix.NFTA_RULE_TABLE, Data: cstring(t.Name)}}
	if chain != "" {
		attrs = append(attrs, netlink.Attribute{Type: unix.NFTA_RULE_CHAIN, Data: cstring(chain)})
	}
	var rules []Rule
	err := c.dumpRetried(t.Family, unix.NFT_MSG_GETRULE, attrs, func() { rules = rules[:0] }, func(typ uint16, data []byte) error {
		if typ != unix.NFT_MSG_NEWRULE {
			return nil
		}
		r, err := decodeRule(data, exprsOf)
		if err == nil {
			rules = append(rules, r)
		}
		return err
	})
	if err != nil && !errors.Is(err, errMissing) {
		return nil, fmt.Errorf("list rules of %s %s: %w", FamilyName(t.Family), t.Name, err)
	}
	return rules, nil
}

// dumpRetried runs the dump request msg of family with attrs, calling
// each for every message of the answer (its nftables message type and its
// payload after the nfgenmsg header), and redoes it, after reset, when
// the kernel flags it as interrupted by a commit (it may have skipped
// objects). A missing table or object is errMissing.
func (c *Conn) dumpRetried(family nftables.TableFamily, msg uint16, attrs []netlink.Attribute, reset func(), each func(typ uint16, data []byte) error) error {
	data, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		return err
	}
	req := netlink.Message{
		Header: netlink.Header{
			Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | msg),
			Flags: netlink.Request | netlink.Dump,
		},
		Data: append(nfgenmsg(family), data...),
	}
	for attempt := 1; ; attempt++ {
		reset()
		err := c.dump(req, each)
		if err == nil {
			return nil
		}
		if errors.Is(err, errMissing) {
			return err
		}
		if !errors.Is(err, errDumpInterrupted) {
			c.dropNL()
			return err
		}
		if attempt == maxAttempts {
			return &retryError{what: "nftables dumps kept being interrupted by other writers", err: err}
		}
	}
}

// dumpBufSize is the receive size of dumps: the kernel sizes each part of
// a dump after the largest read the socket has seen (up to 32 KiB), so
// reading in pages, as netlink.Conn.Receive does, would take eight times
// the system calls and restarts of the kernel's walk of the chain.
const dumpBufSize = 64 << 10

func (c *Conn) dump(req netlink.Message, each func(typ uint16, data []byte) error) error {
	sent, err := c.nl.Send(req)
	if err != nil {
		return err
	}
	raw, err := c.nl.SyscallConn()
	if err != nil {
		return err
	}
	if c.buf == nil {
		c.buf = make([]byte, dumpBufSize)
	}
	interrupted := false
	for {
		var n int
		var rerr error
		if err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), c.buf, 0)
			return rerr != unix.EAGAIN && rerr != unix.EINTR
		}); err != nil {
			return err
		}
		if rerr != nil {
			return fmt.Errorf("netlink receive: %w", rerr)
		}
		msgs, err := syscall.ParseNetlinkMessage(c.buf[:n])
		if err != nil {
			return fmt.Errorf("netlink receive: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Seq != sent.Header.Sequence {
				continue // a late answer to an abandoned request
			}
			// The kernel flags the messages of a dump written after a
			// commit that happened since its earlier parts. Only flagged
			// objects mean an inconsistent listing: a flagged NLMSG_DONE
			// follows objects that all predate the commit.
			if m.Header.Flags&unix.NLM_F_DUMP_INTR != 0 && m.Header.Type != unix.NLMSG_DONE {
				interrupted = true
			}
			switch m.Header.Type {
			case unix.NLMSG_DONE:
				if interrupted {
					return errDumpInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				if len(m.Data) < 4 {
					return errors.New("netlink receive: short error message")
				}
				switch errno := syscall.Errno(-int32(binary.NativeEndian.Uint32(m.Data))); errno {
				case 0:
					return nil
				case unix.ENOENT:
					return errMissing
				default:
					return fmt.Errorf("netlink receive: %w", errno)
				}
			default:
				if m.Header.Type>>8 != unix.NFNL_SUBSYS_NFTABLES || len(m.Data) < 4 {
					continue
				}
				if err := each(m.Header.Type&0xff, m.Data); err != nil {
					return err
				}
			}
		}
	}
}

// decodeRule decodes the location, handle and owner of a rule message;
// its expressions are copied out, undecoded, for a rule whose owner is
// exprsOf.
func decodeRule(data []byte, exprsOf Owner) (Rule, error) {
	r := Rule{Family: nftables.TableFamily(data[0])}
	var exprs []byte
	err := walkAttrs(data[4:], func(typ uint16, v []byte) {
		switch typ {
		case unix.NFTA_RULE_TABLE:
			r.Table = cstringOf(v)
		case unix.NFTA_RULE_CHAIN:
			r.Chain = cstringOf(v)
		case unix.NFTA_RULE_HANDLE:
			if len(v) == 8 {
				r.Handle = binary.BigEndian.Uint64(v)
			}
		case unix.NFTA_RULE_USERDATA:
			r.Owner = ownerFrom(v)
		case unix.NFTA_RULE_EXPRESSIONS:
			exprs = v
		}
	})
	if err != nil {
		return Rule{}, err
	}
	if exprsOf != "" && r.Owner == exprsOf {
		r.Exprs = bytes.Clone(exprs)
	}
	if r.Handle == 0 {
		return Rule{}, errors.New("nftables rule message without handle")
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

// WalkExprs calls f with the name and the undecoded data of each
// expression of raw, a rule's expressions as a dump shows them (Rule.Exprs);
// decode the data with expr.Unmarshal.
func WalkExprs(raw []byte, f func(name string, data []byte)) {
	_ = walkAttrs(raw, func(typ uint16, v []byte) {
		if typ != unix.NFTA_LIST_ELEM {
			return
		}
		var name string
		var data []byte
		if walkAttrs(v, func(t uint16, b []byte) {
			switch t {
			case unix.NFTA_EXPR_NAME:
				name = cstringOf(b)
			case unix.NFTA_EXPR_DATA:
				data = b
			}
		}) != nil {
			name = ""
		}
		f(name, data)
	})
}

// SameExprs reports whether raw, a rule's expressions as the kernel dumps
// them, are want. Each kernel expression is decoded into a value of the
// type of the wanted expression at its position, once its name matched.
func SameExprs(family nftables.TableFamily, raw []byte, want []expr.Any) bool {
	type elem struct {
		name string
		data []byte
	}
	var have []elem
	WalkExprs(raw, func(name string, data []byte) { have = append(have, elem{name, data}) })
	if len(have) != len(want) {
		return false
	}
	fam := byte(family)
	for i, w := range want {
		b, err := expr.Marshal(fam, w)
		if err != nil {
			return false
		}
		name := ""
		_ = walkAttrs(b, func(t uint16, v []byte) {
			if t == unix.NFTA_EXPR_NAME {
				name = cstringOf(v)
			}
		})
		if name == "" || name != have[i].name {
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

// FamilyName is the nft keyword of a table family ("inet", "bridge", …).
func FamilyName(f nftables.TableFamily) string {
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

// Chains dumps the names of the chains of table t; none when t does not
// exist.
func (tx *Tx) Chains(t *nftables.Table) ([]string, error) {
	var names []string
	attrs := []netlink.Attribute{{Type: unix.NFTA_CHAIN_TABLE, Data: cstring(t.Name)}}
	err := tx.c.dumpRetried(t.Family, unix.NFT_MSG_GETCHAIN, attrs, func() { names = names[:0] }, func(typ uint16, data []byte) error {
		if typ != unix.NFT_MSG_NEWCHAIN {
			return nil
		}
		table := ""
		name := ""
		err := walkAttrs(data[4:], func(typ uint16, v []byte) {
			switch typ {
			case unix.NFTA_CHAIN_TABLE:
				table = cstringOf(v)
			case unix.NFTA_CHAIN_NAME:
				name = cstringOf(v)
			}
		})
		if table == t.Name { // the kernel filters dumps by table since 6.x only
			names = append(names, name)
		}
		return err
	})
	if err != nil && !errors.Is(err, errMissing) {
		return nil, fmt.Errorf("list chains of %s %s: %w", FamilyName(t.Family), t.Name, err)
	}
	return names, nil
}
