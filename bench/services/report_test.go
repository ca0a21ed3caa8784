package main

import (
	"encoding/json"
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

// TestRenderRoundTrip: the report rendered from the JSON figures (-render)
// is the one the run wrote: nothing the report reads is left out of the
// JSON.
func TestRenderRoundTrip(t *testing.T) {
	ms := func(n int) []time.Duration {
		var out []time.Duration
		for i := range n {
			out = append(out, time.Duration(i+1)*time.Millisecond)
		}
		return out
	}
	res := &result{Scales: []int{10, 10000}, Measured: []int{10, 10000}, Trials: 3, Connects: 4, Gap: time.Second,
		Created: []created{{Services: 10, Added: 10, Took: time.Second}}}
	for _, n := range res.Scales {
		r := &proxyRun{Proxy: proxyPodnet, Services: n, Cold: time.Second, ColdSyncs: 1, ColdSyncTime: time.Second / 2,
			Add: ms(3), Endpoint: ms(3), UpdatesCPU: time.Millisecond, UpdatesWall: 6 * time.Second,
			Connect: ms(4), ConnectDirect: ms(4)[1:],
			Traffic: &traffic{ClusterIPGbps: []float64{9}, DirectGbps: []float64{10}, RRClusterIP: ms(2), RRDirect: ms(3)}}
		r.finish()
		res.Runs = append(res.Runs, r)
	}
	want := markdown(res)
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var back result
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if got := markdown(&back); got != want {
		t.Errorf("rendered from JSON:\n%s\nwant:\n%s", got, want)
	}
}
