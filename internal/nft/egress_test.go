package nft

import (
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/attachment"
)

func TestSyncEgress(t *testing.T) {
	ns := tempNS(t, "nftegress")
	c := connIn(t, ns)
	a := att("net1", "c1", "eth0")
	if err := c.AddMasquerade(a, cidrs(t, "10.244.1.5/24")); err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name      string
		cidrs     []string
		wantWrite bool
	}{
		{"first sync writes", []string{"10.244.0.0/16"}, true},
		{"same again changes nothing", []string{"10.244.0.0/16"}, false},
		{"dual-stack rewrites", []string{"10.244.0.0/16", "fd00:10:244::/56"}, true},
		{"dual-stack again changes nothing", []string{"10.244.0.0/16", "fd00:10:244::/56"}, false},
	}
	for _, s := range steps {
		wrote, err := c.SyncEgress(cidrs(t, s.cidrs...))
		if err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if wrote != s.wantWrite {
			t.Errorf("%s: wrote=%v, want %v", s.name, wrote, s.wantWrite)
		}
	}
	out := nftList(t, ns)
	for _, want := range []string{
		"ip saddr 10.244.0.0/16 ip daddr != 10.244.0.0/16 ip daddr != 224.0.0.0/4 masquerade",
		"ip6 saddr fd00:10:244::/56 ip6 daddr != fd00:10:244::/56 ip6 daddr != ff00::/8 masquerade",
		`comment "podnet-agent egress"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("ruleset lacks %q:\n%s", want, out)
		}
	}
	// A plugin's GC of every attachment leaves the agent's rules alone.
	if err := c.GC("net1", func(attachment.ID) bool { return false }); err != nil {
		t.Fatal(err)
	}
	if wrote, err := c.SyncEgress(cidrs(t, "10.244.0.0/16", "fd00:10:244::/56")); err != nil || wrote {
		t.Errorf("after plugin GC: wrote=%v err=%v, want the egress rules untouched", wrote, err)
	}
	if err := c.DelEgress(); err != nil {
		t.Fatal(err)
	}
	if err := c.DelEgress(); err != nil {
		t.Errorf("second DelEgress: %v", err)
	}
	if out := nftList(t, ns); strings.Contains(out, "egress") {
		t.Errorf("egress chain left after DelEgress:\n%s", out)
	}
}
