package e2e

import (
	"bytes"
	"context"
	"net"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/lab"
)

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// checkAll runs the connectivity matrix and fails on any failed probe.
func checkAll(t *testing.T, l *lab.Lab) {
	t.Helper()
	r, err := l.Check(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	r.Print(&out)
	t.Log("\n" + out.String())
	if n := r.Failures(); n > 0 {
		t.Fatalf("%d probes failed", n)
	}
	if len(r.Probes) == 0 {
		t.Fatal("the check ran no probe")
	}
}

// wantBackends checks the backend each node uses to each peer: host-gw
// within a segment, VXLAN across (the auto rule).
func wantBackends(t *testing.T, l *lab.Lab, auto bool, mode cluster.Backend) {
	t.Helper()
	seg := map[string]int{}
	for _, n := range l.Nodes {
		seg[n.Name] = n.Segment
	}
	for _, n := range l.Nodes {
		st, err := l.AgentStatus(ctxFor(t), n)
		if err != nil {
			t.Fatal(err)
		}
		if len(st.Backends) != len(l.Nodes)-1 {
			t.Errorf("%s reaches %d peers, want %d: %v", n.Name, len(st.Backends), len(l.Nodes)-1, st.Backends)
		}
		for peer, m := range st.Backends {
			want := mode
			if auto {
				want = cluster.VXLAN
				if seg[peer] == n.Segment {
					want = cluster.HostGW
				}
			}
			if m != want {
				t.Errorf("%s reaches %s over %s, want %s", n.Name, peer, m, want)
			}
		}
	}
}

func TestThreeNodesOneSegment(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 2})
	wantBackends(t, l, true, "")
	checkAll(t, l)
	// Operations: health, readiness and metrics of every agent.
	for _, n := range l.Nodes {
		for _, path := range []string{"/healthz", "/readyz"} {
			if code, body, err := l.AgentGet(ctxFor(t), n, path); err != nil || code != 200 {
				t.Errorf("%s %s: %d %s %v", n.Name, path, code, body, err)
			}
		}
		code, body, err := l.AgentGet(ctxFor(t), n, "/metrics")
		if err != nil || code != 200 {
			t.Fatalf("%s /metrics: %d %v", n.Name, code, err)
		}
		for _, want := range []string{
			"podnet_agent_peers 2", "podnet_agent_ready 1", `podnet_agent_peer_routes{backend="host-gw"} 2`,
			"podnet_agent_reconcile_seconds_count", "podnet_agent_lease_renewals_total", "podnet_agent_reconcile_errors_total 0",
			"process_resident_memory_bytes",
		} {
			if !bytes.Contains(body, []byte(want)) {
				t.Errorf("%s /metrics lacks %q", n.Name, want)
			}
		}
	}
}

func TestTwoSegmentsAuto(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 4, PodsPerNode: 1, Segments: 2})
	wantBackends(t, l, true, "")
	checkAll(t, l)
}

func TestVXLANEverywhere(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, Backend: cluster.VXLAN})
	wantBackends(t, l, false, cluster.VXLAN)
	checkAll(t, l)
}

func TestDualStack(t *testing.T) {
	for _, segs := range []int{1, 2} {
		t.Run(map[int]string{1: "one segment", 2: "two segments"}[segs], func(t *testing.T) {
			l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, Segments: segs, IPv6: true})
			for _, p := range l.Pods {
				if len(p.IPs) != 2 {
					t.Fatalf("pod %s has addresses %v, want one IPv4 and one IPv6", p.Name, p.IPs)
				}
			}
			checkAll(t, l)
		})
	}
}

func TestTenNodes(t *testing.T) {
	if testing.Short() {
		t.Skip("10-node lab in -short mode")
	}
	l := newLab(t, lab.Spec{Nodes: 10, PodsPerNode: 1, Segments: 2})
	wantBackends(t, l, true, "")
	checkAll(t, l)
	var out bytes.Buffer
	l.PrintStatus(ctxFor(t), &out)
	t.Log("\n" + out.String())
}

