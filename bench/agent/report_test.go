package main

import "testing"

func TestParseHistogram(t *testing.T) {
	text := []byte(`# HELP podnet_agent_reconcile_seconds x
# TYPE podnet_agent_reconcile_seconds histogram
podnet_agent_reconcile_seconds_bucket{le="0.001"} 1
podnet_agent_reconcile_seconds_bucket{le="0.002"} 3
podnet_agent_reconcile_seconds_bucket{le="0.004"} 4
podnet_agent_reconcile_seconds_bucket{le="+Inf"} 4
podnet_agent_reconcile_seconds_sum 0.008
podnet_agent_reconcile_seconds_count 4
podnet_agent_reconcile_errors_total 0
`)
	h, err := parseHistogram(text, "podnet_agent_reconcile_seconds")
	if err != nil {
		t.Fatal(err)
	}
	var all histogram
	all.merge(h)
	all.merge(h)
	all.summary()
	if all.Count != 8 || all.MeanMs != 2 || all.P50Ms != 2 || all.P99Ms != 4 {
		t.Errorf("got count %v mean %v p50 %v p99 %v", all.Count, all.MeanMs, all.P50Ms, all.P99Ms)
	}
	if _, err := parseHistogram([]byte("other 1\n"), "podnet_agent_reconcile_seconds"); err == nil {
		t.Error("a missing histogram is no error")
	}
}
