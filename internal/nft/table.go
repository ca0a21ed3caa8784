package nft

import (
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// DeleteTableIfEmpty deletes table t if it holds nothing — no chain, set,
// map or object — and tells whether it did; a table still in use, or
// missing, stays as it is. The kernel decides (the deletion is
// non-recursive, NLM_F_NONREC, refused with EBUSY while anything is in
// the table), so a chain another process adds meanwhile is never deleted
// with it: the features that share a table (the plugins' rules, the
// agent's egress) each remove what they own, and the last one out
// removes the table.
func (c *Conn) DeleteTableIfEmpty(t *nftables.Table) (bool, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.ready(); err != nil {
		return false, err
	}
	name, err := netlink.MarshalAttributes([]netlink.Attribute{{Type: unix.NFTA_TABLE_NAME, Data: cstring(t.Name)}})
	if err != nil {
		return false, err
	}
	batchHeader := []byte{unix.AF_UNSPEC, unix.NFNETLINK_V0, 0, unix.NFNL_SUBSYS_NFTABLES} // res_id: the subsystem, big endian
	msgs := []netlink.Message{
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_BEGIN), Flags: netlink.Request}, Data: batchHeader},
		{
			Header: netlink.Header{
				Type:  netlink.HeaderType(unix.NFNL_SUBSYS_NFTABLES<<8 | unix.NFT_MSG_DELTABLE),
				Flags: netlink.Request | netlink.Acknowledge | unix.NLM_F_NONREC,
			},
			Data: append(nfgenmsg(t.Family), name...),
		},
		{Header: netlink.Header{Type: netlink.HeaderType(unix.NFNL_MSG_BATCH_END), Flags: netlink.Request}, Data: batchHeader},
	}
	sent, err := c.nl.SendMessages(msgs)
	if err != nil {
		c.dropNL()
		return false, fmt.Errorf("delete table %s %s: %w", FamilyName(t.Family), t.Name, err)
	}
	del := sent[1].Header.Sequence
	for {
		replies, err := c.nl.Receive()
		switch {
		case errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOENT):
			return false, nil
		case err != nil:
			c.dropNL()
			return false, fmt.Errorf("delete table %s %s: %w", FamilyName(t.Family), t.Name, err)
		}
		for _, r := range replies {
			if r.Header.Sequence == del && r.Header.Type == netlink.Error {
				return true, nil // the acknowledgement: errors came back as err
			}
		}
	}
}
