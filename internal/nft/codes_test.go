package nft

import (
	"errors"
	"net"
	"testing"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniplugin"
)

// TestLosingEveryRaceIsTryAgainLater makes every listing of a DEL stale:
// between each listing and its batch another connection removes the
// attachment's rule and adds it back under a new handle. The transaction
// gives up after maxAttempts builds with the spec's "try again later"
// (11), and leaves the other writer's rule alone.
func TestLosingEveryRaceIsTryAgainLater(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c, other := connIn(t, ns), connIn(t, ns)
	a := att("race", "pod1", "eth0")
	ips := []*net.IPNet{{IP: net.IPv4(10, 53, 0, 2), Mask: net.CIDRMask(24, 32)}}
	if err := c.AddMasquerade(a, ips); err != nil {
		t.Fatal(err)
	}
	builds, err := racingDel(t, c, a, func(int) {
		if err := other.DelAttachment(a); err != nil {
			t.Fatal(err)
		}
		if err := other.AddMasquerade(a, ips); err != nil {
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
	t.Logf("code %d: %s; %s", e.Code, e.Msg, e.Details)
	if got, want := owners(t, c), []string{"masquerade " + a.String()}; !equal(got, want) {
		t.Errorf("rules %q, want %q (the other writer's)", got, want)
	}
}

// racingDel deletes a's rules in one transaction, running between (with
// the build's number) after each listing, before the batch is sent; it
// returns how many times the batch was built.
func racingDel(t *testing.T, c *Conn, a attachment.ID, between func(build int)) (int, error) {
	t.Helper()
	builds := 0
	err := c.transact(func() (bool, error) {
		builds++
		rules, err := c.listAll()
		if err != nil {
			return false, err
		}
		queued, err := c.queueDeletes(rules, func(r ruleRef) bool { return r.comment == a.String() })
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
