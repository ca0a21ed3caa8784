package dataplane

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/policy"
	"github.com/podnet/podnet/internal/testing/nflogtest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// TestDeniedLog subscribes to the nflog group in the node's namespace
// and checks which packets are logged: each denied one with its deny
// chain's prefix and its addresses, no allowed one, and no more than
// the rate limit lets through.
func TestDeniedLog(t *testing.T) {
	l := newLab(t, 4)
	p1, p2, p3, p4 := l.pods[0], l.pods[1], l.pods[2], l.pods[3]
	const group = 5
	logs, err := nflogtest.Listen(l.node.Fd(), group)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { logs.Close() })
	tb, err := New(Config{NetNSFd: l.node.Fd(), PodCIDRs: podCIDRs, LogGroup: group})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tb.Close() })

	setP1 := podSet("set-p1", p1)
	setClient := policy.AddrSet{Name: "set-client", Key: "client", Ranges: []policy.Range{{From: l.client.ip4, To: l.client.ip4}}}
	m := &policy.Model{Pods: []policy.Pod{modelPod(p1), modelPod(p2), modelPod(p3), modelPod(p4)}, AddrSets: []policy.AddrSet{setP1, setClient}}
	// p1 may not reach the client (admin); p2 takes p1 on port A only;
	// p3 sends nothing (the marker); p4 takes nothing and may not reach
	// the client (baseline).
	m.Pods[0].Egress.Admin = []policy.TierRule{{Policy: "block-client", Action: policy.Deny, Rule: policy.Rule{Peers: setClient.Name}}}
	m.Pods[1].Ingress = isolated("ns/web", policy.Rule{Peers: setP1.Name, Ports: []policy.PortRange{tcp(portA, portA)}})
	m.Pods[2].Egress = isolated("ns/marker")
	m.Pods[3].Ingress = isolated("ns/quiet")
	m.Pods[3].Egress.Baseline = []policy.TierRule{{Policy: "base-client", Action: policy.Deny, Rule: policy.Rule{Peers: setClient.Name}}}
	if _, err := tb.Sync(m); err != nil {
		t.Fatal(err)
	}

	a := func(p *pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.ip4, port) }
	a6 := func(p *pod, port uint16) netip.AddrPort { return netip.AddrPortFrom(p.ip6, port) }
	marker := nflogtest.Message{Prefix: "networkpolicy egress ns/marker", Src: p3.ip4, Dst: l.client.ip4, Protocol: unix.IPPROTO_UDP}
	// received returns the messages logged before the marker, which it
	// sends: the packets sent before it (and counted) are logged
	// before it.
	received := func(t *testing.T) []nflogtest.Message {
		t.Helper()
		sendUDP(t, p3.ns, a(l.client, portUDP), 1)
		var got []nflogtest.Message
		for {
			msg, err := logs.Next(5 * time.Second)
			if err != nil {
				t.Fatalf("after %v: %v", got, err)
			}
			if msg == marker {
				return got
			}
			got = append(got, msg)
		}
	}

	t.Run("denied packets logged with their deny chain, allowed ones not", func(t *testing.T) {
		check(t, []probe{
			{from: p1, to: a(p2, portA), allow: true}, {from: p1, to: a6(p2, portA), allow: true},
			{from: p2, to: a(l.client, portA), allow: true}, {from: p2, to: a(p1, portB), allow: true},
			{from: p1, to: a(p2, portB)}, {from: p4, to: a6(p2, portA)},
			{from: p1, to: a(l.client, portA)}, {from: p4, to: a(l.client, portUDP), udp: true},
		})
		want := []nflogtest.Message{
			{Prefix: "networkpolicy ingress ns/web", Src: p1.ip4, Dst: p2.ip4, Protocol: unix.IPPROTO_TCP},
			{Prefix: "networkpolicy ingress ns/web", Src: p4.ip6, Dst: p2.ip6, Protocol: unix.IPPROTO_TCP},
			{Prefix: "admin egress block-client", Src: p1.ip4, Dst: l.client.ip4, Protocol: unix.IPPROTO_TCP},
			{Prefix: "baseline egress base-client", Src: p4.ip4, Dst: l.client.ip4, Protocol: unix.IPPROTO_UDP},
		}
		got := received(t)
		for _, w := range want {
			if !slices.Contains(got, w) {
				t.Errorf("no message %v in %v", w, got)
			}
		}
		for _, g := range got {
			if !slices.Contains(want, g) {
				t.Errorf("unexpected message %v", g)
			}
		}
	})

	t.Run("a burst is logged at the rate limit", func(t *testing.T) {
		const n = 50
		start := time.Now()
		sendUDP(t, p1.ns, a(p4, portUDP), n)
		elapsed := time.Since(start)
		quiet := Denied{Tier: TierNetworkPolicy, Direction: "ingress", Policy: "ns/quiet"}
		poll.Until(t, 5*time.Second, fmt.Sprintf("%d packets denied under %+v", n, quiet), func() bool {
			got, err := tb.Denied()
			if err != nil {
				t.Fatal(err)
			}
			i := slices.IndexFunc(got, func(d Denied) bool {
				return d.Tier == quiet.Tier && d.Direction == quiet.Direction && d.Policy == quiet.Policy
			})
			return i >= 0 && got[i].Packets >= n
		})
		logged := 0
		for _, msg := range received(t) {
			if msg != (nflogtest.Message{Prefix: "networkpolicy ingress ns/quiet", Src: p1.ip4, Dst: p4.ip4, Protocol: unix.IPPROTO_UDP}) {
				t.Errorf("unexpected message %v", msg)
				continue
			}
			logged++
		}
		// The chain's bucket starts full (logBurst packets) and refills
		// at logRate a second.
		most := logBurst + int(logRate*elapsed.Seconds()) + 1
		t.Logf("%d packets in %v: %d logged", n, elapsed, logged)
		if logged < logBurst || logged > most {
			t.Errorf("%d packets in %v: %d logged, want %d to %d", n, elapsed, logged, logBurst, most)
		}
	})
}

// sendUDP sends n datagrams from ns to addr, waiting for no answer.
func sendUDP(t *testing.T, ns *netns.Temp, addr netip.AddrPort, n int) {
	t.Helper()
	c, err := ns.DialContext(context.Background(), nil, "udp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for i := range n {
		if _, err := c.Write([]byte("?")); err != nil {
			t.Fatalf("datagram %d to %v: %v", i, addr, err)
		}
	}
}
