package podrules

import (
	"bytes"
	"fmt"
	"reflect"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
)

// A dispatched feature keeps each attachment's rules in a regular chain of
// their own, named after the attachment's identity, and reaches it from
// the feature's base chain through verdict maps keyed by a packet field
// the attachment's rules match on (the pod's source address, its host-side
// interface):
//
//	table inet podnet {
//		map masquerade4 { type ipv4_addr : verdict; elements = { 10.1.0.5 : goto "net1/c1/eth0" } }
//		chain masquerade {
//			meta nfproto ipv4 ip saddr vmap @masquerade4 comment "podnet"
//		}
//		chain net1/c1/eth0 {
//			meta nfproto ipv4 ip saddr 10.1.0.5 ip daddr != 10.1.0.0/24 … masquerade comment "net1/c1/eth0"
//		}
//	}
//
// DEL reaches an attachment's rules by name: it dumps the attachment's
// own chain (its few rules name the map keys), deletes those elements
// and the chain, and never lists other pods' rules. GC lists chain names.
// An ADD is one batch (chain, rules and elements), so a plugin killed
// during ADD leaves all of it or none; the base chain's static rules are
// rewritten only when the listing of the base chain (those rules alone)
// shows them missing.
type dispatch struct {
	base *nftables.Chain
	maps []dispatchMap
}

// dispatchMap is one verdict map of a dispatched feature.
type dispatchMap struct {
	set nft.Set
	// match is what the static rule checks before the lookup (meta
	// nfproto); load loads the key, in the static rule and in the
	// attachment's rules, where the comparison after it gives the key.
	match []expr.Any
	load  expr.Any
}

// staticOwner owns the base chains' static dispatch rules: no attachment.
const staticOwner nft.Owner = "podnet"

// staticRules returns the base chain's rules, one vmap lookup per map.
func (d *dispatch) staticRules() []*nftables.Rule {
	var out []*nftables.Rule
	for _, m := range d.maps {
		exprs := append(append([]expr.Any(nil), m.match...), m.load,
			&expr.Lookup{SourceRegister: 1, SetName: m.set.Name, IsDestRegSet: true})
		out = append(out, &nftables.Rule{Table: d.base.Table, Chain: d.base, Exprs: exprs})
	}
	return out
}

// chainOf is the attachment's own chain of the feature.
func (d *dispatch) chainOf(o nft.Owner) *nftables.Chain {
	return &nftables.Chain{Table: d.base.Table, Name: string(o)}
}

// keys returns, per map, the keys the rules match on: the value compared
// right after each load of a map's key.
func (d *dispatch) keys(rules [][]expr.Any) [][][]byte {
	out := make([][][]byte, len(d.maps))
	for _, exprs := range rules {
		loaded := -1
		for _, e := range exprs {
			if c, ok := e.(*expr.Cmp); ok && loaded >= 0 && c.Op == expr.CmpOpEq {
				if !containsKey(out[loaded], c.Data) {
					out[loaded] = append(out[loaded], c.Data)
				}
			}
			loaded = -1
			for i, m := range d.maps {
				if reflect.DeepEqual(e, m.load) {
					loaded = i
				}
			}
		}
	}
	return out
}

func containsKey(keys [][]byte, k []byte) bool {
	for _, x := range keys {
		if bytes.Equal(x, k) {
			return true
		}
	}
	return false
}

// decode returns the expressions of dumped rules that keys looks at
// (the loads and comparisons; others as nil placeholders).
func (d *dispatch) decode(rules []nft.Rule) [][]expr.Any {
	fam := byte(d.base.Table.Family)
	var out [][]expr.Any
	for _, r := range rules {
		var exprs []expr.Any
		nft.WalkExprs(r.Exprs, func(name string, data []byte) {
			var e expr.Any
			switch name {
			case "cmp":
				e = &expr.Cmp{}
			case "payload":
				e = &expr.Payload{}
			case "meta":
				e = &expr.Meta{}
			}
			if e != nil && expr.Unmarshal(fam, data, e) != nil {
				e = nil
			}
			exprs = append(exprs, e)
		})
		out = append(out, exprs)
	}
	return out
}

