package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"testing"
)

func TestNodeJSON(t *testing.T) {
	_, subnet, _ := net.ParseCIDR("10.244.3.0/24")
	_, subnet6, _ := net.ParseCIDR("fd00::/64")
	n := Node{Name: "a", IP: net.ParseIP("192.0.2.1").To4(), IP6: net.ParseIP("2001:db8::1"),
		Subnet: subnet, Subnet6: subnet6, VTEPMAC: "02:00:00:00:00:01"}
	b, err := json.Marshal(n)
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"name":"a","ip":"192.0.2.1","ip6":"2001:db8::1","subnet":"10.244.3.0/24","subnet6":"fd00::/64","vtepMAC":"02:00:00:00:00:01"}`; string(b) != want {
		t.Fatalf("json = %s, want %s", b, want)
	}
	var back Node
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(back) != fmt.Sprint(n) {
		t.Fatalf("round trip = %+v, want %+v", back, n)
	}
	if err := json.Unmarshal([]byte(`{"name":"a","subnet":"10.244.3.0/33"}`), &back); err == nil {
		t.Fatal("bad subnet decoded")
	}
}
