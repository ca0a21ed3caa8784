package e2e

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/lab"
)

// metricOf reads one unlabelled sample from an agent's /metrics.
func metricOf(t *testing.T, l *lab.Lab, n *lab.Node, name string) float64 {
	t.Helper()
	code, body, err := l.AgentGet(ctxFor(t), n, "/metrics")
	if err != nil || code != 200 {
		t.Fatalf("%s /metrics: %d %v", n.Name, code, err)
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("%s %s: %v", n.Name, name, err)
			}
			return f
		}
	}
	t.Fatalf("%s /metrics lacks %s", n.Name, name)
	return 0
}

// TestDatastoreOutage stops the agent that embeds the datastore for twice
// the lease TTL. The other agents say so (not ready, a log line, a count),
// keep their routes, and once the datastore is back renew their leases in
// time: no node loses its lease, so no peer drops a live node's routes.
func TestDatastoreOutage(t *testing.T) {
	const ttl = 5 * time.Second
	l := newLab(t, lab.Spec{Nodes: 3, PodsPerNode: 1, LeaseTTL: ttl})
	ctx := ctxFor(t)
	holder, others := l.Nodes[0], l.Nodes[1:]
	if err := l.KillNode(holder.Name); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	for _, n := range others {
		waitFor(t, 3*ttl, func() bool {
			code, body, err := l.AgentGet(ctx, n, "/readyz")
			return err == nil && code == 503 && bytes.Contains(body, []byte("membership: etcd has not renewed"))
		}, "%s stayed ready without its datastore", n.Name)
	}
	if wait := 2*ttl - time.Since(down); wait > 0 {
		time.Sleep(wait) // the outage must outlast the TTL
	}
	if err := l.RestartNode(ctx, holder.Name); err != nil {
		t.Fatal(err)
	}
	for _, n := range others {
		waitFor(t, 2*ttl, func() bool {
			code, _, err := l.AgentGet(ctx, n, "/readyz")
			return err == nil && code == 200
		}, "%s not ready again within %s of the datastore's return", n.Name, 2*ttl)
		if got := metricOf(t, l, n, "podnet_agent_lease_reacquisitions_total"); got != 0 {
			t.Errorf("%s lost its lease during the outage (%v re-acquisitions)", n.Name, got)
		}
		if got := metricOf(t, l, n, "podnet_agent_membership_lost_total"); got != 1 {
			t.Errorf("%s counted %v losses of its membership, want 1", n.Name, got)
		}
	}
	checkAll(t, l)
}
