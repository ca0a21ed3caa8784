package podrules

import (
	"encoding/binary"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
)

// Chains of the portmap plugin, in the inet podnet table.
const (
	// PortMapDNATChain is the nat prerouting chain (priority dstnat) that
	// forwards host ports arriving from outside the host to pods.
	PortMapDNATChain = "portmap-prerouting"
	// PortMapOutputChain is the nat output chain (priority dstnat) that
	// forwards host ports the host itself connects to.
	PortMapOutputChain = "portmap-output"
	// PortMapMasqChain is the nat postrouting chain (priority srcnat) that
	// masquerades the hairpin and localhost connections marked for it.
	PortMapMasqChain = "portmap-masquerade"
)

var (
	portMapDNATChain = &nftables.Chain{
		Name: PortMapDNATChain, Table: inetTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &acceptPolicy,
	}
	portMapOutputChain = &nftables.Chain{
		Name: PortMapOutputChain, Table: inetTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &acceptPolicy,
	}
	portMapMasqChain = &nftables.Chain{
		Name: PortMapMasqChain, Table: inetTable, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &acceptPolicy,
	}
	portMapChains = []*nftables.Chain{portMapDNATChain, portMapOutputChain, portMapMasqChain}
)

// PortMapping forwards one host port to a port of the pod.
type PortMapping struct {
	HostPort      uint16
	ContainerPort uint16
	// Protocol is unix.IPPROTO_TCP, IPPROTO_UDP or IPPROTO_SCTP.
	Protocol uint8
	// HostIP, when set, restricts the mapping to connections to that
	// local address; it must be of the pod address's family.
	HostIP net.IP
}

// PortMap is the port forwarding of one pod address (one family).
type PortMap struct {
	// ContainerIP is the pod's address connections are forwarded to.
	ContainerIP net.IP
	Mappings    []PortMapping
	// Conditions are extra match expressions every forwarding rule of
	// this family carries (the config's conditionsV4/V6).
	Conditions []expr.Any
	// SNAT masquerades hairpin connections (the pod reaching itself
	// through a host port) and, for IPv4, connections from 127.0.0.0/8.
	SNAT bool
	// MasqAll masquerades every forwarded connection (with SNAT).
	MasqAll bool
	// MarkBit is the packet mark bit (0-31) that flags a connection for
	// masquerading between the DNAT and the postrouting chains.
	MarkBit uint
}

// AddPortMaps makes the attachment's port forwarding rules exactly those
// of maps, in one transaction: the DNAT rules in the prerouting and
// output chains, the mark rules before them and the masquerade rules in
// postrouting. Nothing is created (no table, no chain) when maps hold no
// mapping.
func (c *Conn) AddPortMaps(a attachment.ID, maps []PortMap) error {
	want, n, err := portMapRules(maps)
	if err != nil {
		return err
	}
	if n == 0 {
		return nil
	}
	if err := c.replace(a, want); err != nil {
		return fmt.Errorf("add port mappings for %s: %w", a, err)
	}
	return nil
}

// CheckPortMaps returns an error unless every rule AddPortMaps would
// install for the attachment and maps is present.
func (c *Conn) CheckPortMaps(a attachment.ID, maps []PortMap) error {
	want, _, err := portMapRules(maps)
	if err != nil {
		return err
	}
	for _, w := range want {
		if err := c.check(w.Chain, a, w.Rules, func(i int) string {
			return fmt.Sprintf("port mapping rule %d", i+1)
		}); err != nil {
			return err
		}
	}
	return nil
}

// Forward is a port forwarding found in the kernel: the DNAT of a host
// port to a pod address and port.
type Forward struct {
	Protocol      uint8
	HostPort      uint16
	ContainerIP   net.IP
	ContainerPort uint16
}

