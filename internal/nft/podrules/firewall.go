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

// The firewall plugin's chains:
//
//	table inet podnet {
//		chain firewall-isolation {	# ingressPolicy same-bridge/isolated
//			type filter hook forward priority -10; policy accept;
//			iifname "cni1" oifname != "cni1" jump firewall-isolation-stage2
//			iifname "cni1" oifname "cni1" drop	# isolated only
//		}
//		chain firewall-isolation-stage2 {
//			oifname "cni1" drop
//		}
//		chain firewall {	# every ingressPolicy
//			type filter hook forward priority filter; policy accept;
//			ip daddr 10.1.0.5 ct state established,related accept
//			ip saddr 10.1.0.5 accept
//		}
//	}
//	table bridge podnet {
//		chain firewall-isolation {	# isolated only: IP traffic bridged
//			type filter hook forward priority -200; policy accept;	# from the pod's port
//			iifname "pn0a1b2c3d4e5f" meta protocol ip drop
//			iifname "pn0a1b2c3d4e5f" meta protocol ip6 drop
//		}
//	}
//
// Pods of one bridge talk without their traffic being forwarded by IP (it
// is bridged), so "isolated" also drops the IP frames the bridge forwards
// from each pod's port, in the bridge family (the port, not the bridge,
// is matched: meta ibrname needs nft_meta_bridge, which not every kernel
// has). ARP passes, as it does under the reference's iptables rules.
//
// They mirror the reference plugin's CNI-FORWARD and
// CNI-ISOLATION-STAGE-1/2 iptables chains. The isolation chains run before
// the admission chain (a drop is final in nftables, an accept only ends the
// chain it is in). Every rule carries its attachment's identity; the
// isolation rules of pods on the same bridge are identical, so a bridge
// stays isolated as long as one of its pods is attached.
const (
	// FirewallChain is the inet forward chain that admits the pods'
	// traffic.
	FirewallChain = "firewall"
	// FirewallIsolationChain is the forward chain (inet and bridge) of
	// the isolating ingress policies.
	FirewallIsolationChain = "firewall-isolation"
	// FirewallStage2Chain is the regular inet chain the isolation chain
	// jumps to for traffic leaving an isolated bridge.
	FirewallStage2Chain = "firewall-isolation-stage2"
)

var (
	firewallChain = &nftables.Chain{
		Name:     FirewallChain,
		Table:    inetTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &acceptPolicy,
	}
	isolationChain = &nftables.Chain{
		Name:     FirewallIsolationChain,
		Table:    inetTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityRef(-10),
		Policy:   &acceptPolicy,
	}
	stage2Chain          = &nftables.Chain{Name: FirewallStage2Chain, Table: inetTable}
	bridgeIsolationChain = &nftables.Chain{
		Name:     FirewallIsolationChain,
		Table:    bridgeTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityRef(-200), // bridge "filter"
		Policy:   &acceptPolicy,
	}
)

// Isolation is the firewall plugin's ingress policy.
type Isolation int

const (
	// Open admits every connection to the pod ("open").
	Open Isolation = iota
	// SameBridge drops traffic between the pod's bridge and other
	// isolated bridges ("same-bridge").
	SameBridge
	// Isolated also drops traffic between pods of the same bridge
	// ("isolated").
	Isolated
)

// Firewall is what the firewall plugin programs for one attachment.
type Firewall struct {
	// IPs are the pod's addresses: forwarded traffic from them, and
	// replies to them, is admitted.
	IPs []net.IP
	// Isolation is the ingress policy; for SameBridge and Isolated,
	// Bridge names the bridge the pod is attached to.
	Isolation Isolation
	Bridge    string
	// Ports are the pod's host-side interfaces on the bridge (its
	// veth); with Isolated, IP traffic bridged from them is dropped.
	Ports []string
}

// AddFirewall makes the attachment's firewall rules exactly those for f,
// in one transaction, across the admission and isolation chains: an
// attachment added again, even with another policy, keeps one set.
func (c *Conn) AddFirewall(a attachment.ID, f Firewall) error {
	sets, err := firewallRules(f)
	if err != nil {
		return err
	}
	if err := c.replace(a, sets); err != nil {
		return fmt.Errorf("add firewall rules for %s: %w", a, err)
	}
	return nil
}

// CheckFirewall returns an error unless every rule AddFirewall would
// install for the attachment and f is present.
func (c *Conn) CheckFirewall(a attachment.ID, f Firewall) error {
	sets, err := firewallRules(f)
	if err != nil {
		return err
	}
	for _, s := range sets {
		if err := c.check(s.Chain, a, s.Rules, func(i int) string {
			return fmt.Sprintf("firewall rule %d", i+1)
		}); err != nil {
			return err
		}
	}
	return nil
}

