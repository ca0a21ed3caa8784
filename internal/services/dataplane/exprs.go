package dataplane

import (
	"encoding/binary"
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Registers. Concatenated keys are loaded into consecutive 32-bit
// registers, each field padded to 4 bytes, as nft does.
const (
	reg0 = unix.NFT_REG32_00 // the first field of a key
	regV = unix.NFT_REG_VERDICT
	// regEP receives an endpoint (address . port) from the endpoints map,
	// whose key is group . slot in regGroup and regSlot.
	regEP    = unix.NFT_REG32_05
	regGroup = unix.NFT_REG32_10
	regSlot  = unix.NFT_REG32_11
)

// Constants the x/sys package lacks.
const (
	ctStatusDNAT = 0x20 // IPS_DST_NAT
)

// MasqueradeMark is the packet mark bit that flags a connection's first
// packet for masquerading in postrouting: 0x1000, apart from
// kube-proxy's 0x4000 and the portmap plugin's default 0x2000 (bit 13);
// podnet's egress masquerade uses no mark. The bit is cleared again
// before the packet leaves.
const MasqueradeMark uint32 = 0x1000

// family is what differs between IPv4 and IPv6 in the rules.
type family struct {
	f        Family
	nfproto  byte
	addrType nftables.SetDatatype
	addrLen  uint32 // bytes
	saddrOff uint32 // in the network header
	daddrOff uint32
	suffix   string // of the per-family sets' names
	loopback netip.Prefix
}

var families = [2]family{
	{IPv4, unix.NFPROTO_IPV4, nftables.TypeIPAddr, 4, 12, 16, "4", netip.MustParsePrefix("127.0.0.0/8")},
	{IPv6, unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 16, 8, 24, "6", netip.MustParsePrefix("::1/128")},
}

// familyOf returns the rules' description of f (IPv4 or IPv6).
func familyOf(f Family) *family {
	if f == IPv6 {
		return &families[1]
	}
	return &families[0]
}

// words is the number of 32-bit registers an address takes.
func (fam *family) words() uint32 { return fam.addrLen / 4 }

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

// matchFamily is "meta nfproto ipv4|ipv6".
func (fam *family) matchFamily() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(1, []byte{fam.nfproto}),
	}
}

func (fam *family) saddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: fam.saddrOff, Len: fam.addrLen}
}

func (fam *family) daddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: fam.daddrOff, Len: fam.addrLen}
}

// protoPort loads "meta l4proto . th dport" into reg and the register
// after it.
func protoPort(reg uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// addrProtoPort loads "ip daddr . meta l4proto . th dport" from reg0.
func (fam *family) addrProtoPort() []expr.Any {
	return append([]expr.Any{fam.daddr(reg0)}, protoPort(reg0+fam.words())...)
}

// notLoopbackDst is "ip daddr != 127.0.0.0/8" ("ip6 daddr != ::1").
func (fam *family) notLoopbackDst() []expr.Any {
	p := fam.loopback
	mask := netipMask(p)
	return []expr.Any{
		fam.daddr(1),
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: fam.addrLen, Mask: mask, Xor: make([]byte, fam.addrLen)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: p.Addr().AsSlice()},
	}
}

// netipMask is p's netmask as bytes.
func netipMask(p netip.Prefix) []byte {
	b := make([]byte, p.Addr().BitLen()/8)
	for i := 0; i < p.Bits(); i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	return b
}

func lookup(set string, sreg uint32, invert bool) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: set, Invert: invert}
}

func lookupTo(set string, sreg, dreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, DestRegister: dreg, IsDestRegSet: true, SetName: set}
}

// fibLocal is "fib saddr type local" (or daddr).
func fibLocal(saddr bool) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: saddr, FlagDADDR: !saddr, ResultADDRTYPE: true},
		cmpEq(1, native32(unix.RTN_LOCAL)),
	}
}

// ctBits is "ct <key> & bits != 0".
func ctBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

func ctStateNew() []expr.Any { return ctBits(expr.CtKeySTATE, expr.CtStateBitNEW) }

// setMark is "meta mark set meta mark | MasqueradeMark".
func setMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^MasqueradeMark), Xor: native32(MasqueradeMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// takeMark is "meta mark & MasqueradeMark == MasqueradeMark meta mark set
// meta mark & ~MasqueradeMark".
func takeMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(MasqueradeMark), Xor: native32(0)},
		cmpEq(1, native32(MasqueradeMark)),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(^MasqueradeMark), Xor: native32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

func jump(kind expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

// dnat is "dnat to" the address . port in regEP.
func (fam *family) dnat() *expr.NAT {
	return &expr.NAT{
		Type: expr.NATTypeDestNAT, Family: uint32(fam.nfproto),
		RegAddrMin: regEP, RegProtoMin: regEP + fam.words(), Specified: true,
	}
}

// group returns the rules that pick an endpoint of group g (its number
// idx, n endpoints in slots 0..n-1 of its endpoints map) and DNAT to it.
// With affinity, the affinity set remembers group . slot . client for the
// timeout, refreshed by every new connection, as kube-proxy's
// per-endpoint sets do: one rule per slot looks the client up (a walk
// over the service's endpoints, as kube-proxy's, for new connections of
// services with affinity only). The set holds no map data: the nft tool
// cannot show a map lookup whose key comes from another map.
func (fam *family) group(idx uint32, n int, affinity time.Duration) [][]expr.Any {
	id := native32(idx)
	remember := func(op uint32) []expr.Any {
		return []expr.Any{
			fam.saddr(regSlot + 1),
			&expr.Dynset{SrcRegKey: regGroup, SetName: fam.set(setAffinity), Operation: op, Timeout: affinity},
		}
	}
	toEndpoint := []expr.Any{lookupTo(fam.endpointsMap(idx), regGroup, regEP), fam.dnat()}
	var rules [][]expr.Any
	if affinity > 0 {
		for slot := range n {
			rules = append(rules, concat(
				fam.matchFamily(),
				[]expr.Any{
					&expr.Immediate{Register: regGroup, Data: id},
					&expr.Immediate{Register: regSlot, Data: native32(uint32(slot))},
					fam.saddr(regSlot + 1),
					lookup(fam.set(setAffinity), regGroup, false),
				},
				remember(unix.NFT_DYNSET_OP_UPDATE),
				toEndpoint,
			))
		}
	}
	pick := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(1, []byte{fam.nfproto}),
		&expr.Immediate{Register: regGroup, Data: id},
		&expr.Numgen{Register: regSlot, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
	}
	if affinity > 0 {
		pick = append(pick, remember(unix.NFT_DYNSET_OP_ADD)...)
	}
	return append(rules, concat(pick, toEndpoint))
}

// pick is the rule of the pick chain of n endpoints: DNAT to the
// endpoint in slot "numgen random mod n" of the service the packet is
// addressed to ("ip daddr . meta l4proto . th dport . numgen random mod n"
// in @service-endpoints).
func (fam *family) pick(n int) []expr.Any {
	return concat(fam.matchFamily(), fam.addrProtoPort(), []expr.Any{
		&expr.Numgen{Register: reg0 + fam.words() + 2, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		lookupTo(fam.set(setServiceEndpoints), reg0, regEP),
		fam.dnat(),
	})
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
