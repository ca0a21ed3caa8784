package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/internal/testing/chaos"
)

// result is the benchmark's report: every run's audit.
type result struct {
	Machine   benchdoc.Machine `json:"machine"`
	Ops       int              `json:"opsPerChain"`
	InFlight  int              `json:"inFlight"`
	KillShare float64          `json:"killShare"`
	Pods      int              `json:"pods"`
	Runs      []suiteReport    `json:"runs"`
	Took      time.Duration    `json:"tookNs"`
}

// suiteReport is one chain's run under one suite of plugins.
type suiteReport struct {
	Suite  string        `json:"suite"`
	Report *chaos.Report `json:"report"`
}

// row is one line of the report: a figure per run, and the bar with
// podnet's verdict when the figure has one.
type row struct {
	what    string
	figures []string
	bar     string // "" for context
	verdict string
}

// rows are the report's lines, shared by the text and Markdown forms.
func rows(r *result) []row {
	count := func(what, bar string, f func(*chaos.Report) int) row {
		ro := row{what: what, bar: bar}
		ok := true
		for _, s := range r.Runs {
			n := f(s.Report)
			ro.figures = append(ro.figures, fmt.Sprint(n))
			if s.Suite == "podnet" && n != 0 {
				ok = false
			}
		}
		if bar != "" {
			ro.verdict = benchdoc.Verdict(ok)
		}
		return ro
	}
	context := func(what string, f func(*chaos.Report) string) row {
		ro := row{what: what}
		for _, s := range r.Runs {
			ro.figures = append(ro.figures, f(s.Report))
		}
		return ro
	}
	return []row{
		context("operations: ADD / DEL", func(p *chaos.Report) string { return fmt.Sprintf("%d / %d", p.Adds, p.Dels) }),
		context("killed (SIGKILL to cnitool and its plugins): ADD / DEL", func(p *chaos.Report) string {
			return fmt.Sprintf("%d / %d", p.KilledAdds, p.Killed-p.KilledAdds)
		}),
		context("pods at the end: valid / deleted / invalid (of which lost by the runtime; in libcni's cache)", func(p *chaos.Report) string {
			return fmt.Sprintf("%d / %d / %d (%d; %d)", p.Valid, p.Deleted, p.Invalid, p.Lost, p.StaleCached)
		}),
		count("duplicate IPs among the valid pods", "0", func(p *chaos.Report) int { return p.DupIPs }),
		count("leaked IPs after GC (allocations of no valid pod)", "0", func(p *chaos.Report) int { return p.LeakedIPs }),
		count("leaked host links after GC (veths, ifbs of no valid pod)", "0", func(p *chaos.Report) int { return p.LeakedLinks }),
		count("leaked nftables rules after GC (naming no valid pod)", "0", func(p *chaos.Report) int { return p.LeakedRules }),
		count("leaked state files after GC (IPAM index, tuning's saved values)", "0 (extension)", func(p *chaos.Report) int { return p.LeakedFiles }),
		count("valid pods not intact (interface, address and its allocation, veth, ifb, rules)", "0 (extension)",
			func(p *chaos.Report) int { return p.BrokenPods + p.MissingIPs }),
		count("operations that failed without being killed (teardown included), GC failures", "0 (extension)",
			func(p *chaos.Report) int {
				n := p.Failed + p.TeardownFailed
				if p.GCError != "" {
					n++
				}
				return n
			}),
		teardown(r),
		context("run time", func(p *chaos.Report) string { return p.Took.Round(time.Second).String() }),
	}
}

// teardown is the row of what the node kept after every valid pod was
// deleted and GC ran with none valid.
func teardown(r *result) row {
	ro := row{what: "left on the node after DEL of every valid pod and GC with none valid", bar: "nothing (extension)"}
	ok := true
	for _, s := range r.Runs {
		var links, ips, files, rules int
		for _, x := range s.Report.LeftOver {
			var n int
			switch {
			case strings.HasPrefix(x, "IPAM "):
				ips++
			case strings.HasPrefix(x, "/"):
				files++
			case strings.HasSuffix(x, " nftables rules"):
				if _, err := fmt.Sscanf(x, "%d", &n); err == nil {
					rules += n
				}
			default:
				links++
			}
		}
		fig := fmt.Sprintf("%d links, %d IPs, %d state files, %d rules", links, ips, files, rules)
		if len(s.Report.LeftOver) == 0 {
			fig = "nothing"
		} else if s.Suite == "podnet" {
			ok = false
		}
		ro.figures = append(ro.figures, fig)
	}
	ro.verdict = benchdoc.Verdict(ok)
	return ro
}

