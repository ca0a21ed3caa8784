package nft

import (
	"errors"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/google/nftables"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/testing/nfttest"
)

// TestLosingEveryRaceIsTryAgainLater makes every listing of a deletion
// stale: between each listing and its batch another connection removes
// the owner's rule and adds it back under a new handle. The transaction
// gives up after maxAttempts builds with an error the CNI layer reports
// as the spec's "try again later" (11), and leaves the other writer's
// rule alone.
func TestLosingEveryRaceIsTryAgainLater(t *testing.T) {
	ns := nfttest.NS(t, "nftcore")
	c, other := connIn(t, ns), connIn(t, ns)
	o := Owner("race/pod1/eth0")
	want := []ChainRules{{testChain, []*nftables.Rule{markRule(1)}}}
	if err := c.Replace(o, want); err != nil {
		t.Fatal(err)
	}
	builds, err := racingDel(t, c, o, func(int) {
		if err := other.DeleteOwned([]*nftables.Chain{testChain}, func(x Owner) bool { return x == o }); err != nil {
			t.Fatal(err)
		}
		if err := other.Replace(o, want); err != nil {
			t.Fatal(err)
		}
	})
	if builds != maxAttempts {
		t.Errorf("built %d times, want %d", builds, maxAttempts)
	}
	var e *types.Error
	if !errors.As(cniplugin.AsCNIError(err), &e) || e.Code != types.ErrTryAgainLater {
		t.Fatalf("transaction that lost every race = %v, want code 11", err)
	}
	t.Logf("code %d: %s", e.Code, e.Msg)
	if got, want := owners(t, c), []string{"owned " + string(o)}; !equal(got, want) {
		t.Errorf("rules %q, want %q (the other writer's)", got, want)
	}
}