// DelPortMaps removes the attachment's port forwarding rules, and only
// those, in one transaction. It needs nothing but the attachment's
// identity, and returns the forwardings it removed (read from the rules
// themselves), so that their conntrack entries can be flushed.
func (c *Conn) DelPortMaps(a attachment.ID) ([]Forward, error) {
	id := nft.Owner(a.String())
	var removed []Forward
	err := c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		removed = removed[:0]
		queued := false
		for _, ch := range portMapChains {
			exprsOf := nft.Owner("")
			if ch == portMapDNATChain {
				exprsOf = id
			}
			rules, err := tx.Rules(ch.Table, ch.Name, exprsOf)
			if err != nil {
				return false, err
			}
			q, err := tx.DelRules(rules, func(r nft.Rule) bool { return r.Owner == id })
			if err != nil {
				return false, err
			}
			queued = queued || q
			for _, r := range rules {
				if f, ok := forwardOf(ch.Table.Family, r.Exprs); ok && r.Owner == id {
					removed = append(removed, f)
				}
			}
		}
		return queued, nil
	})
	if err != nil {
		return nil, fmt.Errorf("delete port mappings of %s: %w", id, err)
	}
	return removed, nil
}

// GCPortMaps removes, in one transaction, the port forwarding rules of
// every attachment of network for which keep returns false. keep must not
// call c.
func (c *Conn) GCPortMaps(network string, keep func(attachment.ID) bool) error {
	if err := c.nft.DeleteOwned(portMapChains, gcMatch(network, keep)); err != nil {
		return fmt.Errorf("garbage-collect port mappings of network %s: %w", network, err)
	}
	return nil
}

// portMapRules returns the rules of maps per chain and how many
// mappings they forward.
func portMapRules(maps []PortMap) ([]nft.ChainRules, int, error) {
	var dnat, output, masq []*nftables.Rule
	n := 0
	for _, pm := range maps {
		f, err := familyOf(pm.ContainerIP)
		if err != nil {
			return nil, 0, err
		}
		if pm.MarkBit > 31 {
			return nil, 0, fmt.Errorf("port mapping: mark bit %d is not in 0-31", pm.MarkBit)
		}
		cip := f.addr(pm.ContainerIP)
		mapped := 0
		for _, m := range pm.Mappings {
			if m.HostPort == 0 || m.ContainerPort == 0 {
				return nil, 0, fmt.Errorf("port mapping %d->%d: port 0", m.HostPort, m.ContainerPort)
			}
			if m.HostIP != nil {
				hf, err := familyOf(m.HostIP)
				if err != nil {
					return nil, 0, err
				}
				if hf.proto != f.proto {
					continue // a mapping of the other family
				}
			}
			match := f.forwardMatch(m, pm.Conditions)
			if pm.SNAT {
				dnat = append(dnat, f.markRule(match, pm, cip))
				if pm.MasqAll || f.proto == unix.NFPROTO_IPV4 {
					output = append(output, f.markRule(match, pm, nil))
				}
			}
			dnat = append(dnat, f.dnatRule(match, cip, m.ContainerPort))
			output = append(output, f.dnatRule(match, cip, m.ContainerPort))
			mapped++
		}
		if mapped > 0 && pm.SNAT {
			masq = append(masq, f.masqRule(cip, pm.MarkBit))
		}
		n += mapped
	}
	want := []nft.ChainRules{{Chain: portMapDNATChain, Rules: dnat}, {Chain: portMapOutputChain, Rules: output}}
	if len(masq) > 0 {
		want = append(want, nft.ChainRules{Chain: portMapMasqChain, Rules: masq})
	}
	return want, n, nil
}

// ipFamily is where an address family keeps its addresses.
type ipFamily struct {
	proto        byte   // NFPROTO_IPV4 or NFPROTO_IPV6
	saddr, daddr uint32 // offsets in the network header
	len          uint32 // address length
	loopback     *net.IPNet
}

var (
	ipv4Family = ipFamily{unix.NFPROTO_IPV4, 12, 16, 4, &net.IPNet{IP: net.IP{127, 0, 0, 0}, Mask: net.CIDRMask(8, 32)}}
	ipv6Family = ipFamily{unix.NFPROTO_IPV6, 8, 24, 16, nil}
)

func familyOf(ip net.IP) (ipFamily, error) {
	switch {
	case ip.To4() != nil:
		return ipv4Family, nil
	case len(ip) == net.IPv6len:
		return ipv6Family, nil
	}
	return ipFamily{}, fmt.Errorf("port mapping: invalid address %q", ip)
}

