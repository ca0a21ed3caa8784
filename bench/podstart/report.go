package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/internal/kube"
)

type result struct {
	Machine benchdoc.Machine `json:"machine"`
	Pods    int              `json:"podsPerRound"`
	Warmup  int              `json:"warmupPods"`
	Rounds  int              `json:"roundsPerSide"`
	// Together tells that each round ran its sides at once.
	Together bool          `json:"together"`
	Sides    []*side       `json:"sides"`
	UpTook   time.Duration `json:"labUpTook"`
	Took     time.Duration `json:"took"`
}

// order is how the rounds ran.
func (r *result) order() string {
	if r.Together {
		return "together, both sides' Deployments created at once"
	}
	return "alternating between the sides"
}

// figure is one compared figure: its name and its value on each side.
type figure struct {
	What  string
	Sides []time.Duration
}

// figures are the compared figures of the sides, over all their rounds.
func figures(sides []*side) []figure {
	defs := []struct {
		what string
		of   func(*side) time.Duration
	}{
		{"create → Running per pod, median", func(s *side) time.Duration { return benchdoc.Percentile(s.startTimes(), .5) }},
		{"create → Running per pod, p90", func(s *side) time.Duration { return benchdoc.Percentile(s.startTimes(), .9) }},
		{"Deployment created → all pods Running, median round", func(s *side) time.Duration {
			return s.medianRound(func(r *round) time.Duration { return r.AllRunning.Sub(r.Created) })
		}},
		{"deletion → pod gone per pod, median", func(s *side) time.Duration { return benchdoc.Percentile(s.deleteTimes(), .5) }},
		{"Deployment deleted → all pods gone, median round", func(s *side) time.Duration {
			return s.medianRound(func(r *round) time.Duration { return r.AllGone.Sub(r.DeleteCalled) })
		}},
	}
	var out []figure
	for _, d := range defs {
		f := figure{What: d.what}
		for _, s := range sides {
			f.Sides = append(f.Sides, d.of(s))
		}
		out = append(out, f)
	}
	return out
}

func (s *side) startTimes() []time.Duration {
	var ds []time.Duration
	for _, r := range s.Rounds {
		ds = append(ds, r.startTimes()...)
	}
	return ds
}

func (s *side) deleteTimes() []time.Duration {
	var ds []time.Duration
	for _, r := range s.Rounds {
		ds = append(ds, r.deleteTimes()...)
	}
	return ds
}

func (s *side) medianRound(of func(*round) time.Duration) time.Duration {
	var ds []time.Duration
	for _, r := range s.Rounds {
		ds = append(ds, of(r))
	}
	return benchdoc.Percentile(ds, .5)
}

// ratio is a/b as "×0.95", or "-".
func ratio(a, b time.Duration) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("×%.2f", float64(a)/float64(b))
}

// table is rows of cells: the figures (podnet, reference, ratio), the
// phases of a pod's start (medians) and the nodes' metrics (means).
func table(r *result) (head []string, rows [][]string) {
	head = []string{"what"}
	for _, s := range r.Sides {
		head = append(head, s.Name+" ("+s.Node+")")
	}
	head = append(head, "ratio")
	row := func(what string, a, b time.Duration, cell func(time.Duration) string) {
		rows = append(rows, []string{what, cell(a), cell(b), ratio(a, b)})
	}
	for _, f := range figures(r.Sides) {
		row(f.What, f.Sides[0], f.Sides[1], secs)
	}
	p, q := r.Sides[0].Phases, r.Sides[1].Phases
	for i := range p {
		if i < len(q) {
			row(fmt.Sprintf("phase (median per pod, %d/%d pods): %s", p[i].Pods, q[i].Pods, p[i].What), p[i].P50, q[i].P50, msecs)
		}
	}
	for _, m := range metrics {
		a, b := r.Sides[0].Metrics[m.ID], r.Sides[1].Metrics[m.ID]
		row(fmt.Sprintf("%s, mean (%d/%d)", m.What, a.Count, b.Count), a.mean(), b.mean(), msecs)
	}
	for _, m := range errorCounts {
		a, b := r.Sides[0].Metrics[m.ID], r.Sides[1].Metrics[m.ID]
		rows = append(rows, []string{m.What, fmt.Sprint(a.Count), fmt.Sprint(b.Count), "-"})
	}
	return head, rows
}

func msecs(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d)/1e6) }

// findings says where each side's start goes, from its phases and
// metrics: the sandbox's share of a pod's start and CNI ADD's share of
// the sandbox, and the container's start.
func findings(r *result) string {
	var b strings.Builder
	for _, s := range r.Sides {
		if len(s.Phases) != len(phaseNames)+1 || s.Phases[len(phaseNames)].P50 <= 0 {
			continue
		}
		total, sandbox, start := s.Phases[len(phaseNames)].P50, s.Phases[1].P50, s.Phases[4].P50
		add, rps := s.Metrics["containerd.cni_add"].mean(), s.Metrics["containerd.sandbox_runtime"].mean()
		fmt.Fprintf(&b, "%s: of a median start of %s, RunPodSandbox takes %s (%s), of which CNI ADD %s on average (%s of the sandbox's mean %s); StartContainer %s (%s).\n",
			s.Name, secs(total), secs(sandbox), pct(sandbox, total), msecs(add), pct(add, rps), secs(rps), secs(start), pct(start, total))
	}
	return b.String()
}

