// Package podrules programs the CNI plugins' per-attachment nftables
// rules, on the nft core: the bridge/ptp ipMasq masquerade, the bridge
// plugin's MAC spoof check, portmap's port forwarding and the firewall
// plugin's admission and isolation.
//
// # Layout
//
// The rules live in podnet's own tables, one per address family they
// need, each named "podnet" (nft.TableName), and never in anybody else's:
//
//	table inet podnet {
//		map masquerade4, masquerade6	# pod address : goto its chain
//		chain masquerade {	# bridge/ptp ipMasq: static vmap lookups
//			type nat hook postrouting priority srcnat; policy accept;
//		}
//		chain <network>/<containerID>/<ifname>	# an attachment's masquerade rules
//		chain portmap-prerouting, portmap-output, portmap-masquerade	# portmap.go
//		chain firewall, firewall-isolation, firewall-isolation-stage2	# firewall.go
//	}
//	table bridge podnet {
//		map macspoofchk	# host-side port : goto its chain
//		chain macspoofchk {	# bridge macspoofchk: a static vmap lookup
//			type filter hook prerouting priority -300; policy accept;	# "dstnat"
//		}
//		chain <network>/<containerID>/<ifname>	# an attachment's spoof check
//		chain firewall-isolation	# firewall.go
//	}
//
// Every feature has its own base chains, so features never share or
// reorder each other's rules. Masquerade and the MAC spoof check are
// dispatched (dispatch.go): each attachment's rules sit in a chain named
// after its identity, reached through verdict maps, so that DEL and GC
// neither list nor rewrite other pods' rules. Portmap and the firewall
// keep per-attachment rules directly in their base chains, with no static
// rule. The node agent's egress masquerade (package egress) has a chain
// of its own in the inet table.
//
// # Identity
//
// Every rule is owned by (carries as its comment) the identity of the
// attachment it belongs to, attachment.ID.String() =
// network/containerID/ifname, so `nft list ruleset` shows it; the
// attachments' own chains are named after it. DelAttachment and GC find
// rules by that identity alone, so they need neither the pod's namespace
// nor the result of ADD: DelAttachment reads the attachment's own chains
// and the portmap and firewall chains; GC lists chain names and reads the
// portmap and firewall chains.
//
// # Transactions
//
// Each ADD, DEL or GC is one nft transaction: the table, maps and chains
// an ADD needs are created in the same batch as its rules and elements.
package podrules

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
)

// Chain names of the masquerade and MAC spoof check features.
const (
	// MasqueradeChain is the inet nat postrouting chain of ipMasq.
	MasqueradeChain = "masquerade"
	// MacSpoofChain is the bridge filter prerouting chain of macspoofchk.
	MacSpoofChain = "macspoofchk"
)

var (
	inetTable   = &nftables.Table{Family: nftables.TableFamilyINet, Name: nft.TableName}
	bridgeTable = &nftables.Table{Family: nftables.TableFamilyBridge, Name: nft.TableName}

	acceptPolicy = nftables.ChainPolicyAccept

	masqChain = &nftables.Chain{
		Name:     MasqueradeChain,
		Table:    inetTable,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: nftables.ChainPriorityNATSource,
		Policy:   &acceptPolicy,
	}
	spoofChain = &nftables.Chain{
		Name:     MacSpoofChain,
		Table:    bridgeTable,
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(-300), // as the reference's macspoofchk
		Policy:   &acceptPolicy,
	}

	// masquerade dispatches by the pod's source address.
	masquerade = &dispatch{base: masqChain, maps: []dispatchMap{
		{
			set:   nft.Set{Table: inetTable, Name: MasqueradeChain + "4", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Data: nftables.TypeVerdict},
			match: nfproto(unix.NFPROTO_IPV4),
			load:  &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
		},
		{
			set:   nft.Set{Table: inetTable, Name: MasqueradeChain + "6", Key: []nftables.SetDatatype{nftables.TypeIP6Addr}, Data: nftables.TypeVerdict},
			match: nfproto(unix.NFPROTO_IPV6),
			load:  &expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 8, Len: 16},
		},
	}}
	// macSpoofCheck dispatches by the bridge port a frame enters from.
	macSpoofCheck = &dispatch{base: spoofChain, maps: []dispatchMap{{
		set:  nft.Set{Table: bridgeTable, Name: MacSpoofChain, Key: []nftables.SetDatatype{nftables.TypeIFName}, Data: nftables.TypeVerdict},
		load: &expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
	}}}
	dispatched = []*dispatch{masquerade, macSpoofCheck}

	// ownedChains hold attachments' rules directly: the portmap and
	// firewall chains, and the dispatching base chains (rules written
	// there before dispatch existed).
	ownedChains = []*nftables.Chain{
		masqChain, spoofChain, portMapDNATChain, portMapOutputChain, portMapMasqChain,
		firewallChain, isolationChain, stage2Chain, bridgeIsolationChain,
	}
)

// nfproto is "meta nfproto <proto>".
func nfproto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
	}
}

// Conn programs the per-attachment rules in one network namespace. It is
// safe for concurrent use.
type Conn struct {
	nft *nft.Conn
}