// firewallRules returns the rules of every firewall chain for f; a chain
// without rules for f is listed empty so stale rules of the attachment are
// removed from it.
func firewallRules(f Firewall) ([]nft.ChainRules, error) {
	var admit []*nftables.Rule
	seen := map[string]bool{}
	for _, ip := range f.IPs {
		if ip == nil || seen[ip.String()] {
			continue
		}
		seen[ip.String()] = true
		in, out, err := admitRules(ip)
		if err != nil {
			return nil, err
		}
		admit = append(admit, in, out)
	}
	sets := []nft.ChainRules{
		{Chain: stage2Chain}, {Chain: isolationChain}, {Chain: bridgeIsolationChain},
		{Chain: firewallChain, Rules: admit},
	}
	if f.Isolation == Open {
		return sets, nil
	}
	name, err := ifname(f.Bridge)
	if err != nil {
		return nil, fmt.Errorf("firewall isolation: %w", err)
	}
	iif := func(op expr.CmpOp) []expr.Any { return metaCmp(expr.MetaKeyIIFNAME, op, name) }
	oif := func(op expr.CmpOp) []expr.Any { return metaCmp(expr.MetaKeyOIFNAME, op, name) }
	cat := func(parts ...[]expr.Any) []expr.Any {
		var out []expr.Any
		for _, p := range parts {
			out = append(out, p...)
		}
		return out
	}
	drop := []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}
	sets[0].Rules = []*nftables.Rule{{Exprs: cat(oif(expr.CmpOpEq), drop)}}
	sets[1].Rules = []*nftables.Rule{{Exprs: cat(iif(expr.CmpOpEq), oif(expr.CmpOpNeq),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: FirewallStage2Chain}})}}
	if f.Isolation == Isolated {
		sets[1].Rules = append(sets[1].Rules, &nftables.Rule{Exprs: cat(iif(expr.CmpOpEq), oif(expr.CmpOpEq), drop)})
		for _, port := range f.Ports {
			pname, err := ifname(port)
			if err != nil {
				return nil, fmt.Errorf("firewall isolation: %w", err)
			}
			for _, proto := range []uint16{unix.ETH_P_IP, unix.ETH_P_IPV6} {
				p := binary.BigEndian.AppendUint16(nil, proto)
				sets[2].Rules = append(sets[2].Rules, &nftables.Rule{Exprs: cat(
					metaCmp(expr.MetaKeyIIFNAME, expr.CmpOpEq, pname),
					metaCmp(expr.MetaKeyPROTOCOL, expr.CmpOpEq, p),
					drop)})
			}
		}
	}
	return sets, nil
}

// admitRules are, for 10.1.0.5:
//
//	meta nfproto ipv4 ip daddr 10.1.0.5 ct state established,related accept
//	meta nfproto ipv4 ip saddr 10.1.0.5 accept
func admitRules(ip net.IP) (in, out *nftables.Rule, err error) {
	proto, saddr, daddr := byte(unix.NFPROTO_IPV4), uint32(12), uint32(16)
	addr := ip.To4()
	if addr == nil {
		proto, saddr, daddr = unix.NFPROTO_IPV6, 8, 24
		addr = ip.To16()
	}
	if addr == nil {
		return nil, nil, fmt.Errorf("firewall: invalid address %q", ip)
	}
	match := func(offset uint32) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: uint32(len(addr))},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte(addr)},
		}
	}
	state := binary.NativeEndian.AppendUint32(nil, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED)
	in = &nftables.Rule{Exprs: append(match(daddr),
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: state, Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
		&expr.Verdict{Kind: expr.VerdictAccept},
	)}
	out = &nftables.Rule{Exprs: append(match(saddr), &expr.Verdict{Kind: expr.VerdictAccept})}
	return in, out, nil
}

// ifname returns an interface name as nftables compares it: padded with
// NULs to IFNAMSIZ.
func ifname(name string) ([]byte, error) {
	if name == "" || len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("invalid interface name %q", name)
	}
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b, nil
}

func metaCmp(key expr.MetaKey, op expr.CmpOp, data []byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: key, Register: 1},
		&expr.Cmp{Op: op, Register: 1, Data: data},
	}
}

// DelFirewall removes the attachment's rules from the firewall chains
// only, in one transaction; rules other features added for the same
// attachment stay. It needs nothing but the identity.
func (c *Conn) DelFirewall(a attachment.ID) error {
	sets, err := firewallRules(Firewall{})
	if err != nil {
		return err
	}
	if err := c.replace(a, sets); err != nil {
		return fmt.Errorf("delete firewall rules of %s: %w", a, err)
	}
	return nil
}