// headers names each run's column.
func headers(r *result) []string {
	var out []string
	for _, s := range r.Runs {
		h := fmt.Sprintf("%s %s (%s)", s.Suite, s.Report.Chain, s.Report.CNIVersion)
		if s.Suite == "reference" {
			h += ", no GC verb"
		}
		out = append(out, h)
	}
	return out
}

// report is the plain-text report.
func report(r *result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "crash chaos: %d ADD/DEL per chain through cnitool, %d in flight, %.0f %% SIGKILLed at a random point, then GC with the valid attachments; run took %s\n",
		r.Ops, r.InFlight, 100*r.KillShare, r.Took)
	fmt.Fprintf(&b, "machine: %s\n\n", r.Machine)
	hs := headers(r)
	fmt.Fprintf(&b, "%-96s", "")
	for _, h := range hs {
		fmt.Fprintf(&b, " %-44s", h)
	}
	fmt.Fprintf(&b, " %-20s %s\n", "bar", "podnet")
	for _, ro := range rows(r) {
		fmt.Fprintf(&b, "%-96s", ro.what)
		for _, f := range ro.figures {
			fmt.Fprintf(&b, " %-44s", f)
		}
		fmt.Fprintf(&b, " %-20s %s\n", ro.bar, ro.verdict)
	}
	for _, s := range r.Runs {
		fmt.Fprintf(&b, "\n%s %s", s.Suite, s.Report.Summary())
	}
	return b.String()
}

// markdown is the section of docs/performance.md.
func markdown(r *result, text string) string {
	var b strings.Builder
	b.WriteString("## Crash chaos\n\n")
	fmt.Fprintf(&b, "Generated by `make bench-chaos` (`go run ./bench/chaos -n %d -inflight %d -kill %g`) on %s.\n\n",
		r.Ops, r.InFlight, r.KillShare, r.Machine.Date.Format("2006-01-02 15:04 MST"))
	b.WriteString("Machine: " + r.Machine.String() + ".\n\n")
	b.WriteString(method(r))
	b.WriteString("\n| what | " + strings.Join(headers(r), " | ") + " | bar | podnet |\n|---|")
	b.WriteString(strings.Repeat("---|", len(r.Runs)) + "---|---|\n")
	for _, ro := range rows(r) {
		v := ro.verdict
		if v != "" {
			v = "**" + v + "**"
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", ro.what, strings.Join(ro.figures, " | "), ro.bar, v)
	}
	b.WriteString("\nThe run's full output:\n\n```\n" + text + "```\n")
	return b.String()
}

// method explains how the figures are made.
func method(r *result) string {
	return fmt.Sprintf(`The bar (VISION.md): kill -9 of plugins during 1,000 ADD/DEL, then 0 duplicate IPs and 0
leaked IPs, links and rules after GC; rows marked extension hold podnet to the same 0 for what
VISION does not name.

Each chain runs on a fresh node (a throwaway network namespace) through internal/testing/chaos, the
driver of test/cni's TestCrashChaos: ADD of a new pod (its own namespace, a TCP and a UDP host
port and 100 Mbit/s each way as capability args, as containerd sends them) or DEL of a live one,
%d at a time, each by a process of the official `+"`cnitool`"+` (libcni) in a process group of its own.
%.0f %% of them get SIGKILL sent to the whole group — cnitool and every plugin it runs — after a
random delay within the operation's typical duration (the 90th percentile of the unkilled ones
so far), so kills land at every point of ADD and DEL. A journal is kept as a runtime keeps one:
a pod is valid only if its last completed operation is a successful ADD. Half of the pods a kill
made invalid are DELed again later, as a runtime that tears a failed sandbox down does; the
runtime loses track of the other half. Then the runtime comes back: libcni's GC with the valid
attachments (libcni DELs the invalid attachments it cached, then, from CNI 1.1.0, sends GC with
`+"`cni.dev/valid-attachments`"+` to every plugin). Pod namespaces live until the audit, so the kernel
never cleans up for the plugins. The audit: duplicate addresses among valid pods; allocations of
no valid pod; host links that are neither a valid pod's veth nor the ifb its veth redirects to;
rules whose comment names no valid pod (podnet's carry the attachment identity, the reference's
iptables rules cnitool's container ID); state files naming an invalid pod; every valid pod's
interface, addresses and their allocation, veth, ifb and rules. Last, every valid pod is deleted
and GC runs with none valid; what the node then has that it had not before is reported. The
reference plugins speak CNI up to 1.0.0 and have no GC verb: their column is what a runtime's GC
(libcni's DEL of the attachments it cached) leaves.
`, r.InFlight, 100*r.KillShare)
}
