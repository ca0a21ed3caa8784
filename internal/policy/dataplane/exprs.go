package dataplane

import (
	"encoding/binary"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft/exprs"
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

// addr loads the source (src) or destination address into reg.
func (fam *family) addr(src bool, reg uint32) expr.Any {
	off := fam.daddrOff
	if src {
		off = fam.saddrOff
	}
	return &expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: fam.addrLen}
}

// addrIn is "ip saddr @set" (daddr unless src).
func (fam *family) addrIn(src bool, set string) []expr.Any {
	return []expr.Any{fam.addr(src, reg0), exprs.Lookup(set, reg0, false)}
}

// addrVmap is "ip saddr vmap @set" (daddr unless src).
func (fam *family) addrVmap(src bool, set string) []expr.Any {
	return []expr.Any{fam.addr(src, reg0), exprs.LookupTo(set, reg0, unix.NFT_REG_VERDICT)}
}

// fromLoopback is "meta iiftype loopback": the node's own traffic to
// itself.
func fromLoopback() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFTYPE, Register: 1},
		exprs.CmpEq(1, binary.NativeEndian.AppendUint16(nil, unix.ARPHRD_LOOPBACK)),
	}
}

// neighbourDiscovery is "meta l4proto ipv6-icmp icmpv6 type
// nd-router-solicit-nd-redirect": IPv6 neighbour discovery (ICMPv6 types
// 133 to 137), which conntrack leaves untracked.
func neighbourDiscovery() []expr.Any {
	return exprs.Concat(exprs.NFProto(unix.NFPROTO_IPV6), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		exprs.CmpEq(1, []byte{unix.IPPROTO_ICMPV6}),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{133}, ToData: []byte{137}},
	})
}

// The verdicts of the fixed rules.
var (
	accept = []expr.Any{exprs.Verdict(expr.VerdictAccept, "")}
	drop   = []expr.Any{exprs.Verdict(expr.VerdictDrop, "")}
)
