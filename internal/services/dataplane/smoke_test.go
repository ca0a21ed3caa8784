package dataplane

import (
	"net/netip"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/testing/nfttest"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

func TestSmoke(t *testing.T) {
	ns := nfttest.NS(t, "dpsmoke")
	tb, err := New(Config{NetNSFd: ns.Fd(), ClusterCIDRs: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00::/64")}})
	if err != nil {
		t.Fatal(err)
	}
	defer tb.Close()
	ep := func(s string, p uint16) Endpoint { return Endpoint{netip.MustParseAddr(s), p} }
	svcs := []Service{
		{Namespace: "ns", Name: "a", Protocol: TCP, Family: IPv4, ClusterIP: netip.MustParseAddr("10.96.0.10"), Port: 80, NodePort: 30080,
			Internal: []Endpoint{ep("10.244.1.2", 8080), ep("10.244.1.3", 8080)}, External: []Endpoint{ep("10.244.1.2", 8080), ep("10.244.1.3", 8080)}, Affinity: 3 * time.Hour},
		{Namespace: "ns", Name: "b", Protocol: UDP, Family: IPv6, ClusterIP: netip.MustParseAddr("fd01::10"), Port: 53, NodePort: 30053, ExternalLocal: true,
			Internal: []Endpoint{ep("fd00::2", 53), ep("fd00::3", 53)}, External: []Endpoint{ep("fd00::2", 53)}, Affinity: time.Minute},
		{Namespace: "ns", Name: "c", Protocol: SCTP, Family: IPv4, ClusterIP: netip.MustParseAddr("10.96.0.11"), Port: 80, ExternalIPs: []netip.Addr{netip.MustParseAddr("192.0.2.1")}},
	}
	if _, err := tb.Sync(nil); err != nil {
		t.Fatal("skeleton", err)
	}
	for i := range svcs {
		for _, aff := range []time.Duration{0, svcs[i].Affinity} {
			s := svcs[i]
			s.Affinity = aff
			if _, err := tb.Sync([]Service{s}); err != nil {
				t.Error(i, aff, err)
			}
		}
	}
	st, err := tb.Sync(svcs)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%+v", st)
	for _, c := range []string{"filter-input", "filter-forward", "nat-postrouting", "services", "reject-chain", "svc-ns/a//TCP/ipv4", "ext-ns/a//TCP/ipv4", "svc-ns/b//UDP/ipv6", "ext-ns/b//UDP/ipv6", "svc-ns/c//SCTP/ipv4"} {
		out, err := sandbox.NFT(ns.NS, "list", "chain", "inet", TableName, c)
		t.Log(c, string(out), err)
	}
}