// New opens a connection to nftables in the network namespace nsFd refers
// to; nsFd 0 is the calling thread's namespace.
func New(nsFd int) (*Conn, error) {
	c, err := nft.New(nsFd)
	if err != nil {
		return nil, err
	}
	return &Conn{nft: c}, nil
}

// Close releases the connection.
func (c *Conn) Close() error { return c.nft.Close() }

// ownerOf returns the attachment's identity as a rule owner.
func ownerOf(a attachment.ID) (nft.Owner, error) {
	id := a.String()
	if _, err := attachment.Parse(id); err != nil {
		return "", fmt.Errorf("invalid attachment identity: %w", err)
	}
	o := nft.Owner(id)
	if err := o.Check(); err != nil {
		return "", fmt.Errorf("attachment identity: %w", err)
	}
	return o, nil
}

// replace makes the attachment's rules in the listed chains exactly the
// listed ones, in one transaction.
func (c *Conn) replace(a attachment.ID, want []nft.ChainRules) error {
	o, err := ownerOf(a)
	if err != nil {
		return err
	}
	return c.nft.Replace(o, want)
}

// check returns an error naming the first of want that the attachment's
// rules in chain do not contain.
func (c *Conn) check(chain *nftables.Chain, a attachment.ID, want []*nftables.Rule, name func(int) string) error {
	o, err := ownerOf(a)
	if err != nil {
		return err
	}
	i, err := c.nft.Check(o, chain, want)
	if err != nil {
		return err
	}
	if i >= 0 {
		return fmt.Errorf("%s of attachment %s is missing from %s %s chain %s",
			name(i), o, nft.FamilyName(chain.Table.Family), chain.Table.Name, chain.Name)
	}
	return nil
}

// DelAttachment removes every rule of the attachment from all of podnet's
// tables, whatever feature added it, in one transaction. It needs nothing
// but the attachment's identity (not the pod's namespace, not the result
// of ADD), and succeeds when there is nothing to remove. It reads the
// attachment's own chains and the chains that hold attachments' rules
// directly (portmap, firewall), not the other pods' masquerade and spoof
// check rules.
func (c *Conn) DelAttachment(a attachment.ID) error {
	id := nft.Owner(a.String())
	err := c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		queued := false
		for _, d := range dispatched {
			q, err := d.del(tx, id, false)
			if err != nil {
				return false, err
			}
			queued = queued || q
		}
		q, err := delOwned(tx, func(o nft.Owner) bool { return o == id })
		return queued || q, err
	})
	if err != nil {
		return fmt.Errorf("delete nftables rules of %s: %w", id, err)
	}
	return nil
}

// Attachments lists the attachments of network that own rules in podnet's
// tables, each once, sorted: what DEL or GC has left behind, when called
// after them. It only reads.
func (c *Conn) Attachments(network string) ([]attachment.ID, error) {
	seen := map[attachment.ID]bool{}
	add := func(o nft.Owner) {
		if a, err := attachment.Parse(string(o)); err == nil && a.Network == network {
			seen[a] = true
		}
	}
	err := c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		clear(seen)
		for _, d := range dispatched {
			names, err := tx.Chains(d.base.Table)
			if err != nil {
				return false, err
			}
			for _, n := range names {
				add(nft.Owner(n))
			}
		}
		for _, ch := range ownedChains {
			rules, err := tx.Rules(ch.Table, ch.Name, "")
			if err != nil {
				return false, err
			}
			for _, r := range rules {
				add(r.Owner)
			}
		}
		return false, nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the attachments of network %s: %w", network, err)
	}
	out := slices.SortedFunc(maps.Keys(seen), func(a, b attachment.ID) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// GC removes, in one transaction, every rule of the attachments of network
// for which keep returns false. Rules of other networks and rules without
// an attachment identity are left alone. It finds the attachments'
// chains by listing chain names. keep must not call c.
func (c *Conn) GC(network string, keep func(attachment.ID) bool) error {
	match := gcMatch(network, keep)
	err := c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		queued := false
		for _, d := range dispatched {
			names, err := tx.Chains(d.base.Table)
			if err != nil {
				return false, err
			}
			for _, n := range names {
				if !match(nft.Owner(n)) {
					continue
				}
				q, err := d.del(tx, nft.Owner(n), true)
				if err != nil {
					return false, err
				}
				queued = queued || q
			}
		}
		q, err := delOwned(tx, match)
		return queued || q, err
	})
	if err != nil {
		return fmt.Errorf("garbage-collect nftables rules of network %s: %w", network, err)
	}
	return nil
}

// delOwned queues the removal of the rules of ownedChains whose owner
// match selects.
func delOwned(tx *nft.Tx, match func(nft.Owner) bool) (bool, error) {
	queued := false
	for _, ch := range ownedChains {
		rules, err := tx.Rules(ch.Table, ch.Name, "")
		if err != nil {
			return false, err
		}
		q, err := tx.DelRules(rules, func(r nft.Rule) bool { return match(r.Owner) })
		if err != nil {
			return false, err
		}
		queued = queued || q
	}
	return queued, nil
}

// gcMatch selects the owners that are attachments of network keep does
// not keep.
func gcMatch(network string, keep func(attachment.ID) bool) func(nft.Owner) bool {
	return func(o nft.Owner) bool {
		a, err := attachment.Parse(string(o))
		return err == nil && a.Network == network && !keep(a)
	}
}
