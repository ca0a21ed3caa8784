// Package egress is the node agent's egress masquerade: pods reach the
// world outside the cluster through the node's address, while traffic
// between pods keeps its source. It owns, in podnet's inet table, one
// chain of two static rules and one set of cluster CIDRs per family:
//
//	table inet podnet {
//		set cluster-cidrs4 {
//			type ipv4_addr; flags interval;
//			elements = { 10.244.0.0/16 }
//		}
//		set cluster-cidrs6 {
//			type ipv6_addr; flags interval;
//		}
//		chain egress {
//			type nat hook postrouting priority srcnat; policy accept;
//			ip saddr @cluster-cidrs4 ip daddr != @cluster-cidrs4 ip daddr != 224.0.0.0/4 masquerade comment "podnet-agent egress"
//			ip6 saddr @cluster-cidrs6 ip6 daddr != @cluster-cidrs6 ip6 daddr != ff00::/8 masquerade comment "podnet-agent egress"
//		}
//	}
//
// A change of the cluster CIDRs changes the sets' elements one by one,
// in one transaction; the chain is written only when it does not hold
// exactly these rules (first start, upgrade). The rules' owner is no
// attachment identity, so the plugins' DEL and GC never touch them.
package egress

import (
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/nft"
)

// Chain is the inet nat postrouting chain of the egress masquerade.
const Chain = "egress"

// Names of the sets of cluster CIDRs, per family.
const (
	SetV4 = "cluster-cidrs4"
	SetV6 = "cluster-cidrs6"
)

// owner is the comment on the egress rules.
const owner nft.Owner = "podnet-agent egress"

var (
	table        = &nftables.Table{Family: nftables.TableFamilyINet, Name: nft.TableName}
	acceptPolicy = nftables.ChainPolicyAccept
	chain        = &nftables.Chain{
		Name:     Chain,
		Table:    table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &acceptPolicy,
	}
	sets = [2]nft.Set{
		{Table: table, Name: SetV4, Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Interval: true},
		{Table: table, Name: SetV6, Key: []nftables.SetDatatype{nftables.TypeIP6Addr}, Interval: true},
	}
)

// Egress programs the egress masquerade in one network namespace. It is
// safe for concurrent use.
type Egress struct {
	nft *nft.Conn
}

// New opens a connection to nftables in the network namespace nsFd refers
// to; nsFd 0 is the calling thread's namespace.
func New(nsFd int) (*Egress, error) {
	c, err := nft.New(nsFd)
	if err != nil {
		return nil, err
	}
	return &Egress{nft: c}, nil
}

// Close releases the connection.
func (e *Egress) Close() error { return e.nft.Close() }

// Sync makes the egress masquerade cover exactly the traffic from the
// cluster CIDRs to destinations outside them (multicast excepted), in one
// transaction that adds the missing and deletes the stale set elements,
// and writes the chain only when its rules are not the static ones. It
// reports whether it changed anything: a restarted agent changes nothing.
func (e *Egress) Sync(cidrs []*net.IPNet) (changed bool, err error) {
	want, err := elements(cidrs)
	if err != nil {
		return false, fmt.Errorf("egress masquerade: %w", err)
	}
	rules := Rules()
	err = e.nft.Transact(func(tx *nft.Tx) (bool, error) {
		changed = false
		have, err := tx.Rules(table, Chain, owner)
		if err != nil {
			return false, err
		}
		stale := false
		if !sameRules(have, rules) {
			changed = true
			for _, s := range sets {
				if err := tx.AddSet(s); err != nil {
					return false, err
				}
			}
			tx.AddChain(chain)
			tx.FlushChain(chain)
			for _, r := range rules {
				tx.AddRule(r, owner)
			}
		}
		for i, s := range sets {
			elems, _, err := tx.Elements(s)
			if err != nil {
				return false, err
			}
			add, del := nft.Diff(elems, want[i])
			if len(add)+len(del) == 0 {
				continue
			}
			changed, stale = true, stale || len(del) > 0
			if err := tx.DelElements(s, del); err != nil {
				return false, err
			}
			if err := tx.AddElements(s, add); err != nil {
				return false, err
			}
		}
		return stale, nil
	})
	if err != nil {
		return false, fmt.Errorf("program egress masquerade: %w", err)
	}
	return changed, nil
}

// sameRules tells whether the chain holds exactly want, in order.
func sameRules(have []nft.Rule, want []*nftables.Rule) bool {
	if len(have) != len(want) {
		return false
	}
	for i, r := range have {
		if r.Owner != owner || !nft.SameExprs(table.Family, r.Exprs, want[i].Exprs) {
			return false
		}
	}
	return true
}

// elements returns the set elements of the CIDRs per family (IPv4,
// IPv6).
func elements(cidrs []*net.IPNet) ([2][]nftables.SetElement, error) {
	var byFamily [2][]*net.IPNet
	for _, n := range cidrs {
		if n == nil {
			return [2][]nftables.SetElement{}, fmt.Errorf("nil cluster CIDR")
		}
		if n.IP.To4() != nil {
			byFamily[0] = append(byFamily[0], n)
		} else {
			byFamily[1] = append(byFamily[1], n)
		}
	}
	var out [2][]nftables.SetElement
	for i, ns := range byFamily {
		elems, err := nft.PrefixElements(ns)
		if err != nil {
			return out, err
		}
		out[i] = elems
	}
	return out, nil
}

// Rules returns the chain's two rules, with their table and chain set:
//
//	meta nfproto ipv4 ip saddr @cluster-cidrs4 ip daddr != @cluster-cidrs4 ip daddr != 224.0.0.0/4 masquerade
//	meta nfproto ipv6 ip6 saddr @cluster-cidrs6 ip6 daddr != @cluster-cidrs6 ip6 daddr != ff00::/8 masquerade
func Rules() []*nftables.Rule {
	rule := func(proto byte, saddr, daddr, alen uint32, set string, notMulticast []expr.Any) *nftables.Rule {
		exprs := []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: saddr, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: set},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: daddr, Len: alen},
			&expr.Lookup{SourceRegister: 1, SetName: set, Invert: true},
		}
		exprs = append(exprs, notMulticast...)
		exprs = append(exprs, &expr.Masq{})
		return &nftables.Rule{Table: table, Chain: chain, Exprs: exprs}
	}
	return []*nftables.Rule{
		// The same expressions as nft's "ip daddr != 224.0.0.0/4".
		rule(unix.NFPROTO_IPV4, 12, 16, 4, SetV4, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: []byte{0xf0, 0, 0, 0}, Xor: []byte{0, 0, 0, 0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xe0, 0, 0, 0}},
		}),
		// "ip6 daddr != ff00::/8": a whole byte, so only it is loaded.
		rule(unix.NFPROTO_IPV6, 8, 24, 16, SetV6, []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 1},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0xff}},
		}),
	}
}

// Delete removes the egress chain and sets (the agent's cleanup when
// egress masquerade is turned off, and on leave), in one transaction, then
// the table if nothing else is left in it (the plugins keep their rules
// of running pods there); removing what is not there is no error.
func (e *Egress) Delete() error {
	err := e.nft.Transact(func(tx *nft.Tx) (bool, error) {
		tx.AddTable(table)
		tx.DelChain(chain)
		for _, s := range sets {
			if err := tx.DelSet(s); err != nil {
				return false, err
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("remove egress masquerade: %w", err)
	}
	if _, err := e.nft.DeleteTableIfEmpty(table); err != nil {
		return fmt.Errorf("remove egress masquerade: %w", err)
	}
	return nil
}
