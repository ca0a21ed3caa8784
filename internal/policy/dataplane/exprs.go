package dataplane

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// reg0 is the first 32-bit register: concatenated keys are loaded into
// consecutive registers, each field padded to 4 bytes, as nft does.
const reg0 = unix.NFT_REG32_00

// family is what differs between IPv4 and IPv6 in the rules.
type family struct {
	suffix   string // of the per-family sets' names
	nfproto  byte
	addrType nftables.SetDatatype
	addrLen  uint32 // bytes
	saddrOff uint32 // in the network header
	daddrOff uint32
}

var families = [2]family{
	{"4", unix.NFPROTO_IPV4, nftables.TypeIPAddr, 4, 12, 16},
	{"6", unix.NFPROTO_IPV6, nftables.TypeIP6Addr, 16, 8, 24},
}

// words is the number of 32-bit registers an address takes.
func (fam *family) words() uint32 { return fam.addrLen / 4 }

func native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func cmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

// matchFamily is "meta nfproto ipv4|ipv6".
func (fam *family) matchFamily() []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, cmpEq(1, []byte{fam.nfproto})}
}

// addr loads the source (src) or destination address into reg.
func (fam *family) addr(src bool, reg uint32) expr.Any {
	off := fam.daddrOff
	if src {
		off = fam.saddrOff
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: fam.addrLen}
}

// protoPort loads "meta l4proto . th dport" into reg and the register
// after it.
func protoPort(reg uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

func lookup(set string, sreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: set}
}

func lookupTo(set string, sreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, DestRegister: unix.NFT_REG_VERDICT, IsDestRegSet: true, SetName: set}
}

// ctEstablished is "ct state established,related".
func ctEstablished() []expr.Any {
	bits := uint32(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED)
	return []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: native32(bits), Xor: native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: native32(0)},
	}
}

// fromLoopback is "meta iiftype loopback": the node's own traffic to
// itself.
func fromLoopback() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
		cmpEq(1, binary.NativeEndian.AppendUint16(nil, unix.ARPHRD_LOOPBACK)),
	}
}

// neighbourDiscovery is "meta l4proto ipv6-icmp icmpv6 type
// nd-router-solicit-nd-redirect": IPv6 neighbour discovery (ICMPv6 types
// 133 to 137), which conntrack leaves untracked.
func neighbourDiscovery() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(1, []byte{unix.NFPROTO_IPV6}),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq(1, []byte{unix.IPPROTO_ICMPV6}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{137}},
	}
}

// toLocal is "fib daddr type local": a packet to one of the node's own
// addresses.
func toLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		cmpEq(1, native32(unix.RTN_LOCAL)),
	}
}

func verdict(kind expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

func concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
