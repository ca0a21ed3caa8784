package main

import (
	"strings"
	"testing"
	"time"
)

// A pod's start in containerd 1.6's log, as a node writes it (other
// lines between).
const startLog = `time="2026-12-02T23:41:07.000000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p1,Uid:e8bc581b-7393-4140-9ef0-fd88f896e5a9,Namespace:default,Attempt:0,}"
time="2026-12-02T23:41:07.100000000Z" level=info msg="loading plugin \"io.containerd.event.v1.publisher\"..." type=io.containerd.event.v1
time="2026-12-02T23:41:09.000000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p1,Uid:e8bc581b-7393-4140-9ef0-fd88f896e5a9,Namespace:default,Attempt:0,} returns sandbox id \"4e7c\""
time="2026-12-02T23:41:09.010000000Z" level=info msg="CreateContainer within sandbox \"4e7c\" for container &ContainerMetadata{Name:sleep,Attempt:0,}"
time="2026-12-02T23:41:09.250000000Z" level=info msg="CreateContainer within sandbox \"4e7c\" for &ContainerMetadata{Name:sleep,Attempt:0,} returns container id \"1e08\""
time="2026-12-02T23:41:09.260000000Z" level=info msg="StartContainer for \"1e08\""
time="2026-12-02T23:41:11.000000000Z" level=info msg="StartContainer for \"1e08\" returns successfully"
time="2026-12-02T23:41:12.000000000Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:p2,Uid:00000000-7393-4140-9ef0-fd88f896e5a9,Namespace:default,Attempt:0,}"
time="2026-12-02T23:41:12.500000000Z" level=error msg="RunPodSandbox for &PodSandboxMetadata{Name:p2,Uid:00000000-7393-4140-9ef0-fd88f896e5a9,Namespace:default,Attempt:0,} failed, error" error="failed to setup network"
`

func at(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, "2026-12-02T23:41:"+s+"Z")
	if err != nil {
		panic(err)
	}
	return t
}

func TestParseContainerdLog(t *testing.T) {
	pods, err := parseContainerdLog(strings.NewReader(startLog))
	if err != nil {
		t.Fatal(err)
	}
	p1 := pods["p1"]
	if p1 == nil {
		t.Fatalf("p1 not found in %v", pods)
	}
	for _, tc := range []struct {
		what      string
		got, want time.Time
	}{
		{"sandbox called", p1.sandboxCalled, at("07")},
		{"sandbox done", p1.sandboxDone, at("09")},
		{"create called", p1.createCalled, at("09.01")},
		{"create done", p1.createDone, at("09.25")},
		{"start called", p1.startCalled, at("09.26")},
		{"start done", p1.startDone, at("11")},
	} {
		if !tc.got.Equal(tc.want) {
			t.Errorf("%s: %s, want %s", tc.what, tc.got, tc.want)
		}
	}
	if p1.sandboxID != "4e7c" || p1.containerID != "1e08" {
		t.Errorf("ids %q %q, want 4e7c 1e08", p1.sandboxID, p1.containerID)
	}
	// p2's sandbox failed: it has no moments beyond the call.
	if p2 := pods["p2"]; p2 == nil || !p2.sandboxDone.IsZero() || p2.moments(&podTimes{Created: at("06"), Running: at("13")}) != nil {
		t.Errorf("p2: %+v", p2)
	}
}

func TestPhasesOf(t *testing.T) {
	events, err := parseContainerdLog(strings.NewReader(startLog))
	if err != nil {
		t.Fatal(err)
	}
	pods := []*podTimes{
		{Name: "p1", Created: at("06.5"), Running: at("11.8")},
		{Name: "p2", Created: at("11"), Running: at("14")}, // failed sandbox: left out
		{Name: "p3", Created: at("11"), Running: at("14")}, // not in the log: left out
	}
	want := []time.Duration{
		500 * time.Millisecond,  // created → sandbox called
		2 * time.Second,         // RunPodSandbox
		10 * time.Millisecond,   // → CreateContainer
		240 * time.Millisecond,  // CreateContainer
		1750 * time.Millisecond, // StartContainer (from CreateContainer's return)
		800 * time.Millisecond,  // → Running
		5300 * time.Millisecond, // total
	}
	if x := exampleOf(pods, events); x == nil || x.Pod != "p1" || x.total() != 5300*time.Millisecond || len(x.Offsets) != len(momentNames) {
		t.Errorf("example %+v, want p1 over %d moments, 5.3 s", x, len(momentNames))
	}
	got := phasesOf(pods, events)
	if len(got) != len(want) {
		t.Fatalf("%d phases, want %d", len(got), len(want))
	}
	for i, w := range want {
		if got[i].P50 != w || got[i].Pods != 1 {
			t.Errorf("phase %q: %s over %d pods, want %s over 1", got[i].What, got[i].P50, got[i].Pods, w)
		}
	}
}

func TestDiffAndMean(t *testing.T) {
	before := map[string]histo{"a": {Count: 2, Sum: 1}, "b": {Count: 1, Sum: 0.5}}
	after := map[string]histo{"a": {Count: 6, Sum: 3}, "b": {Count: 1, Sum: 0.5}}
	d := diff(before, after)
	for _, tc := range []struct {
		id   string
		mean time.Duration
	}{{"a", 500 * time.Millisecond}, {"b", 0}} {
		if m := d[tc.id].mean(); m != tc.mean {
			t.Errorf("%s: mean %s, want %s", tc.id, m, tc.mean)
		}
	}
}

func TestMetricSum(t *testing.T) {
	text := []byte(`# TYPE containerd_cri_network_plugin_operations_duration_seconds_seconds histogram
containerd_cri_network_plugin_operations_duration_seconds_seconds_bucket{operation_type="set_up_pod",le="+Inf"} 3
containerd_cri_network_plugin_operations_duration_seconds_seconds_sum{operation_type="set_up_pod"} 0.6
containerd_cri_network_plugin_operations_duration_seconds_seconds_count{operation_type="set_up_pod"} 3
containerd_cri_network_plugin_operations_duration_seconds_seconds_bucket{operation_type="tear_down_pod",le="+Inf"} 1
containerd_cri_network_plugin_operations_duration_seconds_seconds_sum{operation_type="tear_down_pod"} 0.1
containerd_cri_network_plugin_operations_duration_seconds_seconds_count{operation_type="tear_down_pod"} 1
`)
	fams, err := parseMetrics(text)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		id   string
		want histo
	}{
		{"containerd.cni_add", histo{Count: 3, Sum: 0.6}},
		{"containerd.cni_del", histo{Count: 1, Sum: 0.1}},
		{"containerd.sandbox_network", histo{}},
	} {
		for _, m := range metrics {
			if m.ID == tc.id {
				if got := m.sum(fams); got != tc.want {
					t.Errorf("%s: %+v, want %+v", tc.id, got, tc.want)
				}
			}
		}
	}
}
