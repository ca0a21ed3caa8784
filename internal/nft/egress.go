package nft

import (
	"errors"
	"fmt"
	"net"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
	"golang.org/x/sys/unix"
)

// EgressChain is the inet nat postrouting chain of the node agent's egress
// masquerade: pods reach the world outside the cluster through the node's
// address, while pod-to-pod traffic keeps its source.
const EgressChain = "egress"

// egressOwner is the comment on the agent's egress rules. It is not an
// attachment identity, so plugins' DEL and GC never touch these rules.
const egressOwner = "podnet-agent egress"

var egressChain = &nftables.Chain{
	Name:     EgressChain,
	Table:    inetTable,
	Type:     nftables.ChainTypeNAT,
	Hooknum:  nftables.ChainHookPostrouting,
	Priority: nftables.ChainPriorityNATSource,
	Policy:   &acceptPolicy,
}

// SyncEgress makes the egress chain masquerade exactly the traffic from
// each cluster CIDR to destinations outside it (multicast excepted):
//
//	meta nfproto ipv4 ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade
//
// The chain belongs to the agent alone, so it is rewritten in one
// transaction (flush and add) — but only when its rules differ, so a
// restarted agent changes nothing. It reports whether it wrote.
func (c *Conn) SyncEgress(cidrs []*net.IPNet) (bool, error) {
	var want []*nftables.Rule
	for _, n := range cidrs {
		r, _, err := masqRule(n, true)
		if err != nil {
			return false, fmt.Errorf("egress masquerade: %w", err)
		}
		want = append(want, r)
	}
	same, err := c.egressIs(want)
	if err != nil {
		return false, err
	}
	if same {
		return false, nil
	}
	comment := userdata.AppendString(nil, userdata.TypeComment, egressOwner)
	err = c.transact(func() (bool, error) {
		c.nft.AddTable(inetTable)
		c.nft.AddChain(egressChain)
		c.nft.FlushChain(egressChain)
		c.queued += 3
		for _, r := range want {
			r.Table, r.Chain, r.UserData = inetTable, egressChain, comment
			c.nft.AddRule(r)
			c.queued++
		}
		return false, nil
	})
	if err != nil {
		return false, fmt.Errorf("program egress masquerade: %w", err)
	}
	return true, nil
}

// egressIs tells whether the egress chain holds exactly want.
func (c *Conn) egressIs(want []*nftables.Rule) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(); err != nil {
		return false, err
	}
	have, err := c.list(inetTable, EgressChain, egressOwner)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return false, nil
		}
		return false, err
	}
	if len(have) != len(want) {
		return false, nil
	}
	for i, r := range have {
		if r.comment != egressOwner || !sameExprs(inetTable.Family, r.exprs, want[i].Exprs) {
			return false, nil
		}
	}
	return true, nil
}

// DelEgress removes the egress chain (the agent's cleanup when egress
// masquerade is turned off); removing what is not there is no error.
func (c *Conn) DelEgress() error {
	err := c.transact(func() (bool, error) {
		c.nft.AddTable(inetTable)
		c.nft.AddChain(egressChain)
		c.nft.DelChain(egressChain)
		c.queued += 3
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("remove egress masquerade: %w", err)
	}
	return nil
}
