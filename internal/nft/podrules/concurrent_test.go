package podrules

import (
	"fmt"
	"net"
	"sync"
	"testing"

	"github.com/podnet/podnet/internal/attachment"
)

// TestConcurrentAddDel runs 20 plugins at once in one namespace, each with
// its own connection as separate processes would have, each adding,
// checking and deleting both features for its own attachment several
// times. Nothing may fail and nothing may be left.
func TestConcurrentAddDel(t *testing.T) {
	ns := tempNS(t, "nfttest")
	const workers, rounds = 20, 5
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs <- func() error {
				c, err := New(ns.Fd())
				if err != nil {
					return err
				}
				defer c.Close()
				a := att("conc", fmt.Sprintf("pod%02d", i), "eth0")
				ips := []*net.IPNet{
					{IP: net.IPv4(10, 50, byte(i), 2), Mask: net.CIDRMask(24, 32)},
					{IP: net.ParseIP(fmt.Sprintf("fd00:50:%x::2", i)), Mask: net.CIDRMask(64, 128)},
				}
				m := net.HardwareAddr{2, 0, 0, 0, 0x50, byte(i)}
				dev := fmt.Sprintf("veth%02d", i)
				for r := 0; r < rounds; r++ {
					if err := c.AddMasquerade(a, ips); err != nil {
						return err
					}
					if err := c.AddMacSpoofCheck(a, dev, m); err != nil {
						return err
					}
					if err := c.CheckMasquerade(a, ips); err != nil {
						return err
					}
					if err := c.CheckMacSpoofCheck(a, dev, m); err != nil {
						return err
					}
					if err := c.DelAttachment(a); err != nil {
						return err
					}
				}
				return nil
			}()
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := owners(t, connIn(t, ns)); len(got) != 0 {
		t.Fatalf("rules left: %q", got)
	}
}

// TestConcurrentDelSameRules has several processes remove the same rules
// at once, by DEL and by GC, so that their listings go stale under each
// other: every call must succeed and every rule must go.
func TestConcurrentDelSameRules(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	const pods = 30
	var all []attachment.ID
	for i := 0; i < pods; i++ {
		a := att("conc", fmt.Sprintf("pod%02d", i), "eth0")
		all = append(all, a)
		if err := c.AddMasquerade(a, []*net.IPNet{{IP: net.IPv4(10, 51, 0, byte(i+2)), Mask: net.CIDRMask(16, 32)}}); err != nil {
			t.Fatal(err)
		}
		if err := c.AddMacSpoofCheck(a, fmt.Sprintf("veth%02d", i), net.HardwareAddr{2, 0, 0, 0, 0x51, byte(i)}); err != nil {
			t.Fatal(err)
		}
	}
	const workers = 8
	errs := make(chan error, workers*pods)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			c, err := New(ns.Fd())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if w%4 == 3 {
				errs <- c.GC("conc", func(attachment.ID) bool { return false })
				return
			}
			for i := range all {
				// Each worker walks the attachments from a different start.
				errs <- c.DelAttachment(all[(i+w*pods/workers)%pods])
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := owners(t, c); len(got) != 0 {
		t.Fatalf("rules left: %q", got)
	}
}