func (f ipFamily) addr(ip net.IP) net.IP {
	if f.proto == unix.NFPROTO_IPV4 {
		return ip.To4()
	}
	return ip.To16()
}

// AddrMatch returns the expressions of "ip saddr/daddr [!=] prefix" (or
// ip6) for a prefix of the family's length; ok is false when the prefix
// is of the other family.
func AddrMatch(prefix *net.IPNet, dst, negate bool) ([]expr.Any, bool) {
	f, err := familyOf(prefix.IP)
	if err != nil {
		return nil, false
	}
	ones, bits := prefix.Mask.Size()
	if bits == 128 && f.len == 4 && ones >= 96 {
		ones, bits = ones-96, 32
	}
	if uint32(bits) != f.len*8 {
		return nil, false
	}
	return f.addrMatch(&net.IPNet{IP: f.addr(prefix.IP), Mask: net.CIDRMask(ones, bits)}, dst, negate), true
}

// NFProto returns the nfproto (NFPROTO_IPV4/6) of an address.
func NFProto(ip net.IP) byte {
	if ip.To4() != nil {
		return unix.NFPROTO_IPV4
	}
	return unix.NFPROTO_IPV6
}

func (f ipFamily) addrMatch(n *net.IPNet, dst, negate bool) []expr.Any {
	off := f.saddr
	if dst {
		off = f.daddr
	}
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	ones, bits := n.Mask.Size()
	ip := f.addr(n.IP)
	out := []expr.Any{&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: f.len}}
	if ones < bits {
		out = append(out, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: f.len, Mask: []byte(n.Mask), Xor: make([]byte, f.len)})
		ip = ip.Mask(n.Mask)
	}
	return append(out, &expr.Cmp{Op: op, Register: 1, Data: []byte(ip)})
}

// forwardMatch is, for tcp 8080 on 192.0.2.1 with conditions C:
//
//	meta nfproto ipv4 meta l4proto tcp th dport 8080 ip daddr 192.0.2.1 fib daddr type local C
func (f ipFamily) forwardMatch(m PortMapping, conds []expr.Any) []expr.Any {
	port := make([]byte, 2)
	binary.BigEndian.PutUint16(port, m.HostPort)
	out := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{m.Protocol}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port},
	}
	if m.HostIP != nil && !m.HostIP.IsUnspecified() {
		out = append(out, f.addrMatch(&net.IPNet{IP: m.HostIP, Mask: net.CIDRMask(int(f.len*8), int(f.len*8))}, true, false)...)
	}
	out = append(out, FibAddrType(true, unix.RTN_LOCAL, false)...)
	return append(out, conds...)
}

// FibAddrType returns the expressions of "fib daddr type [!=] t" (or
// saddr when dst is false); t is an RTN_* route type.
func FibAddrType(dst bool, t uint32, negate bool) []expr.Any {
	op := expr.CmpOpEq
	if negate {
		op = expr.CmpOpNeq
	}
	typ := make([]byte, 4)
	binary.NativeEndian.PutUint32(typ, t)
	return []expr.Any{
		&expr.Fib{Register: 1, ResultADDRTYPE: true, FlagDADDR: dst, FlagSADDR: !dst},
		&expr.Cmp{Op: op, Register: 1, Data: typ},
	}
}

// markRule is the forward match, then "ip saddr <src>" (src nil: the
// loopback net, or nothing with masqAll), then "meta mark set meta mark
// or <bit>".
func (f ipFamily) markRule(match []expr.Any, pm PortMap, src net.IP) *nftables.Rule {
	exprs := append([]expr.Any(nil), match...)
	switch {
	case pm.MasqAll:
	case src != nil:
		exprs = append(exprs, f.addrMatch(&net.IPNet{IP: src, Mask: net.CIDRMask(int(f.len*8), int(f.len*8))}, false, false)...)
	default:
		exprs = append(exprs, f.addrMatch(f.loopback, false, false)...)
	}
	bit, notBit := make([]byte, 4), make([]byte, 4)
	binary.NativeEndian.PutUint32(bit, 1<<pm.MarkBit)
	binary.NativeEndian.PutUint32(notBit, ^uint32(1<<pm.MarkBit))
	exprs = append(exprs,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: notBit, Xor: bit},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	)
	return &nftables.Rule{Exprs: exprs}
}

