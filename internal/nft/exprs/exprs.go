// Package exprs builds the nftables expressions that podnet's own tables
// (the service proxy's, the policy data plane's) share: comparisons,
// set and map lookups, conntrack and fib matches, laid out in registers
// as nft lays them out, so that `nft list ruleset` shows them as rules
// written by hand.
package exprs

import (
	"encoding/binary"

	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Native32 is v in the host's byte order, as meta, ct and fib values are.
func Native32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

// CmpEq is "register reg == data".
func CmpEq(reg uint32, data []byte) *expr.Cmp {
	return &expr.Cmp{Op: expr.CmpOpEq, Register: reg, Data: data}
}

// NFProto is "meta nfproto ipv4" (unix.NFPROTO_IPV4) or "ipv6": what an
// inet table's rule matching addresses needs first.
func NFProto(nfproto byte) []expr.Any {
	return []expr.Any{&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1}, CmpEq(1, []byte{nfproto})}
}

// ProtoPort loads "meta l4proto . th dport" into reg and the register
// after it (32-bit registers: each field padded to 4 bytes, as in a
// concatenated set key).
func ProtoPort(reg uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: reg + 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
	}
}

// Lookup is "key in set" (not in it, when invert), the key loaded from
// sreg on.
func Lookup(set string, sreg uint32, invert bool) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, SetName: set, Invert: invert}
}

// LookupTo looks the key from sreg on up in the map set, its value into
// dreg (unix.NFT_REG_VERDICT for a verdict map: "vmap @set").
func LookupTo(set string, sreg, dreg uint32) *expr.Lookup {
	return &expr.Lookup{SourceRegister: sreg, DestRegister: dreg, IsDestRegSet: true, SetName: set}
}

// FibLocal is "fib saddr type local" (daddr unless saddr): an address of
// the node itself.
func FibLocal(saddr bool) []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: 1, FlagSADDR: saddr, FlagDADDR: !saddr, ResultADDRTYPE: true},
		CmpEq(1, Native32(unix.RTN_LOCAL)),
	}
}

// CtBits is "ct <key> & bits != 0", e.g. ct state established,related.
func CtBits(key expr.CtKey, bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: 1, Key: key},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: Native32(bits), Xor: Native32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: Native32(0)},
	}
}

// Verdict is a verdict; chain is the target of a jump or goto.
func Verdict(kind expr.VerdictKind, chain string) *expr.Verdict {
	return &expr.Verdict{Kind: kind, Chain: chain}
}

// Concat joins expression lists into one rule.
func Concat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}
