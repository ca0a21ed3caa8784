package nft

import (
	"fmt"
	"strings"

	"github.com/google/nftables"
	"github.com/google/nftables/userdata"
)

// Owner names who a rule belongs to; it is the rule's comment. The
// plugins' rules are owned by their attachment's identity
// (attachment.ID.String()), the agent's by a fixed name that is no
// identity.
type Owner string

// maxOwnerLen is the longest owner that fits a userdata comment: the
// kernel keeps at most 256 bytes of rule userdata, the TLV header takes
// two and the terminating NUL one.
const maxOwnerLen = 253

// Check returns an error unless o fits a rule comment.
func (o Owner) Check() error {
	if o == "" {
		return fmt.Errorf("empty rule owner")
	}
	if len(o) > maxOwnerLen {
		return fmt.Errorf("owner %q is longer than the %d bytes an nftables comment holds", string(o), maxOwnerLen)
	}
	return nil
}

// comment returns o as rule userdata, nil for no owner.
func (o Owner) comment() []byte {
	if o == "" {
		return nil
	}
	return userdata.AppendString(nil, userdata.TypeComment, string(o))
}

// ownerFrom returns the comment stored in rule userdata, or "". Unlike
// userdata.GetString it never panics on a malformed TLV another tool wrote.
func ownerFrom(ud []byte) Owner {
	for len(ud) >= 2 {
		typ, n := userdata.Type(ud[0]), int(ud[1])
		if len(ud) < 2+n {
			return ""
		}
		if typ == userdata.TypeComment {
			return Owner(strings.TrimSuffix(string(ud[2:2+n]), "\x00"))
		}
		ud = ud[2+n:]
	}
	return ""
}

// ChainRules is the set of rules an owner wants in one chain.
type ChainRules struct {
	Chain *nftables.Chain
	Rules []*nftables.Rule
}

// Replace makes the owner's rules in each listed chain exactly the listed
// rules, in one transaction, leaving other owners' rules alone. A chain
// that gets rules is created (with its table) unless its listing showed
// it holding rules (re-adding an existing base chain costs the kernel
// more than the rest of the batch); a chain listed without rules only
// loses the owner's old ones. Chains are created before any rule is
// added, so a rule may jump to a chain created in the same batch.
func (c *Conn) Replace(o Owner, want []ChainRules) error {
	if err := o.Check(); err != nil {
		return err
	}
	return c.Transact(func(tx *Tx) (bool, error) {
		stale := false
		olds := make([][]Rule, len(want))
		tablesAdded := map[*nftables.Table]bool{}
		for i, w := range want {
			old, err := tx.Rules(w.Chain.Table, w.Chain.Name, "")
			if err != nil {
				return false, err
			}
			olds[i] = old
			if len(old) > 0 {
				stale = true
				continue
			}
			if len(w.Rules) == 0 {
				continue
			}
			if !tablesAdded[w.Chain.Table] {
				tx.AddTable(w.Chain.Table)
				tablesAdded[w.Chain.Table] = true
			}
			tx.AddChain(w.Chain)
		}
		for _, old := range olds {
			if _, err := tx.DelRules(old, func(r Rule) bool { return r.Owner == o }); err != nil {
				return false, err
			}
		}
		for _, w := range want {
			for _, r := range w.Rules {
				r.Table, r.Chain = w.Chain.Table, w.Chain
				tx.AddRule(r, o)
			}
		}
		return stale, nil
	})
}

// DelRules queues the removal of the listed rules that match and reports
// whether it queued any.
func (tx *Tx) DelRules(rules []Rule, match func(Rule) bool) (bool, error) {
	queued := false
	for _, r := range rules {
		if !match(r) {
			continue
		}
		if err := tx.DelRule(r); err != nil {
			return false, err
		}
		queued = true
	}
	return queued, nil
}

// DeleteOwned removes, in one transaction, the rules of the listed chains
// whose owner match selects; a chain with an empty name stands for every
// chain of its table. match runs with c locked and must not call c.
func (c *Conn) DeleteOwned(chains []*nftables.Chain, match func(Owner) bool) error {
	return c.Transact(func(tx *Tx) (bool, error) {
		queued := false
		for _, ch := range chains {
			rules, err := tx.Rules(ch.Table, ch.Name, "")
			if err != nil {
				return false, err
			}
			q, err := tx.DelRules(rules, func(r Rule) bool { return match(r.Owner) })
			if err != nil {
				return false, err
			}
			queued = queued || q
		}
		return queued, nil
	})
}

// Check returns the index in want of the first rule the owner's rules in
// chain do not contain, or -1 when all are there.
func (c *Conn) Check(o Owner, chain *nftables.Chain, want []*nftables.Rule) (int, error) {
	if err := o.Check(); err != nil {
		return 0, err
	}
	var have []Rule
	if err := c.read(func(tx *Tx) (err error) {
		have, err = tx.Rules(chain.Table, chain.Name, o)
		return err
	}); err != nil {
		return 0, err
	}
	for i, w := range want {
		found := false
		for _, r := range have {
			if r.Owner == o && SameExprs(chain.Table.Family, r.Exprs, w.Exprs) {
				found = true
				break
			}
		}
		if !found {
			return i, nil
		}
	}
	return -1, nil
}
