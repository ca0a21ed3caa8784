package nft

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// connIn opens a Conn in the namespace, closed when the test ends.
func connIn(t *testing.T, ns *netns.Temp) *Conn {
	t.Helper()
	c, err := New(ns.Fd())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

var (
	testTable = &nftables.Table{Family: nftables.TableFamilyINet, Name: "podnet-test"}
	testChain = &nftables.Chain{Table: testTable, Name: "owned"}
)

// markRule is "meta mark set <n>": distinct rules, easy to tell apart.
func markRule(n uint32) *nftables.Rule {
	return &nftables.Rule{Exprs: []expr.Any{
		&expr.Immediate{Register: 1, Data: []byte{byte(n), byte(n >> 8), byte(n >> 16), byte(n >> 24)}},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1},
	}}
}

// owners lists "chain owner" for every rule of the test table, sorted.
func owners(t *testing.T, c *Conn) []string {
	t.Helper()
	rules, err := c.List(testTable, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, r := range rules {
		out = append(out, r.Chain+" "+string(r.Owner))
	}
	sort.Strings(out)
	return out
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

func TestReplaceCheckDeleteOwned(t *testing.T) {
	ns := nfttest.NS(t, "nftcore")
	c := connIn(t, ns)
	a, b := Owner("net/a/eth0"), Owner("net/b/eth0")
	if i, err := c.Check(a, testChain, []*nftables.Rule{markRule(1)}); err != nil || i != 0 {
		t.Fatalf("Check before Replace = %d, %v; want 0 (missing)", i, err)
	}
	for i := 0; i < 2; i++ { // the second Replace changes nothing
		if err := c.Replace(a, []ChainRules{{testChain, []*nftables.Rule{markRule(1), markRule(2)}}}); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Replace(b, []ChainRules{{testChain, []*nftables.Rule{markRule(3)}}}); err != nil {
		t.Fatal(err)
	}
	if got, want := owners(t, c), []string{"owned net/a/eth0", "owned net/a/eth0", "owned net/b/eth0"}; !equal(got, want) {
		t.Fatalf("rules %q, want %q", got, want)
	}
	if i, err := c.Check(a, testChain, []*nftables.Rule{markRule(2), markRule(1)}); err != nil || i != -1 {
		t.Errorf("Check = %d, %v; want -1", i, err)
	}
	if i, err := c.Check(a, testChain, []*nftables.Rule{markRule(1), markRule(3)}); err != nil || i != 1 {
		t.Errorf("Check of another owner's rule = %d, %v; want 1", i, err)
	}
	// Replacing with fewer rules drops the others.
	if err := c.Replace(a, []ChainRules{{testChain, []*nftables.Rule{markRule(2)}}}); err != nil {
		t.Fatal(err)
	}
	if i, _ := c.Check(a, testChain, []*nftables.Rule{markRule(1)}); i != 0 {
		t.Error("the replaced rule is still there")
	}
	if err := c.DeleteOwned([]*nftables.Chain{{Table: testTable}}, func(o Owner) bool { return o == a }); err != nil {
		t.Fatal(err)
	}
	if got, want := owners(t, c), []string{"owned net/b/eth0"}; !equal(got, want) {
		t.Fatalf("after DeleteOwned rules %q, want %q", got, want)
	}
	if err := c.Replace("", nil); err == nil {
		t.Error("empty owner accepted")
	}
	if err := c.Replace(Owner(strings.Repeat("x", 254)), nil); err == nil {
		t.Error("owner longer than a comment accepted")
	}
	if out := nfttest.Ruleset(t, ns); !strings.Contains(out, `meta mark set 0x00000003 comment "net/b/eth0"`) {
		t.Errorf("owner not shown as the comment:\n%s", out)
	}
}

func TestDeleteOwnedWithoutTable(t *testing.T) {
	c := connIn(t, nfttest.NS(t, "nftcore"))
	if err := c.DeleteOwned([]*nftables.Chain{{Table: testTable}, testChain}, func(Owner) bool { return true }); err != nil {
		t.Fatal(err)
	}
}

func TestClosed(t *testing.T) {
	c, err := New(nfttest.NS(t, "nftcore").Fd())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := c.Close(); err != nil {
			t.Fatalf("Close #%d: %v", i+1, err)
		}
	}
	if err := c.Replace("o", []ChainRules{{testChain, []*nftables.Rule{markRule(1)}}}); !errors.Is(err, ErrClosed) {
		t.Errorf("Replace after Close: %v", err)
	}
	if _, err := c.List(testTable, ""); !errors.Is(err, ErrClosed) {
		t.Errorf("List after Close: %v", err)
	}
	if _, err := c.Check("o", testChain, nil); !errors.Is(err, ErrClosed) {
		t.Errorf("Check after Close: %v", err)
	}
}

func TestOwnerRoundTrip(t *testing.T) {
	for _, tc := range []struct {
		ud   []byte
		want Owner
	}{
		{Owner("net-1.x/abc_DEF-123/eth0").comment(), "net-1.x/abc_DEF-123/eth0"},
		{nil, ""}, {[]byte{0}, ""}, {[]byte{0, 5, 'a'}, ""}, {[]byte{1, 200}, ""},
		{[]byte{7, 1, 'x', 0, 3, 'a', 'b', 0}, "ab"}, // after another TLV
	} {
		if got := ownerFrom(tc.ud); got != tc.want {
			t.Errorf("ownerFrom(%v) = %q, want %q", tc.ud, got, tc.want)
		}
	}
}

// racingDel deletes o's rules of the test table in one transaction,
// running between (with the build's number) after each listing, before
// the batch is sent; it returns how many times the batch was built.
func racingDel(t *testing.T, c *Conn, o Owner, between func(build int)) (int, error) {
	t.Helper()
	builds := 0
	err := c.Transact(func(tx *Tx) (bool, error) {
		builds++
		rules, err := tx.Rules(testTable, "", "")
		if err != nil {
			return false, err
		}
		queued, err := tx.DelRules(rules, func(r Rule) bool { return r.Owner == o })
		if err != nil {
			return false, err
		}
		if builds == 1 && !queued {
			t.Fatal("nothing to delete on the first listing")
		}
		between(builds)
		return queued, nil
	})
	return builds, err
}

// TestStaleListingRetried makes a deletion's listing stale on purpose:
// between the listing and the batch another connection removes the rules.
// The batch fails with ENOENT, the listing is redone, and it succeeds.
func TestStaleListingRetried(t *testing.T) {
	ns := nfttest.NS(t, "nftcore")
	c, other := connIn(t, ns), connIn(t, ns)
	a, b := Owner("stale/pod1/eth0"), Owner("stale/pod2/eth0")
	for i, o := range []Owner{a, b} {
		if err := c.Replace(o, []ChainRules{{testChain, []*nftables.Rule{markRule(uint32(i))}}}); err != nil {
			t.Fatal(err)
		}
	}
	builds, err := racingDel(t, c, a, func(build int) {
		if build == 1 {
			if err := other.DeleteOwned([]*nftables.Chain{testChain}, func(x Owner) bool { return x == a }); err != nil {
				t.Fatal(err)
			}
		}
	})
	if err != nil {
		t.Fatalf("transaction after a stale listing: %v", err)
	}
	if builds != 2 {
		t.Errorf("built %d times, want 2 (one retry)", builds)
	}
	if got, want := owners(t, c), []string{"owned " + string(b)}; !equal(got, want) {
		t.Errorf("rules %q, want %q", got, want)
	}
	// The connection is still usable after the failed batch.
	if err := c.Replace(a, []ChainRules{{testChain, []*nftables.Rule{markRule(5)}}}); err != nil {
		t.Fatal(err)
	}
}

// TestLargeBatches adds and removes thousands of rules in single
// transactions, as a GC after a crash of a full node does: the kernel's
// acknowledgements of such a batch overflow a default receive buffer.
func TestLargeBatches(t *testing.T) {
	c := connIn(t, nfttest.NS(t, "nftcore"))
	const n = 3000
	err := c.Transact(func(tx *Tx) (bool, error) {
		tx.AddTable(testTable)
		tx.AddChain(testChain)
		for i := 0; i < n; i++ {
			r := markRule(uint32(i))
			r.Table, r.Chain = testTable, testChain
			tx.AddRule(r, Owner(fmt.Sprintf("big/pod%04d/eth0", i)))
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("add %d rules in one batch: %v", n, err)
	}
	if got := owners(t, c); len(got) != n {
		t.Fatalf("%d rules, want %d", len(got), n)
	}
	last := Owner(fmt.Sprintf("big/pod%04d/eth0", n-1))
	if i, err := c.Check(last, testChain, []*nftables.Rule{markRule(n - 1)}); err != nil || i != -1 {
		t.Fatalf("Check after a large batch = %d, %v", i, err)
	}
	if err := c.DeleteOwned([]*nftables.Chain{testChain}, func(o Owner) bool { return o != last }); err != nil {
		t.Fatal(err)
	}
	if got, want := owners(t, c), []string{"owned " + string(last)}; !equal(got, want) {
		t.Fatalf("rules left %q, want %q", got, want)
	}
}

// TestRetryErrorIsEAGAIN: the error of a transaction that gave up wraps
// unix.EAGAIN and the last failure.
func TestRetryErrorIsEAGAIN(t *testing.T) {
	err := error(&retryError{what: "x", err: unix.ENOENT})
	if !errors.Is(err, unix.EAGAIN) || !errors.Is(err, unix.ENOENT) {
		t.Errorf("%v wraps neither EAGAIN nor its cause", err)
	}
}

// TestDeleteTableIfEmpty: a table is deleted only once nothing is left in
// it; one in use, or missing, stays as it is.
func TestDeleteTableIfEmpty(t *testing.T) {
	ns := nfttest.NS(t, "nftcore")
	c := connIn(t, ns)
	if deleted, err := c.DeleteTableIfEmpty(testTable); err != nil || deleted {
		t.Fatalf("missing table: deleted %v, %v", deleted, err)
	}
	if err := c.Replace("net/a/eth0", []ChainRules{{testChain, []*nftables.Rule{markRule(1)}}}); err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.DeleteTableIfEmpty(testTable); err != nil || deleted {
		t.Fatalf("table with a chain: deleted %v, %v", deleted, err)
	}
	if got := owners(t, c); !equal(got, []string{"owned net/a/eth0"}) {
		t.Fatalf("the table in use lost its rules: %q", got)
	}
	if err := c.Transact(func(tx *Tx) (bool, error) { tx.DelChain(testChain); return false, nil }); err != nil {
		t.Fatal(err)
	}
	if deleted, err := c.DeleteTableIfEmpty(testTable); err != nil || !deleted {
		t.Fatalf("empty table: deleted %v, %v", deleted, err)
	}
	if out := nfttest.Ruleset(t, ns); strings.Contains(out, testTable.Name) {
		t.Errorf("the empty table is still there:\n%s", out)
	}
}
