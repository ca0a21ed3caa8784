package main

import (
	"strings"
	"testing"
	"time"
)

func TestRatio(t *testing.T) {
	for _, tc := range []struct {
		a, b time.Duration
		want string
	}{
		{2 * time.Second, 4 * time.Second, "×0.50"},
		{3 * time.Second, 2 * time.Second, "×1.50"},
		{time.Second, 0, "-"},
	} {
		if got := ratio(tc.a, tc.b); got != tc.want {
			t.Errorf("ratio(%s, %s) = %s, want %s", tc.a, tc.b, got, tc.want)
		}
	}
}

// sideOf is a side of one round whose pods start in the given times
// (and are deleted in a tenth of them), each phase a share of it.
func sideOf(name string, starts ...time.Duration) *side {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := &round{Deployment: "podstart-" + name + "-1", Created: t0, DeleteCalled: t0.Add(time.Minute)}
	var maxStart time.Duration
	for i, d := range starts {
		r.Pods = append(r.Pods, &podTimes{Name: string(rune('a' + i)), Created: t0, Running: t0.Add(d),
			Deleting: r.DeleteCalled, Gone: r.DeleteCalled.Add(d / 10)})
		maxStart = max(maxStart, d)
	}
	r.AllRunning, r.AllGone = t0.Add(maxStart), r.DeleteCalled.Add(maxStart/10)
	s := &side{Name: name, Node: "n", Rounds: []*round{r}, Metrics: map[string]histo{
		"containerd.cni_add":         {Count: 1, Sum: 0.1},
		"containerd.sandbox_runtime": {Count: 1, Sum: 1},
	}}
	for i := range phaseNames {
		s.Phases = append(s.Phases, phase{What: phaseNames[i], P50: time.Duration(i+1) * 100 * time.Millisecond, Pods: len(starts)})
	}
	s.Phases = append(s.Phases, phase{What: "total", P50: 2100 * time.Millisecond, Pods: len(starts)})
	return s
}

func TestReport(t *testing.T) {
	r := &result{Pods: 3, Rounds: 1, Sides: []*side{
		sideOf(podnetSide, 1*time.Second, 2*time.Second, 3*time.Second),
		sideOf(referenceSide, 2*time.Second, 4*time.Second, 6*time.Second),
	}}
	head, rows := table(r)
	if len(head) != 4 {
		t.Fatalf("head %v", head)
	}
	want := map[string][]string{
		"create → Running per pod, median":                    {"2.00 s", "4.00 s", "×0.50"},
		"Deployment created → all pods Running, median round": {"3.00 s", "6.00 s", "×0.50"},
		"deletion → pod gone per pod, median":                 {"0.20 s", "0.40 s", "×0.50"},
	}
	for _, row := range rows {
		if w, ok := want[row[0]]; ok {
			if strings.Join(row[1:], " ") != strings.Join(w, " ") {
				t.Errorf("%s: %v, want %v", row[0], row[1:], w)
			}
			delete(want, row[0])
		}
	}
	if len(want) > 0 {
		t.Errorf("rows missing: %v", want)
	}
	text := report(r)
	md := markdown(r, text)
	for _, w := range []string{"## Pod start on Kubernetes", "| what | podnet (n) | reference (n) | ratio |", "CNI ADD 100 ms on average (10 % of the sandbox's mean 1.00 s)"} {
		if !strings.Contains(md, w) {
			t.Errorf("markdown lacks %q:\n%s", w, md)
		}
	}
}
