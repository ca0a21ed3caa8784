package attachment

import "testing"

func TestStringParse(t *testing.T) {
	a := ID{Network: "net", ContainerID: "c1", IfName: "eth0"}
	if s := a.String(); s != "net/c1/eth0" {
		t.Fatalf("String() = %q", s)
	}
	back, err := Parse(a.String())
	if err != nil || back != a {
		t.Fatalf("Parse(%q) = %+v, %v", a.String(), back, err)
	}
	// An interface name may not hold "/", a container ID may not either:
	// the last field takes the rest.
	if b, err := Parse("n/c/if/x"); err != nil || b.IfName != "if/x" {
		t.Fatalf("Parse with extra slash = %+v, %v", b, err)
	}
	for _, bad := range []string{"", "n", "n/c", "n//eth0", "/c/eth0", "n/c/"} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) succeeded", bad)
		}
	}
}
