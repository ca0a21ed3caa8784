package main

import (
	"bufio"
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
)

// histogram is a Prometheus histogram: cumulative bucket counts by upper
// bound (seconds), the sum and the count.
type histogram struct {
	Buckets map[float64]float64 `json:"-"`
	Sum     float64             `json:"sumSeconds"`
	Count   float64             `json:"count"`
	// Filled by summary.
	MeanMs float64 `json:"meanMs"`
	P50Ms  float64 `json:"p50UpperBoundMs"`
	P99Ms  float64 `json:"p99UpperBoundMs"`
}

// parseHistogram reads the named histogram from Prometheus text output.
func parseHistogram(text []byte, name string) (histogram, error) {
	h := histogram{Buckets: map[float64]float64{}}
	found := false
	sc := bufio.NewScanner(bytes.NewReader(text))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		v, err := strconv.ParseFloat(fields[len(fields)-1], 64)
		if err != nil {
			continue
		}
		key := strings.Join(fields[:len(fields)-1], " ")
		switch {
		case strings.HasPrefix(key, name+"_bucket{"):
			_, le, ok := strings.Cut(key, `le="`)
			if !ok {
				continue
			}
			le, _, _ = strings.Cut(le, `"`)
			bound, err := strconv.ParseFloat(le, 64) // "+Inf" parses as +Inf
			if err != nil {
				return h, fmt.Errorf("%s bucket %q: %w", name, le, err)
			}
			h.Buckets[bound] = v
			found = true
		case key == name+"_sum":
			h.Sum = v
		case key == name+"_count":
			h.Count = v
		}
	}
	if !found {
		return h, fmt.Errorf("no histogram %s", name)
	}
	return h, sc.Err()
}

// merge adds o's observations to h (same buckets: the same agent build).
func (h *histogram) merge(o histogram) {
	if h.Buckets == nil {
		h.Buckets = map[float64]float64{}
	}
	for b, c := range o.Buckets {
		h.Buckets[b] += c
	}
	h.Sum += o.Sum
	h.Count += o.Count
}

// quantile is the upper bound of the bucket holding the q-quantile.
func (h histogram) quantile(q float64) float64 {
	bounds := make([]float64, 0, len(h.Buckets))
	for b := range h.Buckets {
		bounds = append(bounds, b)
	}
	sort.Float64s(bounds)
	for _, b := range bounds {
		if h.Buckets[b] >= q*h.Count {
			return b
		}
	}
	return math.Inf(1)
}

func (h *histogram) summary() {
	if h.Count == 0 {
		return
	}
	h.MeanMs = 1000 * h.Sum / h.Count
	h.P50Ms = 1000 * h.quantile(.5)
	h.P99Ms = 1000 * h.quantile(.99)
}

func joinStats(js []join, how string) (n int, med, max time.Duration) {
	var ds []time.Duration
	for _, j := range js {
		if how == "" || j.Started == how {
			ds = append(ds, j.Time)
		}
	}
	if len(ds) == 0 {
		return 0, 0, 0
	}
	return len(ds), benchdoc.Percentile(ds, .5), benchdoc.Percentile(ds, 1)
}

func memStats(ms []memory) (embedded, othersMax, othersMed int) {
	var others []float64
	for _, m := range ms {
		if m.Embedded {
			embedded = m.RSSKiB
			continue
		}
		others = append(others, float64(m.RSSKiB))
		othersMax = max(othersMax, m.RSSKiB)
	}
	return embedded, othersMax, int(benchdoc.Median(others))
}

func mb(kib int) string { return fmt.Sprintf("%.1f MB", float64(kib)/1024) }

