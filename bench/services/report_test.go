package main

import (
	"strings"
	"testing"
	"time"
)

// TestTableColdTimedOut: a proxy that did not program every Service in
// time gets its bound in the cold start row and "–" elsewhere, beside
// the figures of the proxies that did, traffic rows included.
func TestTableColdTimedOut(t *testing.T) {
	res := &result{Runs: []*proxyRun{
		{Proxy: proxyPodnet, Services: 10000, Cold: 2 * time.Second, ColdSyncs: 1,
			Add: []time.Duration{time.Millisecond}, Endpoint: []time.Duration{time.Millisecond}, UpdatesWall: time.Second,
			Traffic: &traffic{ClusterIPGbps: []float64{9}, DirectGbps: []float64{10}}},
		{Proxy: proxyIPTables, Services: 10000, Cold: 10 * time.Minute, ColdTimedOut: true},
	}}
	head, rows := res.table(10000)
	if len(head) != 3 {
		t.Fatalf("head %q, want a column per proxy", head)
	}
	var traffic bool
	for _, row := range rows {
		if len(row) != 3 {
			t.Fatalf("row %q: %d cells, want 3", row, len(row))
		}
		switch {
		case strings.HasPrefix(row[0], "cold start: process started"):
			if row[1] != "2000.0 ms" || !strings.Contains(row[2], "not done after 10m0s") {
				t.Errorf("cold start row %q", row)
			}
		case row[2] != "–":
			t.Errorf("row %q: the timed-out proxy's cell is not –", row)
		}
		traffic = traffic || strings.HasPrefix(row[0], "TCP stream via ClusterIP")
	}
	if !traffic {
		t.Error("no throughput row though podnet measured it")
	}
	if s := res.Runs[1].summary(); !strings.Contains(s, "cold > 10m0s") {
		t.Errorf("summary %q", s)
	}
}
