package nft

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/testing/nfttest"
)

func TestBatch(t *testing.T) {
	ns := nfttest.NS(t, "nftbatch")
	c, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: "batch"}
	ch := &nftables.Chain{Name: "c", Table: tb}
	pol := nftables.ChainPolicyAccept
	base := &nftables.Chain{Name: "b", Table: tb, Type: nftables.ChainTypeNAT, Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &pol}
	vmap := Set{Table: tb, Name: "vm", Key: []nftables.SetDatatype{nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService}, Data: nftables.TypeVerdict}
	cidrs := Set{Table: tb, Name: "cidrs", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Interval: true}
	elem := func(i byte) nftables.SetElement {
		return nftables.SetElement{Key: []byte{10, 0, 0, i, 6, 0, 0, 0, 0, 80, 0, 0}, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "c"}}
	}
	many := make([]nftables.SetElement, 250) // several messages
	for i := range many {
		many[i] = elem(byte(i))
	}
	cidrElems, err := PrefixElements(nfttest.CIDRs(t, "10.244.0.0/16"))
	if err != nil {
		t.Fatal(err)
	}

	for _, step := range []struct {
		name    string
		build   func(b *Batch)
		wantErr string
		check   string // in the ruleset
	}{
		{"table, chains, sets, rules and elements", func(b *Batch) {
			b.DelTable(tb)
			b.AddTable(tb)
			b.AddChain(ch)
			b.AddChain(base)
			b.AddSet(vmap)
			b.AddSet(cidrs)
			b.AddElements(cidrs, cidrElems)
			b.AddRule(base, []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: "c"}})
			b.AddElements(vmap, many)
		}, "", "10.0.0.249 . tcp . 80 : goto c"},
		{"flush, delete elements", func(b *Batch) {
			b.FlushChain(base)
			b.DelElements(vmap, many[1:])
			b.DelElements(cidrs, cidrElems)
		}, "", "10.0.0.0 . tcp . 80 : goto c"},
		{"a failing message fails the whole batch", func(b *Batch) {
			b.AddRule(base, []expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
			b.DelElements(vmap, many[1:2])
		}, "no such file", ""},
		{"the next batch works", func(b *Batch) {
			b.DelElements(vmap, many[:1])
			b.DelChain(ch)
		}, "", "chain b"},
		{"an empty batch sends nothing", func(*Batch) {}, "", ""},
	} {
		t.Run(step.name, func(t *testing.T) {
			var b Batch
			step.build(&b)
			err := c.Send(&b)
			if (err == nil) != (step.wantErr == "") || (err != nil && !strings.Contains(err.Error(), step.wantErr)) {
				t.Fatalf("Send = %v, want error %q", err, step.wantErr)
			}
			out := nfttest.Ruleset(t, ns)
			if step.check != "" && !strings.Contains(out, step.check) {
				t.Errorf("ruleset lacks %q:\n%s", step.check, out)
			}
			if step.wantErr != "" && strings.Contains(out, "\t\taccept\n") {
				t.Errorf("a failed batch left its rule:\n%s", out)
			}
		})
	}
	out := nfttest.Ruleset(t, ns)
	if strings.Contains(out, "goto c") || strings.Contains(out, "10.244.0.0/16") {
		t.Errorf("elements left:\n%s", out)
	}
}
