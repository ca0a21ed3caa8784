package nfttest

import (
	"encoding/binary"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Render writes a rule's expressions in nft's syntax, for the subset
// podnet builds (meta, payload of addresses, ports and MACs, bitwise
// prefixes and marks, cmp, lookup, ct state, fib, nat, masquerade,
// verdicts), so that tests can compare built rules with the text nft
// would show, without root and without nft: "meta nfproto ipv4 ip saddr
// 10.1.0.5 ip daddr != 10.1.0.0/24 masquerade". What it does not know it
// writes as "?name".
func Render(exprs []expr.Any) string {
	r := renderer{regs: map[uint32][]byte{}}
	for _, e := range exprs {
		r.expr(e)
	}
	return strings.Join(r.out, " ")
}

type renderer struct {
	out    []string
	loaded string // what register 1 holds: "ip saddr", "meta mark", …
	size   int    // the loaded field's full size, for prefixes
	prefix int    // -1, or the prefix length a bitwise applied
	mask   []byte // a non-prefix bitwise mask applied
	v6     bool   // the last nfproto compared was ipv6
	regs   map[uint32][]byte
}

func (r *renderer) load(what string, size int) {
	r.loaded, r.size, r.prefix, r.mask = what, size, -1, nil
}

func (r *renderer) expr(e expr.Any) {
	switch e := e.(type) {
	case *expr.Meta:
		name := map[expr.MetaKey]string{
			expr.MetaKeyNFPROTO: "meta nfproto", expr.MetaKeyL4PROTO: "meta l4proto",
			expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname",
			expr.MetaKeyMARK: "meta mark", expr.MetaKeyPROTOCOL: "meta protocol",
		}[e.Key]
		if name == "" {
			name = fmt.Sprintf("meta ?%d", e.Key)
		}
		if e.SourceRegister {
			r.out = append(r.out, name+" set "+r.loaded)
			return
		}
		r.load(name, 0)
	case *expr.Payload:
		r.payload(e)
	case *expr.Ct:
		r.load("ct ?", 4)
		if e.Key == expr.CtKeySTATE {
			r.load("ct state", 4)
		}
	case *expr.Fib:
		what := "saddr"
		if e.FlagDADDR {
			what = "daddr"
		}
		r.load("fib "+what+" type", 4)
	case *expr.Bitwise:
		r.bitwise(e)
	case *expr.Cmp:
		if r.loaded == "ct state" && r.mask != nil && e.Op == expr.CmpOpNeq && binary.NativeEndian.Uint32(e.Data) == 0 {
			r.out = append(r.out, "ct state "+ctStates(binary.NativeEndian.Uint32(r.mask)))
			return
		}
		op := ""
		if e.Op == expr.CmpOpNeq {
			op = "!= "
		}
		r.out = append(r.out, r.loaded+" "+op+r.value(e.Data))
	case *expr.Lookup:
		op := ""
		switch {
		case e.Invert:
			op = "!= "
		case e.IsDestRegSet && e.DestRegister == 0: // a verdict map
			op = "vmap "
		}
		r.out = append(r.out, r.loaded+" "+op+"@"+e.SetName)
	case *expr.Immediate:
		r.regs[e.Register] = e.Data
	case *expr.NAT:
		r.nat(e)
	case *expr.Masq:
		r.out = append(r.out, "masquerade")
	case *expr.Counter:
		r.out = append(r.out, "counter")
	case *expr.Verdict:
		r.out = append(r.out, map[expr.VerdictKind]string{
			expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return",
			expr.VerdictJump: "jump " + e.Chain, expr.VerdictGoto: "goto " + e.Chain,
		}[e.Kind])
	default:
		r.out = append(r.out, fmt.Sprintf("?%T", e))
	}
}

func (r *renderer) payload(e *expr.Payload) {
	ip := "ip"
	if r.v6 {
		ip = "ip6"
	}
	switch {
	case e.Base == expr.PayloadBaseLLHeader && e.Offset == 6 && e.Len == 6:
		r.load("ether saddr", 6)
	case e.Base == expr.PayloadBaseTransportHeader && e.Offset == 2 && e.Len == 2:
		r.load("th dport", 2)
	case e.Base == expr.PayloadBaseNetworkHeader && !r.v6 && (e.Offset == 12 || e.Offset == 16):
		r.load(ip+map[uint32]string{12: " saddr", 16: " daddr"}[e.Offset], 4)
	case e.Base == expr.PayloadBaseNetworkHeader && r.v6 && (e.Offset == 8 || e.Offset == 24):
		r.load(ip+map[uint32]string{8: " saddr", 24: " daddr"}[e.Offset], 16)
	default:
		r.load(fmt.Sprintf("payload?%d,%d,%d", e.Base, e.Offset, e.Len), int(e.Len))
		return
	}
	if int(e.Len) < r.size { // a whole-byte prefix: only its bytes are loaded
		r.prefix = int(e.Len) * 8
	}
}

func (r *renderer) bitwise(e *expr.Bitwise) {
	zero := true
	for _, b := range e.Xor {
		zero = zero && b == 0
	}
	if r.loaded == "meta mark" && !zero {
		r.loaded = fmt.Sprintf("meta mark | 0x%08x", binary.NativeEndian.Uint32(e.Xor))
		return
	}
	if ones, bits := net.IPMask(e.Mask).Size(); bits > 0 && zero && (r.size == 4 || r.size == 16) {
		r.prefix = ones
		return
	}
	r.mask = e.Mask
}

func (r *renderer) value(d []byte) string {
	switch {
	case r.loaded == "meta nfproto" && len(d) == 1:
		r.v6 = d[0] == unix.NFPROTO_IPV6
		return map[byte]string{unix.NFPROTO_IPV4: "ipv4", unix.NFPROTO_IPV6: "ipv6"}[d[0]]
	case r.loaded == "meta l4proto" && len(d) == 1:
		return map[byte]string{unix.IPPROTO_TCP: "tcp", unix.IPPROTO_UDP: "udp", unix.IPPROTO_SCTP: "sctp"}[d[0]]
	case r.loaded == "meta protocol" && len(d) == 2:
		return map[uint16]string{unix.ETH_P_IP: "ip", unix.ETH_P_IPV6: "ip6"}[binary.BigEndian.Uint16(d)]
	case r.loaded == "iifname" || r.loaded == "oifname":
		return fmt.Sprintf("%q", strings.TrimRight(string(d), "\x00"))
	case r.loaded == "ether saddr":
		return net.HardwareAddr(d).String()
	case r.loaded == "th dport" && len(d) == 2:
		return fmt.Sprint(binary.BigEndian.Uint16(d))
	case strings.HasPrefix(r.loaded, "fib") && len(d) == 4:
		if binary.NativeEndian.Uint32(d) == unix.RTN_LOCAL {
			return "local"
		}
		return fmt.Sprint(binary.NativeEndian.Uint32(d))
	case strings.HasPrefix(r.loaded, "meta mark") && len(d) == 4:
		s := fmt.Sprintf("0x%08x", binary.NativeEndian.Uint32(d))
		if r.mask != nil {
			s = fmt.Sprintf("& 0x%08x == %s", binary.NativeEndian.Uint32(r.mask), s)
		}
		return s
	case r.size == 4 || r.size == 16:
		addr := make(net.IP, r.size)
		copy(addr, d)
		if r.prefix >= 0 && r.prefix < r.size*8 {
			return fmt.Sprintf("%s/%d", addr, r.prefix)
		}
		return addr.String()
	}
	return fmt.Sprintf("%x", d)
}

func (r *renderer) nat(e *expr.NAT) {
	kind := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
	fam := "ip"
	addr := net.IP(r.regs[e.RegAddrMin]).String()
	if e.Family == unix.NFPROTO_IPV6 {
		fam, addr = "ip6", "["+addr+"]"
	}
	to := addr
	if p := r.regs[e.RegProtoMin]; e.RegProtoMin != 0 && len(p) == 2 {
		to += fmt.Sprintf(":%d", binary.BigEndian.Uint16(p))
	}
	r.out = append(r.out, kind+" "+fam+" to "+to)
}

// ctStates names the conntrack state bits, as nft lists them.
func ctStates(bits uint32) string {
	var names []string
	for _, s := range []struct {
		bit  uint32
		name string
	}{
		{expr.CtStateBitINVALID, "invalid"}, {expr.CtStateBitESTABLISHED, "established"},
		{expr.CtStateBitRELATED, "related"}, {expr.CtStateBitNEW, "new"},
	} {
		if bits&s.bit != 0 {
			names = append(names, s.name)
		}
	}
	return strings.Join(names, ",")
}

// Encode returns expressions as a dump shows them (nft.Rule.Exprs), for
// tests of what reads rules back without a kernel.
func Encode(t testing.TB, family byte, exprs []expr.Any) []byte {
	t.Helper()
	var attrs []netlink.Attribute
	for _, e := range exprs {
		b, err := expr.Marshal(family, e)
		if err != nil {
			t.Fatal(err)
		}
		attrs = append(attrs, netlink.Attribute{Type: unix.NLA_F_NESTED | unix.NFTA_LIST_ELEM, Data: b})
	}
	raw, err := netlink.MarshalAttributes(attrs)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}
