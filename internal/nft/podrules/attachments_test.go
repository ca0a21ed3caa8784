package podrules

import (
	"reflect"
	"testing"

	"github.com/podnet/podnet/internal/attachment"
)

func TestAttachments(t *testing.T) {
	ns := tempNS(t, "nfttest")
	c := connIn(t, ns)
	a, b, other := att("net1", "c1", "eth0"), att("net1", "c2", "eth0"), att("net2", "c3", "eth0")
	for _, x := range []attachment.ID{a, b, other} {
		if err := c.AddMasquerade(x, cidrs(t, "10.1.0.5/24")); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.AddMacSpoofCheck(a, "veth-a", mac(t, "02:00:00:00:00:0a")); err != nil {
		t.Fatal(err)
	}
	got, err := c.Attachments("net1")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[attachment.ID]bool{a: true, b: true}; len(got) != len(want) || !want[got[0]] || !want[got[1]] {
		t.Fatalf("Attachments(net1) = %v, want %v once each", got, []attachment.ID{a, b})
	}
	for _, x := range []attachment.ID{a, b} {
		if err := c.DelAttachment(x); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := c.Attachments("net1"); err != nil || len(got) != 0 {
		t.Errorf("Attachments(net1) after DEL = %v, %v; want none", got, err)
	}
	if got, err := c.Attachments("net2"); err != nil || !reflect.DeepEqual(got, []attachment.ID{other}) {
		t.Errorf("Attachments(net2) = %v, %v; want [%v]", got, err, other)
	}
}
