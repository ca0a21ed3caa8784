package podrules

import (
	"fmt"
	"net"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/nft"
)

// TestDispatchKeys: the map keys are read off the attachment's rules,
// built or dumped alike.
func TestDispatchKeys(t *testing.T) {
	masq, err := masqRules(cidrs(t, "10.1.0.5/24", "fd00::5/64", "10.1.0.5/16"))
	if err != nil {
		t.Fatal(err)
	}
	spoof, err := spoofRule("veth1", mac(t, "02:00:00:00:00:01"))
	if err != nil {
		t.Fatal(err)
	}
	name := make([]byte, 16)
	copy(name, "veth1")
	for _, tc := range []struct {
		name  string
		d     *dispatch
		rules []*nftables.Rule
		want  [][][]byte
	}{
		{"masquerade", masquerade, masq, [][][]byte{{{10, 1, 0, 5}}, {net.ParseIP("fd00::5")}}},
		{"spoof check", macSpoofCheck, []*nftables.Rule{spoof}, [][][]byte{{name}}},
		{"nothing", masquerade, nil, [][][]byte{nil, nil}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var built [][]expr.Any
			var dumped []nft.Rule
			for _, r := range tc.rules {
				built = append(built, r.Exprs)
				dumped = append(dumped, nft.Rule{Exprs: encode(t, tc.d, r)})
			}
			if got := tc.d.keys(built); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("keys of built rules = %v, want %v", got, tc.want)
			}
			if got := tc.d.keys(tc.d.decode(dumped)); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("keys of dumped rules = %v, want %v", got, tc.want)
			}
		})
	}
}

// TestStaticRules: the base chains' vmap lookups.
func TestStaticRules(t *testing.T) {
	for _, tc := range []struct {
		d    *dispatch
		want []string
	}{
		{masquerade, []string{"meta nfproto ipv4 ip saddr vmap @masquerade4", "meta nfproto ipv6 ip6 saddr vmap @masquerade6"}},
		{macSpoofCheck, []string{"iifname vmap @macspoofchk"}},
	} {
		if got := render(tc.d.staticRules()); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("%s: static rules %q, want %q", tc.d.base.Name, got, tc.want)
		}
	}
}

// TestTakeOver: a pod that gets the address of a stale attachment (its
// DEL never ran) takes the map element over; the stale attachment's DEL
// then leaves the new pod's element alone.
func TestTakeOver(t *testing.T) {
	ns := tempNS(t, "nftdisp")
	c := connIn(t, ns)
	stale, fresh := att("net1", "stale", "eth0"), att("net1", "fresh", "eth0")
	ips := cidrs(t, "10.1.0.5/24")
	if err := c.AddMasquerade(stale, ips); err != nil {
		t.Fatal(err)
	}
	if err := c.AddMasquerade(fresh, ips); err != nil {
		t.Fatalf("ADD of an address a stale attachment holds: %v", err)
	}
	if err := c.CheckMasquerade(stale, ips); err == nil {
		t.Error("the stale attachment still receives the address's traffic")
	}
	// The stale attachment added again elsewhere lets go of its old
	// address only where it still holds it.
	if err := c.AddMasquerade(stale, cidrs(t, "10.1.0.7/24")); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckMasquerade(fresh, ips); err != nil {
		t.Errorf("the stale attachment's ADD broke the new one: %v", err)
	}
	if err := c.DelAttachment(stale); err != nil {
		t.Fatal(err)
	}
	if err := c.CheckMasquerade(fresh, ips); err != nil {
		t.Errorf("the stale attachment's DEL broke the new one: %v", err)
	}
	if got, want := owners(t, c), []string{"masquerade " + fresh.String()}; !equal(got, want) {
		t.Errorf("rules %q, want %q", got, want)
	}
}

// TestBaseChainRepaired: duplicated static rules (two first ADDs at once)
// or missing ones are rewritten by the next ADD; rules an earlier version
// left in the base chain stay until their attachment's DEL or GC.
func TestBaseChainRepaired(t *testing.T) {
	ns := tempNS(t, "nftdisp")
	c := connIn(t, ns)
	a, legacy, legacyGC := att("net1", "a", "eth0"), att("net1", "old", "eth0"), att("net1", "older", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.1.0.5/24")); err != nil {
		t.Fatal(err)
	}
	old, err := masqRules(cidrs(t, "10.1.0.9/24"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.nft.Transact(func(tx *nft.Tx) (bool, error) {
		for _, r := range masquerade.staticRules() {
			tx.AddRule(r, staticOwner) // a duplicate
		}
		for i, o := range []nft.Owner{nft.Owner(legacy.String()), nft.Owner(legacyGC.String())} {
			r := &nftables.Rule{Table: inetTable, Chain: masqChain, Exprs: old[0].Exprs}
			if i > 0 {
				r.Exprs = append([]expr.Any{&expr.Counter{}}, r.Exprs...)
			}
			tx.AddRule(r, o)
		}
		return false, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	b := att("net1", "b", "eth0")
	if err := c.AddMasquerade(b, cidrs(t, "10.1.0.6/24")); err != nil {
		t.Fatal(err)
	}
	rules, err := c.nft.List(inetTable, MasqueradeChain)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rules {
		got = append(got, string(r.Owner))
	}
	if want := []string{legacy.String(), legacyGC.String(), "podnet", "podnet"}; !equal(got, want) {
		t.Errorf("base chain rules owned by %q, want %q", got, want)
	}
	if err := c.DelAttachment(legacy); err != nil {
		t.Fatal(err)
	}
	if err := c.GC("net1", func(x attachment.ID) bool { return x != legacyGC }); err != nil {
		t.Fatal(err)
	}
	if got, want := owners(t, c), []string{"masquerade " + a.String(), "masquerade " + b.String()}; !equal(got, want) {
		t.Errorf("rules %q, want %q", got, want)
	}
	for i, x := range []attachment.ID{a, b} {
		if err := c.CheckMasquerade(x, cidrs(t, fmt.Sprintf("10.1.0.%d/24", 5+i))); err != nil {
			t.Error(err)
		}
	}
}
