package podrules

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
)

// AddMasquerade makes the attachment's masquerade rules exactly those for
// ips, the pod's addresses with their prefix lengths, as the reference
// plugins' ipMasq does: a packet from one of those addresses to a
// destination outside that address's subnet and not multicast (224.0.0.0/4,
// ff00::/8) is masqueraded. IPv4 and IPv6 are both handled, in the inet
// table. Adding the same attachment again leaves one set of rules.
func (c *Conn) AddMasquerade(a attachment.ID, ips []*net.IPNet) error {
	rules, err := masqRules(ips)
	if err != nil {
		return err
	}
	if err := c.add(masquerade, a, rules); err != nil {
		return fmt.Errorf("add masquerade for %s: %w", a, err)
	}
	return nil
}

// CheckMasquerade returns an error unless every rule AddMasquerade would
// install for the attachment and ips is present.
func (c *Conn) CheckMasquerade(a attachment.ID, ips []*net.IPNet) error {
	rules, err := masqRules(ips)
	if err != nil {
		return err
	}
	return c.checkDispatched(masquerade, a, rules, func(i int) string {
		return fmt.Sprintf("masquerade rule for %s", ips[i])
	})
}

// AddMacSpoofCheck makes the attachment's spoof-check rule the one for
// hostIfName and mac, as the reference bridge plugin's macspoofchk does:
// a frame entering the bridge from the pod's host-side interface
// hostIfName with a source MAC other than mac is dropped (bridge table,
// prerouting hook). Adding the same attachment again leaves one rule.
func (c *Conn) AddMacSpoofCheck(a attachment.ID, hostIfName string, mac net.HardwareAddr) error {
	r, err := spoofRule(hostIfName, mac)
	if err != nil {
		return err
	}
	if err := c.add(macSpoofCheck, a, []*nftables.Rule{r}); err != nil {
		return fmt.Errorf("add mac spoof check for %s: %w", a, err)
	}
	return nil
}

// CheckMacSpoofCheck returns an error unless the rule AddMacSpoofCheck
// would install for the attachment, hostIfName and mac is present.
func (c *Conn) CheckMacSpoofCheck(a attachment.ID, hostIfName string, mac net.HardwareAddr) error {
	r, err := spoofRule(hostIfName, mac)
	if err != nil {
		return err
	}
	return c.checkDispatched(macSpoofCheck, a, []*nftables.Rule{r}, func(int) string {
		return fmt.Sprintf("mac spoof check rule for %s on %s", mac, hostIfName)
	})
}

// masqRules returns one rule per distinct address.
func masqRules(ips []*net.IPNet) ([]*nftables.Rule, error) {
	var rules []*nftables.Rule
	seen := map[string]bool{}
	for _, ipn := range ips {
		r, key, err := masqRule(ipn, false)
		if err != nil {
			return nil, err
		}
		if !seen[key] {
			seen[key] = true
			rules = append(rules, r)
		}
	}
	return rules, nil
}

// masqRule is, for 10.1.0.5/24:
//
//	meta nfproto ipv4 ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 ip daddr != 224.0.0.0/4 masquerade
//
// and for fd00::5/64:
//
//	meta nfproto ipv6 ip6 saddr fd00::5 ip6 daddr != fd00::/64 ip6 daddr != ff00::/8 masquerade
//
// With fromPrefix, the source matches the whole prefix rather than the one
// address (the agent's egress rule for the cluster CIDR):
//
//	meta nfproto ipv4 ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade
func masqRule(ipn *net.IPNet, fromPrefix bool) (*nftables.Rule, string, error) {
	if ipn == nil || ipn.IP == nil {
		return nil, "", fmt.Errorf("masquerade: no address")
	}
	ones, bits := ipn.Mask.Size()
	ip := ipn.IP.To4()
	var (
		proto        byte
		saddr, daddr uint32
	)
	switch {
	case ip != nil && (bits == 32 || bits == 128 && ones >= 96):
		if bits == 128 {
			ones -= 96
		}
		bits = 32
		proto, saddr, daddr = unix.NFPROTO_IPV4, 12, 16
	case ip == nil && bits == 128:
		ip = ipn.IP.To16()
		proto, saddr, daddr = unix.NFPROTO_IPV6, 8, 24
	default:
		return nil, "", fmt.Errorf("masquerade: invalid address %s (mask %s)", ipn.IP, ipn.Mask)
	}
	if ip == nil {
		return nil, "", fmt.Errorf("masquerade: invalid address %s", ipn.IP)
	}
	n := uint32(len(ip))
	mask := net.CIDRMask(ones, bits)
	exprs := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: n},
	}
	inPrefix := func(op expr.CmpOp) {
		if ones < bits {
			exprs = append(exprs, &expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: n, Mask: []byte(mask), Xor: make([]byte, n)})
		}
		exprs = append(exprs, &expr.Cmp{Op: op, Register: 1, Data: []byte(ip.Mask(mask))})
	}
	if fromPrefix {
		inPrefix(expr.CmpOpEq)
	} else {
		exprs = append(exprs, &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(ip)})
	}
	exprs = append(exprs, &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: n})
	inPrefix(expr.CmpOpNeq)
	if proto == unix.NFPROTO_IPV4 {
		// The same expressions as nft's "ip daddr != 224.0.0.0/4".
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xf0, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xe0, 0, 0, 0}},
		)
	} else {
		// The same expressions as nft's "ip6 daddr != ff00::/8": the
		// prefix is whole bytes, so only its first byte is loaded.
		exprs = append(exprs,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xff}},
		)
	}
	exprs = append(exprs, &expr.Masq{})
	key := (&net.IPNet{IP: ip, Mask: mask}).String()
	return &nftables.Rule{Exprs: exprs}, key, nil
}

// spoofRule is, for veth1 and 02:00:00:00:00:01:
//
//	iifname "veth1" ether saddr != 02:00:00:00:00:01 drop
func spoofRule(ifName string, mac net.HardwareAddr) (*nftables.Rule, error) {
	if ifName == "" || len(ifName) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("mac spoof check: invalid interface name %q", ifName)
	}
	if len(mac) != 6 {
		return nil, fmt.Errorf("mac spoof check: invalid MAC address %q", mac)
	}
	name := make([]byte, unix.IFNAMSIZ)
	copy(name, ifName)
	return &nftables.Rule{Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: name},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseLLHeader, Offset: 6, Len: 6},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte(mac)},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}}, nil
}