// add makes the attachment's rules of the feature exactly rules (none:
// its chain removed), in one transaction: the base chain's static rules and the maps when missing,
// the attachment's chain flushed and filled, its stale keys deleted and
// its keys pointed at its chain (taking over a key a stale attachment
// still holds).
func (c *Conn) add(d *dispatch, a attachment.ID, rules []*nftables.Rule) error {
	o, err := ownerOf(a)
	if err != nil {
		return err
	}
	if len(rules) == 0 {
		return c.nft.Transact(func(tx *nft.Tx) (bool, error) { return d.del(tx, o, false) })
	}
	chain := d.chainOf(o)
	var exprs [][]expr.Any
	for _, r := range rules {
		exprs = append(exprs, r.Exprs)
	}
	want := d.keys(exprs)
	return c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		stale, err := d.ensureBase(tx)
		if err != nil {
			return false, err
		}
		old, err := tx.Rules(chain.Table, chain.Name, o)
		if err != nil {
			return false, err
		}
		tx.AddChain(chain)
		tx.FlushChain(chain)
		for _, r := range rules {
			r.Table, r.Chain = chain.Table, chain
			tx.AddRule(r, o)
		}
		had := d.keys(d.decode(old))
		for i, m := range d.maps {
			keys := append(append([][]byte(nil), want[i]...), had[i]...)
			have, err := tx.GetElements(m.set, keys...)
			if err != nil {
				return false, err
			}
			var del, add []nftables.SetElement
			for _, e := range have {
				// Take a wanted key over; let go of an old key only if it
				// is still ours.
				ours := e.VerdictData != nil && e.VerdictData.Chain == chain.Name && e.VerdictData.Kind == expr.VerdictGoto
				if containsKey(want[i], e.Key) != ours {
					del = append(del, e)
				}
			}
			for _, k := range want[i] {
				add = append(add, nftables.SetElement{Key: k, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain.Name}})
			}
			add, _ = nft.Diff(have, add)
			if err := tx.DelElements(m.set, del); err != nil {
				return false, err
			}
			if err := tx.AddElements(m.set, add); err != nil {
				return false, err
			}
			stale = stale || len(del) > 0
		}
		return stale, nil
	})
}

// ensureBase queues the table, maps, base chain and its static rules
// unless the base chain's listing shows the static rules; rules of the
// base chain owned by attachments (written before dispatch existed) are
// left alone. It reports whether the batch deletes listed rules.
func (d *dispatch) ensureBase(tx *nft.Tx) (bool, error) {
	have, err := tx.Rules(d.base.Table, d.base.Name, staticOwner)
	if err != nil {
		return false, err
	}
	want := d.staticRules()
	var static []nft.Rule
	for _, r := range have {
		if r.Owner == staticOwner {
			static = append(static, r)
		}
	}
	if len(static) == len(want) {
		same := true
		for i, r := range static {
			same = same && nft.SameExprs(d.base.Table.Family, r.Exprs, want[i].Exprs)
		}
		if same {
			return false, nil
		}
	}
	for _, m := range d.maps {
		if err := tx.AddSet(m.set); err != nil {
			return false, err
		}
	}
	tx.AddChain(d.base)
	queued, err := tx.DelRules(static, func(nft.Rule) bool { return true })
	if err != nil {
		return false, err
	}
	for _, r := range want {
		tx.AddRule(r, staticOwner)
	}
	return queued, nil
}

// del queues, in tx, the removal of the attachment's chain of the
// feature and of the map elements pointing at it, after a targeted dump
// of that chain alone; it reports whether it queued anything. A chain
// without rules is taken for absent unless exists says it is there (GC
// listed it): ADD never leaves one.
func (d *dispatch) del(tx *nft.Tx, o nft.Owner, exists bool) (bool, error) {
	chain := d.chainOf(o)
	rules, err := tx.Rules(chain.Table, chain.Name, o)
	if err != nil {
		return false, err
	}
	if len(rules) == 0 && !exists {
		return false, nil
	}
	keys := d.keys(d.decode(rules))
	for i, m := range d.maps {
		have, err := tx.GetElements(m.set, keys[i]...)
		if err != nil {
			return false, err
		}
		var del []nftables.SetElement
		for _, e := range have {
			if e.VerdictData != nil && e.VerdictData.Chain == chain.Name {
				del = append(del, e)
			}
		}
		if err := tx.DelElements(m.set, del); err != nil {
			return false, err
		}
	}
	tx.DelChain(chain)
	return true, nil
}

// checkDispatched returns an error unless the attachment's chain holds
// want and every key of want points at it.
func (c *Conn) checkDispatched(d *dispatch, a attachment.ID, want []*nftables.Rule, name func(int) string) error {
	o, err := ownerOf(a)
	if err != nil {
		return err
	}
	chain := d.chainOf(o)
	if err := c.check(chain, a, want, name); err != nil {
		return err
	}
	var exprs [][]expr.Any
	for _, r := range want {
		exprs = append(exprs, r.Exprs)
	}
	keys := d.keys(exprs)
	return c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		for i, m := range d.maps {
			have, err := tx.GetElements(m.set, keys[i]...)
			if err != nil {
				return false, err
			}
			n := 0
			for _, e := range have {
				if e.VerdictData != nil && e.VerdictData.Kind == expr.VerdictGoto && e.VerdictData.Chain == chain.Name {
					n++
				}
			}
			if n != len(keys[i]) {
				return false, fmt.Errorf("map %s does not send all of attachment %s's traffic to its chain", m.set.Name, o)
			}
		}
		return false, nil
	})
}