func msd(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

// lines are the report's figures with their bars, shared by the text and
// Markdown forms: what, figure, bar, verdict.
func lines(r *result) [][4]string {
	var out [][4]string
	for _, how := range []string{"up", "added"} {
		n, med, max := joinStats(r.Joins, how)
		if n == 0 {
			continue
		}
		what := fmt.Sprintf("node join → routes on every other node, %d nodes started together", n)
		if how == "added" {
			what = fmt.Sprintf("node join → routes on every other node, %d nodes added one by one to the running lab", n)
		}
		out = append(out, [4]string{what, "median " + msd(med) + ", max " + msd(max), "< 1 s", benchdoc.Verdict(max < joinBar)})
	}
	r.Reconcile.summary()
	out = append(out, [4]string{
		fmt.Sprintf("reconcile time, all agents (%d reconciles)", int(r.Reconcile.Count)),
		fmt.Sprintf("mean %.1f ms, p50 ≤ %.1f ms, p99 ≤ %.1f ms", r.Reconcile.MeanMs, r.Reconcile.P50Ms, r.Reconcile.P99Ms), "-", "-"})
	for _, m := range []struct {
		when string
		ms   []memory
	}{{"at lab up", r.MemoryUp}, {"after the additions", r.MemoryEnd}} {
		emb, omax, omed := memStats(m.ms)
		out = append(out,
			[4]string{fmt.Sprintf("agent RSS, n1 (embeds etcd), %d-node lab %s", len(m.ms), m.when), mb(emb), "< 50 MB", benchdoc.Verdict(emb < rssBar)},
			[4]string{fmt.Sprintf("agent RSS, the other %d agents, %s", len(m.ms)-1, m.when), "median " + mb(omed) + ", max " + mb(omax), "< 50 MB", benchdoc.Verdict(omax < rssBar)})
	}
	return out
}

// report is the plain-text report.
func report(r *result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "podnet-agent on a lab: backend %s, one segment, %d pod(s) per node; lab up in %s, run took %s\n", r.Backend, r.Pods, r.UpTook, r.Took)
	fmt.Fprintf(&b, "machine: %s\n\n", r.Machine)
	ls := lines(r)
	for _, l := range ls {
		fmt.Fprintf(&b, "%-82s %-42s %-8s %s\n", l[0], l[1], l[2], l[3])
	}
	b.WriteString("\njoin times (from the node's lease to its routes on the last other node, agents' clocks):\n")
	for _, j := range r.Joins {
		fmt.Fprintf(&b, "  %-4s %-6s lab of %2d nodes: %s\n", j.Node, j.Started, j.Nodes, msd(j.Time))
	}
	b.WriteString("agent RSS per node (lab up → after the additions):\n")
	end := map[string]int{}
	for _, m := range r.MemoryEnd {
		end[m.Node] = m.RSSKiB
	}
	for _, m := range r.MemoryUp {
		fmt.Fprintf(&b, "  %-4s %s → %s\n", m.Node, mb(m.RSSKiB), mb(end[m.Node]))
	}
	return b.String()
}

// markdown is the section of docs/performance.md.
func markdown(r *result, text string) string {
	var b strings.Builder
	b.WriteString("## Agent\n\n")
	fmt.Fprintf(&b, "Generated by `make bench-agent` (`go run ./bench/agent -nodes %d -add %d`) on %s.\n\n",
		len(r.MemoryUp), len(r.MemoryEnd)-len(r.MemoryUp), r.Machine.Date.Format("2006-01-02 15:04 MST"))
	b.WriteString("Machine: " + r.Machine.String() + ".\n\n")
	b.WriteString("A lab (`internal/lab`) of nodes made of network namespaces on one segment, each running the\n")
	b.WriteString("real `podnet-agent` (n1 embeds etcd, the others join it), pods attached through CNI. A join\n")
	b.WriteString("time runs from the node's lease to its routes being in place on the last other node, from the\n")
	b.WriteString("agents' own `/status`; nodes are first started together, then added one by one to the running\n")
	b.WriteString("lab. Reconcile times are every agent's `podnet_agent_reconcile_seconds` histogram (`/metrics`)\n")
	b.WriteString("merged (quantiles are bucket upper bounds). Memory is each agent's VmRSS.\n\n")
	b.WriteString("| what | figure | bar | verdict |\n|---|---|---|---|\n")
	for _, l := range lines(r) {
		v := l[3]
		if v != "-" {
			v = "**" + v + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", l[0], l[1], l[2], v)
	}
	b.WriteString("\nThe run's full output:\n\n```\n" + text + "```\n")
	return b.String()
}