// TestNodeLeaves deletes a node: every other node drops its routes, the
// rest of the cluster keeps working.
func TestNodeLeaves(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, Segments: 2})
	ctx := ctxFor(t)
	gone := l.Nodes[2]
	st, err := l.AgentStatus(ctx, gone)
	if err != nil {
		t.Fatal(err)
	}
	subnet := st.Node.Subnet
	for _, n := range l.Nodes[:2] {
		if r, err := l.RoutesTo(n.Name, subnet); err != nil || len(r) == 0 {
			t.Fatalf("%s has no route to %s before the node leaves (%v)", n.Name, subnet, err)
		}
	}
	if err := l.DelNode(ctx, gone.Name); err != nil {
		t.Fatal(err)
	}
	for _, n := range l.Nodes {
		waitFor(t, 10*time.Second, func() bool {
			r, err := l.RoutesTo(n.Name, subnet)
			return err == nil && len(r) == 0
		}, "%s still routes to %s of the deleted node", n.Name, subnet)
	}
	checkAll(t, l)
}

// TestDeadNodeReclaimed kills a node's agent for good: after the grace
// period the others drop its routes.
func TestDeadNodeReclaimed(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, LeaseTTL: 5 * time.Second})
	ctx := ctxFor(t)
	dead := l.Nodes[2]
	st, err := l.AgentStatus(ctx, dead)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.KillNode(dead.Name); err != nil {
		t.Fatal(err)
	}
	// CNI needs no agent: the dead node's pods are still deleted, and a
	// new one attached.
	for _, p := range l.Pods {
		if p.Node == dead.Name {
			if err := l.DelPod(ctx, p.Name); err != nil {
				t.Fatalf("DEL with the agent down: %v", err)
			}
			break
		}
	}
	if _, err := l.AddPod(ctx, dead.Name); err != nil {
		t.Fatalf("ADD with the agent down: %v", err)
	}
	for _, n := range l.Nodes[:2] {
		waitFor(t, 30*time.Second, func() bool {
			r, err := l.RoutesTo(n.Name, st.Node.Subnet)
			return err == nil && len(r) == 0
		}, "%s still routes to %s of the dead node", n.Name, st.Node.Subnet)
	}
}

// TestAgentKilledAndRestarted kills an agent with SIGKILL while pods ping
// across nodes: no packet is lost, and the restarted agent keeps its
// subnet.
func TestAgentKilledAndRestarted(t *testing.T) {
	for _, backend := range []cluster.Backend{cluster.HostGW, cluster.VXLAN} {
		t.Run(string(backend), func(t *testing.T) {
			l := newLab(t, lab.Spec{Nodes: 2, PodsPerNode: 1, Backend: backend})
			ctx := ctxFor(t)
			victim := l.Nodes[1]
			before, err := l.AgentStatus(ctx, victim)
			if err != nil {
				t.Fatal(err)
			}
			from, to := l.Pods[0], l.Pods[1]
			dst := net.ParseIP(to.IPs[0])
			stop := make(chan struct{})
			type tally struct{ sent, lost int }
			done := make(chan tally)
			go func() {
				var c tally
				for {
					select {
					case <-stop:
						done <- c
						return
					default:
					}
					c.sent++
					if err := l.Ping(from.Name, dst, time.Second); err != nil {
						c.lost++
						t.Logf("ping %d lost: %v", c.sent, err)
					}
					time.Sleep(10 * time.Millisecond)
				}
			}()
			time.Sleep(300 * time.Millisecond)
			if err := l.KillNode(victim.Name); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			if err := l.RestartNode(ctx, victim.Name); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			close(stop)
			c := <-done
			t.Logf("%d pings during kill -9 and restart, %d lost", c.sent, c.lost)
			if c.lost > 0 || c.sent < 20 {
				t.Errorf("%d of %d pings lost", c.lost, c.sent)
			}
			after, err := l.AgentStatus(ctx, victim)
			if err != nil {
				t.Fatal(err)
			}
			if after.Node.Subnet.String() != before.Node.Subnet.String() {
				t.Errorf("restarted agent leased %s, had %s", after.Node.Subnet, before.Node.Subnet)
			}
			checkAll(t, l)
		})
	}
}

// TestNodeJoin adds a node to a running lab and reports how long until
// every node routes to it (a figure, not an assertion: see the bench).
func TestNodeJoin(t *testing.T) {
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, Segments: 2})
	n, join, err := l.AddNode(ctxFor(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("node %s joined; routes on every other node %s after its lease", n.Name, join)
	wantBackends(t, l, true, "")
	checkAll(t, l)
}

func waitFor(t *testing.T, timeout time.Duration, ok func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf(format, args...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