// dnatRule is the forward match, then "dnat ip to <ip>:<port>".
func (f ipFamily) dnatRule(match []expr.Any, ip net.IP, port uint16) *nftables.Rule {
	p := make([]byte, 2)
	binary.BigEndian.PutUint16(p, port)
	exprs := append([]expr.Any(nil), match...)
	exprs = append(exprs,
		&expr.Immediate{Register: 1, Data: []byte(ip)},
		&expr.Immediate{Register: 2, Data: p},
		// The kernel reports a range of one as max = min.
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: uint32(f.proto), RegAddrMin: 1, RegAddrMax: 1, RegProtoMin: 2, RegProtoMax: 2, Specified: true},
	)
	return &nftables.Rule{Exprs: exprs}
}

// masqRule is "meta nfproto ipv4 ip daddr <pod> meta mark & <bit> == <bit>
// masquerade".
func (f ipFamily) masqRule(ip net.IP, markBit uint) *nftables.Rule {
	bit := make([]byte, 4)
	binary.NativeEndian.PutUint32(bit, 1<<markBit)
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{f.proto}},
	}
	exprs = append(exprs, f.addrMatch(&net.IPNet{IP: ip, Mask: net.CIDRMask(int(f.len*8), int(f.len*8))}, true, false)...)
	exprs = append(exprs,
		&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: bit, Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: bit},
		&expr.Masq{},
	)
	return &nftables.Rule{Exprs: exprs}
}

// forwardOf reads a DNAT rule written by dnatRule back: its protocol and
// host port (the "meta l4proto" and "th dport" comparisons) and its
// target (the immediates feeding the nat expression).
func forwardOf(family nftables.TableFamily, raw []byte) (Forward, bool) {
	var (
		f      Forward
		loaded string // what register 1 holds: "l4proto", "dport" or ""
		regs   = map[uint32][]byte{}
		isDNAT bool
	)
	fam := byte(family)
	nft.WalkExprs(raw, func(name string, data []byte) {
		switch name {
		case "meta":
			var m expr.Meta
			loaded = ""
			if expr.Unmarshal(fam, data, &m) == nil && m.Key == expr.MetaKeyL4PROTO && !m.SourceRegister {
				loaded = "l4proto"
			}
		case "payload":
			var p expr.Payload
			loaded = ""
			if expr.Unmarshal(fam, data, &p) == nil && p.Base == expr.PayloadBaseTransportHeader && p.Offset == 2 && p.Len == 2 {
				loaded = "dport"
			}
		case "cmp":
			var c expr.Cmp
			if expr.Unmarshal(fam, data, &c) != nil || c.Op != expr.CmpOpEq {
				return
			}
			switch {
			case loaded == "l4proto" && len(c.Data) == 1:
				f.Protocol = c.Data[0]
			case loaded == "dport" && len(c.Data) == 2:
				f.HostPort = binary.BigEndian.Uint16(c.Data)
			}
		case "immediate":
			var im expr.Immediate
			if expr.Unmarshal(fam, data, &im) == nil {
				regs[im.Register] = im.Data
			}
		case "nat":
			var n expr.NAT
			if expr.Unmarshal(fam, data, &n) == nil && n.Type == expr.NATTypeDestNAT {
				isDNAT = true
				if ip := regs[n.RegAddrMin]; len(ip) == 4 || len(ip) == 16 {
					f.ContainerIP = net.IP(append([]byte(nil), ip...))
				}
				if p := regs[n.RegProtoMin]; len(p) == 2 {
					f.ContainerPort = binary.BigEndian.Uint16(p)
				}
			}
		default:
			loaded = ""
		}
	})
	return f, isDNAT && f.ContainerIP != nil && f.HostPort != 0 && f.Protocol != 0
}