func pct(a, b time.Duration) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f %%", 100*float64(a)/float64(b))
}

// report is the plain-text report.
func report(r *result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pod start on Kubernetes: one 2-node lab, %d pods per round, %d rounds per side (%s); lab up in %s, run took %s\n",
		r.Pods, r.Rounds, r.order(), r.UpTook, r.Took)
	fmt.Fprintf(&b, "machine: %s\n", r.Machine)
	for _, s := range r.Sides {
		fmt.Fprintf(&b, "%s on %s: %s\n", s.Name, s.Node, s.CNI)
	}
	b.WriteString("\n")
	head, rows := table(r)
	fmt.Fprintf(&b, "%-100s %14s %14s %7s\n", head[0], head[1], head[2], head[3])
	for _, row := range rows {
		fmt.Fprintf(&b, "%-100s %14s %14s %7s\n", row[0], row[1], row[2], row[3])
	}
	b.WriteString("\n" + findings(r))
	for _, s := range r.Sides {
		if s.Example == nil {
			continue
		}
		fmt.Fprintf(&b, "\none %s pod of median start, %s:\n", s.Name, s.Example.Pod)
		for i, o := range s.Example.Offsets {
			fmt.Fprintf(&b, "  +%8s  %s\n", secs(o), momentNames[i])
		}
	}
	b.WriteString("\nrounds (in the order run):\n")
	for i := 0; i < r.Rounds; i++ {
		for _, s := range r.Sides {
			if i < len(s.Rounds) {
				b.WriteString("  " + s.Rounds[i].summary(s) + "\n")
			}
		}
	}
	return b.String()
}

// markdown is the section of docs/performance.md.
func markdown(r *result, text string) string {
	var b strings.Builder
	b.WriteString("## Pod start on Kubernetes\n\n")
	flags := ""
	if r.Together {
		flags = " -together"
	}
	fmt.Fprintf(&b, "Generated by `make bench-podstart` (`go run ./bench/podstart -rounds %d -pods %d -warmup %d%s`) on %s.\n\n",
		r.Rounds, r.Pods, r.Warmup, flags, r.Machine.Date.Format("2006-01-02 15:04 MST"))
	b.WriteString("Machine: " + r.Machine.String() + ".\n\n")
	b.WriteString(`One lab in Kubernetes mode (` + "`internal/lab`" + `: a control plane and two nodes, each with
containerd 1.6, kubelet and kube-proxy of Kubernetes ` + "`" + kube.Version + "`" + `). podnet is installed as shipped
(` + "`deploy/podnet.yaml`" + `); then its DaemonSet is kept off the second node (a nodeAffinity on a node
label), whose CNI bin dir gets the reference plugins alone and whose conf dir gets the usual
reference conflist alone (containerd's: bridge ` + "`cni0`" + ` with isGateway, ipMasq and hairpinMode,
host-local over the node's podCIDR, portmap for the portMappings capability; cniVersion 1.0.0).
After an unmeasured warm-up round per side (` + fmt.Sprint(r.Warmup) + ` pods), rounds run ` + r.order() + `:
a Deployment of busybox pods pinned to the side's node (nodeSelector), every pod timed from its creation to its Running phase as a watch of the API
sees them (the moment ` + "`kubectl get pods -w`" + ` shows Running; the API's own timestamps have second
precision), then the Deployment deleted and every pod timed from its deletion to its removal.

The phases of a pod's start are medians over the side's pods of the intervals between the watch's
moments and containerd's CRI log lines (RunPodSandbox, CreateContainer, StartContainer called and
returned); the means are the nodes' kubelet metrics (through the API server) and containerd's CRI
metrics (CNI ADD and DEL as containerd times them), diffed around every round (DELs may outnumber
the pods: containerd DELs again, without a network namespace, when a sandbox is stopped twice).
Ratios are podnet / reference: below 1, podnet is faster. On a shared machine the figures follow its
load (each round's load average is in the output below): compare the sides within a run, and
prefer -together there.

`)
	head, rows := table(r)
	b.WriteString("| " + strings.Join(head, " | ") + " |\n|---|---|---|---|\n")
	for _, row := range rows {
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	b.WriteString("\nWhere the time goes:\n\n")
	for _, l := range strings.Split(strings.TrimSpace(findings(r)), "\n") {
		b.WriteString("- " + l + "\n")
	}
	b.WriteString("\nThe run's full output:\n\n```\n" + text + "```\n")
	return b.String()
}
