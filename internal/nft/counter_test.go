package nft

import (
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/testing/nfttest"
)

func TestCountersAndDelSet(t *testing.T) {
	ns := nfttest.NS(t, "nftctr")
	c, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tb := &nftables.Table{Family: nftables.TableFamilyINet, Name: "ctr"}
	ch := &nftables.Chain{Name: "c", Table: tb}
	set := Set{Table: tb, Name: "s", Key: []nftables.SetDatatype{nftables.TypeIPAddr}}

	if got, err := c.Counters(tb); err != nil || len(got) != 0 {
		t.Fatalf("Counters of a missing table = %v, %v", got, err)
	}
	var b Batch
	b.AddTable(tb)
	b.AddChain(ch)
	b.AddSet(set)
	b.AddCounter(tb, "deny/a")
	b.AddCounter(tb, "b")
	b.AddRule(ch, []expr.Any{&expr.Objref{Type: unix.NFT_OBJECT_COUNTER, Name: "deny/a"}})
	if err := c.Send(&b); err != nil {
		t.Fatal(err)
	}
	got, err := c.Counters(tb)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Packets != 0 {
		t.Errorf("Counters = %+v, want two at zero", got)
	}
	if out := nfttest.Ruleset(t, ns); !strings.Contains(out, `counter name "deny/a"`) {
		t.Errorf("ruleset lacks the counter reference:\n%s", out)
	}

	// Adding an existing counter keeps it; a referenced one cannot go.
	b = Batch{}
	b.AddCounter(tb, "b")
	b.DelCounter(tb, "deny/a")
	if err := c.Send(&b); err == nil || !strings.Contains(err.Error(), "busy") {
		t.Errorf("deleting a referenced counter: %v, want busy", err)
	}
	b = Batch{}
	b.FlushChain(ch)
	b.DelCounter(tb, "deny/a")
	b.DelSet(set)
	if err := c.Send(&b); err != nil {
		t.Fatal(err)
	}
	got, err = c.Counters(tb)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "b" {
		t.Errorf("Counters = %+v, want b alone", got)
	}
	if out := nfttest.Ruleset(t, ns); strings.Contains(out, "set s") {
		t.Errorf("set left:\n%s", out)
	}
}
