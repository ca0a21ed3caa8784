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
//		chain masquerade {	# bridge/ptp ipMasq, one rule per pod address
//			type nat hook postrouting priority srcnat; policy accept;
//		}
//		chain portmap-prerouting, portmap-output, portmap-masquerade	# portmap.go
//		chain firewall, firewall-isolation, firewall-isolation-stage2	# firewall.go
//	}
//	table bridge podnet {
//		chain macspoofchk {	# bridge macspoofchk, one rule per attachment
//			type filter hook prerouting priority -300; policy accept;	# "dstnat"
//		}
//		chain firewall-isolation	# firewall.go
//	}
//
// Every feature has its own base chains, so features never share or
// reorder each other's rules and a chain holds nothing but per-attachment
// rules: there is no static rule that would have to be added exactly
// once. The node agent's egress masquerade (package egress) has a chain
// of its own in the inet table.
//
// # Identity
//
// Every rule is owned by (carries as its comment) the identity of the
// attachment it belongs to, attachment.ID.String() =
// network/containerID/ifname, so `nft list ruleset` shows it.
// DelAttachment and GC find rules by that identity alone, in any chain of
// any podnet table, so they need neither the pod's namespace nor the
// result of ADD.
//
// # Transactions
//
// Each ADD, DEL or GC is one nft transaction: the table and chains an ADD
// needs are created in the same batch as its rules (unless its listing
// just showed the chain holding rules). ADD and CHECK read the chains
// they program; DEL and GC each podnet table.
package podrules

import (
	"fmt"

	"github.com/google/nftables"

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

	// allTables stands for every chain of every podnet table, which
	// DelAttachment and GC search.
	allTables = []*nftables.Chain{{Table: inetTable}, {Table: bridgeTable}}

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
)

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
// of ADD), and succeeds when there is nothing to remove.
func (c *Conn) DelAttachment(a attachment.ID) error {
	id := nft.Owner(a.String())
	if err := c.nft.DeleteOwned(allTables, func(o nft.Owner) bool { return o == id }); err != nil {
		return fmt.Errorf("delete nftables rules of %s: %w", id, err)
	}
	return nil
}

// GC removes, in one transaction, every rule of the attachments of network
// for which keep returns false. Rules of other networks and rules without
// an attachment identity are left alone. keep must not call c.
func (c *Conn) GC(network string, keep func(attachment.ID) bool) error {
	if err := c.nft.DeleteOwned(allTables, gcMatch(network, keep)); err != nil {
		return fmt.Errorf("garbage-collect nftables rules of network %s: %w", network, err)
	}
	return nil
}

// gcMatch selects the owners that are attachments of network keep does
// not keep.
func gcMatch(network string, keep func(attachment.ID) bool) func(nft.Owner) bool {
	return func(o nft.Owner) bool {
		a, err := attachment.Parse(string(o))
		return err == nil && a.Network == network && !keep(a)
	}
}
