package nft

import (
	"fmt"
	"net"
	"testing"

	"github.com/podnet/podnet/internal/attachment"

	"github.com/google/nftables"
)

// TestLargeBatches adds and removes thousands of rules in single
// transactions, as a GC after a crash of a full node does: the kernel's
// acknowledgements of such a batch overflow a default receive buffer.
func TestLargeBatches(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	const pods = 1500
	err := c.transact(func() (bool, error) {
		c.nft.AddTable(inetTable)
		c.nft.AddChain(masqChain)
		c.nft.AddTable(bridgeTable)
		c.nft.AddChain(spoofChain)
		c.queued += 4
		for i := 0; i < pods; i++ {
			a := att("big", fmt.Sprintf("pod%04d", i), "eth0")
			ud, err := commentOf(a)
			if err != nil {
				return false, err
			}
			m, _, err := masqRule(&net.IPNet{IP: net.IPv4(10, 53, byte(i/256), byte(i%256)), Mask: net.CIDRMask(16, 32)}, false)
			if err != nil {
				return false, err
			}
			s, err := spoofRule(fmt.Sprintf("veth%04d", i), net.HardwareAddr{2, 0, 0, 0x53, byte(i / 256), byte(i)})
			if err != nil {
				return false, err
			}
			for _, r := range []struct {
				r *nftables.Rule
				c *nftables.Chain
			}{{m, masqChain}, {s, spoofChain}} {
				r.r.Table, r.r.Chain, r.r.UserData = r.c.Table, r.c, ud
				c.nft.AddRule(r.r)
				c.queued++
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("add %d rules in one batch: %v", 2*pods, err)
	}
	if got := owners(t, c); len(got) != 2*pods {
		t.Fatalf("%d rules, want %d", len(got), 2*pods)
	}
	// The connection still works after a large batch.
	n := pods - 1
	last := att("big", fmt.Sprintf("pod%04d", n), "eth0")
	if err := c.CheckMacSpoofCheck(last, fmt.Sprintf("veth%04d", n), net.HardwareAddr{2, 0, 0, 0x53, byte(n / 256), byte(n)}); err != nil {
		t.Fatal(err)
	}
	if err := c.GC("big", func(a attachment.ID) bool { return a == last }); err != nil {
		t.Fatal(err)
	}
	if got, want := owners(t, c), []string{"macspoofchk " + last.String(), "masquerade " + last.String()}; !equal(got, want) {
		t.Fatalf("rules left %q, want %q", got, want)
	}
}
