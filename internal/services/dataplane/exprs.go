package dataplane

import (
	"net/netip"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft/exprs"
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

// matchFamily is "meta nfproto ipv4|ipv6".
func (fam *family) matchFamily() []expr.Any { return exprs.NFProto(fam.nfproto) }

func (fam *family) saddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: fam.saddrOff, Len: fam.addrLen}
}

func (fam *family) daddr(reg uint32) expr.Any {
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: fam.daddrOff, Len: fam.addrLen}
}

// addrProtoPort loads "ip daddr . meta l4proto . th dport" from reg0.
func (fam *family) addrProtoPort() []expr.Any {
	return append([]expr.Any{fam.daddr(reg0)}, exprs.ProtoPort(reg0+fam.words())...)
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

func ctStateNew() []expr.Any { return exprs.CtBits(expr.CtKeySTATE, expr.CtStateBitNEW) }

// setMark is "meta mark set meta mark | MasqueradeMark".
func setMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: exprs.Native32(^MasqueradeMark), Xor: exprs.Native32(MasqueradeMark)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
}

// takeMark is "meta mark & MasqueradeMark == MasqueradeMark meta mark set
// meta mark & ~MasqueradeMark".
func takeMark() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: exprs.Native32(MasqueradeMark), Xor: exprs.Native32(0)},
		exprs.CmpEq(1, exprs.Native32(MasqueradeMark)),
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: exprs.Native32(^MasqueradeMark), Xor: exprs.Native32(0)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}
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
	id := exprs.Native32(idx)
	remember := func(op uint32) []expr.Any {
		return []expr.Any{
			fam.saddr(regSlot + 1),
			&expr.Dynset{SrcRegKey: regGroup, SetName: fam.set(setAffinity), Operation: op, Timeout: affinity},
		}
	}
	toEndpoint := []expr.Any{exprs.LookupTo(fam.endpointsMap(idx), regGroup, regEP), fam.dnat()}
	var rules [][]expr.Any
	if affinity > 0 {
		for slot := range n {
			rules = append(rules, exprs.Concat(
				fam.matchFamily(),
				[]expr.Any{
					&expr.Immediate{Register: regGroup, Data: id},
					&expr.Immediate{Register: regSlot, Data: exprs.Native32(uint32(slot))},
					fam.saddr(regSlot + 1),
					exprs.Lookup(fam.set(setAffinity), regGroup, false),
				},
				remember(unix.NFT_DYNSET_OP_UPDATE),
				toEndpoint,
			))
		}
	}
	pick := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		exprs.CmpEq(1, []byte{fam.nfproto}),
		&expr.Immediate{Register: regGroup, Data: id},
		&expr.Numgen{Register: regSlot, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
	}
	if affinity > 0 {
		pick = append(pick, remember(unix.NFT_DYNSET_OP_ADD)...)
	}
	return append(rules, exprs.Concat(pick, toEndpoint))
}

// pick is the rule of the pick chain of n endpoints: DNAT to the
// endpoint in slot "numgen random mod n" of the service the packet is
// addressed to ("ip daddr . meta l4proto . th dport . numgen random mod n"
// in @service-endpoints).
func (fam *family) pick(n int) []expr.Any {
	return exprs.Concat(fam.matchFamily(), fam.addrProtoPort(), []expr.Any{
		&expr.Numgen{Register: reg0 + fam.words() + 2, Modulus: uint32(n), Type: unix.NFT_NG_RANDOM},
		exprs.LookupTo(fam.set(setServiceEndpoints), reg0, regEP),
		fam.dnat(),
	})
}
