package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
)

type result struct {
	Machine   benchdoc.Machine `json:"machine"`
	LoadStart string           `json:"loadAverageStart"`
	LoadEnd   string           `json:"loadAverageEnd"`
	Scales    []int            `json:"scales"`
	// Measured are the scales measured so far (all of Scales at the end).
	Measured []int         `json:"measured"`
	Trials   int           `json:"trials"`
	Connects int           `json:"connects"`
	Gap      time.Duration `json:"gap"`
	Created  []created     `json:"created"`
	Runs     []*proxyRun   `json:"runs"`
	Took     time.Duration `json:"took"`
}

// created is how fast the API was filled up to a scale.
type created struct {
	Services int           `json:"services"`
	Added    int           `json:"added"`
	Took     time.Duration `json:"took"`
}

// proxyRun is one proxy's figures at one scale.
type proxyRun struct {
	Proxy    string `json:"proxy"`
	Services int    `json:"services"`
	// Cold is the process's start → every ClusterIP in the kernel.
	Cold time.Duration `json:"cold"`
	// ColdTimedOut: not every ClusterIP was in the kernel after Cold
	// (the bound, -cold-timeout); nothing else was measured.
	ColdTimedOut bool `json:"coldTimedOut,omitempty"`
	// ColdSyncs and ColdSyncTime are the proxy's own sync histogram then:
	// the syncs it made and their total time.
	ColdSyncs    int             `json:"coldSyncs"`
	ColdSyncTime time.Duration   `json:"coldSyncTime"`
	ColdUsage    usage           `json:"coldUsage"`
	Add          []time.Duration `json:"serviceAdded"`
	Endpoint     []time.Duration `json:"endpointChanged"`
	// UpdatesCPU is the CPU the proxy used over the update trials
	// (UpdatesWall long, idle gaps included).
	UpdatesCPU    time.Duration   `json:"updatesCPU"`
	UpdatesWall   time.Duration   `json:"updatesWall"`
	Connect       []time.Duration `json:"-"`
	ConnectDirect []time.Duration `json:"-"`
	ConnectP50    time.Duration   `json:"connectP50"`
	ConnectP99    time.Duration   `json:"connectP99"`
	DirectP50     time.Duration   `json:"connectDirectP50"`
	DirectP99     time.Duration   `json:"connectDirectP99"`
	Traffic       *traffic        `json:"traffic,omitempty"`
	Usage         usage           `json:"usage"`
}

// traffic is throughput and request/response through the ClusterIP and
// direct to the endpoint.
type traffic struct {
	ClusterIPGbps []float64       `json:"clusterIPGbps"`
	DirectGbps    []float64       `json:"directGbps"`
	RRClusterIP   []time.Duration `json:"-"`
	RRDirect      []time.Duration `json:"-"`
	RRClusterP50  time.Duration   `json:"rrClusterIPP50"`
	RRDirectP50   time.Duration   `json:"rrDirectP50"`
}

func (r *proxyRun) finish() {
	r.ConnectP50, r.ConnectP99 = benchdoc.Percentile(r.Connect, .5), benchdoc.Percentile(r.Connect, .99)
	r.DirectP50, r.DirectP99 = benchdoc.Percentile(r.ConnectDirect, .5), benchdoc.Percentile(r.ConnectDirect, .99)
	if t := r.Traffic; t != nil {
		t.RRClusterP50, t.RRDirectP50 = benchdoc.Percentile(t.RRClusterIP, .5), benchdoc.Percentile(t.RRDirect, .5)
	}
}

// summary is the run in one line, for progress.
func (r *proxyRun) summary() string {
	if r.ColdTimedOut {
		return fmt.Sprintf("%s, %d Services: cold > %s (not every ClusterIP in the kernel by then; nothing else measured), RSS %d MiB", r.Proxy, r.Services, r.Cold, r.Usage.RSS>>20)
	}
	return fmt.Sprintf("%s, %d Services: cold %s (own syncs %d, %s), added p50 %s, endpoint p50 %s, connect p50 %s, RSS %d MiB",
		r.Proxy, r.Services, ms(r.Cold), r.ColdSyncs, ms(r.ColdSyncTime), ms(benchdoc.Percentile(r.Add, .5)),
		ms(benchdoc.Percentile(r.Endpoint, .5)), us(r.ConnectP50), r.Usage.RSS>>20)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

// run is the figures of proxy at n Services, nil when not measured.
func (res *result) run(proxy string, n int) *proxyRun {
	for _, r := range res.Runs {
		if r.Proxy == proxy && r.Services == n {
			return r
		}
	}
	return nil
}

func (res *result) proxies() []string {
	var out []string
	for _, r := range res.Runs {
		if !slices.Contains(out, r.Proxy) {
			out = append(out, r.Proxy)
		}
	}
	return out
}

// table is the figures of one scale, a column per proxy.
func (res *result) table(n int) (head []string, rows [][]string) {
	head = []string{fmt.Sprintf("%d Services × %d endpoints", n, endpointsPerService)}
	var runs []*proxyRun
	for _, p := range res.proxies() {
		if r := res.run(p, n); r != nil {
			head = append(head, p)
			runs = append(runs, r)
		}
	}
	row := func(what string, f func(r *proxyRun) string) {
		cells := []string{what}
		for _, r := range runs {
			if r.ColdTimedOut {
				cells = append(cells, "–")
				continue
			}
			cells = append(cells, f(r))
		}
		rows = append(rows, cells)
	}
	cold := []string{"cold start: process started → every ClusterIP in the kernel"}
	for _, r := range runs {
		if r.ColdTimedOut {
			cold = append(cold, fmt.Sprintf("**not done after %s** (the bound; not measured further)", r.Cold))
		} else {
			cold = append(cold, ms(r.Cold))
		}
	}
	rows = append(rows, cold)
	row("cold start: the proxy's own sync time (syncs)", func(r *proxyRun) string {
		return fmt.Sprintf("%s (%d)", ms(r.ColdSyncTime), r.ColdSyncs)
	})
	row("cold start: CPU, RSS", func(r *proxyRun) string {
		return fmt.Sprintf("%s, %d MiB", ms(r.ColdUsage.CPU), r.ColdUsage.RSS>>20)
	})
	row("Service added → in the kernel, p50 / p99", func(r *proxyRun) string {
		return ms(benchdoc.Percentile(r.Add, .5)) + " / " + ms(benchdoc.Percentile(r.Add, .99))
	})
	row("endpoint changed → in the kernel, p50 / p99", func(r *proxyRun) string {
		return ms(benchdoc.Percentile(r.Endpoint, .5)) + " / " + ms(benchdoc.Percentile(r.Endpoint, .99))
	})
	row("CPU over the updates (share of a core)", func(r *proxyRun) string {
		return fmt.Sprintf("%s (%.1f %%)", ms(r.UpdatesCPU), 100*r.UpdatesCPU.Seconds()/r.UpdatesWall.Seconds())
	})
	row("TCP connect via ClusterIP, p50 / p99", func(r *proxyRun) string { return us(r.ConnectP50) + " / " + us(r.ConnectP99) })
	row("TCP connect direct to the endpoint, p50 / p99", func(r *proxyRun) string { return us(r.DirectP50) + " / " + us(r.DirectP99) })
	if slices.ContainsFunc(runs, func(r *proxyRun) bool { return r.Traffic != nil }) {
		row("TCP stream via ClusterIP / direct, median Gbit/s", func(r *proxyRun) string {
			t := r.Traffic
			if t == nil {
				return "–"
			}
			return fmt.Sprintf("%.2f / %.2f (%.0f %%)", benchdoc.Median(t.ClusterIPGbps), benchdoc.Median(t.DirectGbps), 100*t.ratio())
		})
		row("1-byte request/response via ClusterIP / direct, p50", func(r *proxyRun) string {
			if r.Traffic == nil {
				return "–"
			}
			return us(r.Traffic.RRClusterP50) + " / " + us(r.Traffic.RRDirectP50)
		})
	}
	row("RSS at the end (peak)", func(r *proxyRun) string {
		return fmt.Sprintf("%d MiB (%d MiB)", r.Usage.RSS>>20, r.Usage.MaxRSS>>20)
	})
	return head, rows
}

func (t *traffic) ratio() float64 {
	d := benchdoc.Median(t.DirectGbps)
	if d == 0 {
		return 0
	}
	return benchdoc.Median(t.ClusterIPGbps) / d
}

// bars are the bars with their verdicts, for what was measured.
func (res *result) bars() []string {
	var out []string
	lo, hi := res.Measured[0], res.Measured[len(res.Measured)-1]
	p := res.run(proxyPodnet, hi)
	if p == nil {
		return nil
	}
	out = append(out, fmt.Sprintf("podnet programs %d Services × %d from cold in < 1 s (its sync): %s — %s (process start → kernel: %s)",
		hi, endpointsPerService, ms(p.ColdSyncTime), benchdoc.Verdict(p.ColdSyncTime < time.Second), ms(p.Cold)))
	if k := res.run(proxyNFTables, hi); k != nil {
		for _, u := range []struct {
			what   string
			pn, kp []time.Duration
		}{{"a Service added", p.Add, k.Add}, {"an endpoint changed", p.Endpoint, k.Endpoint}} {
			a, b := benchdoc.Percentile(u.pn, .5), benchdoc.Percentile(u.kp, .5)
			out = append(out, fmt.Sprintf("%s at %d Services, p50, ≤ 1/5 of kube-proxy nftables: %s vs %s (×%.2f) — %s",
				u.what, hi, ms(a), ms(b), float64(a)/float64(b), benchdoc.Verdict(5*a <= b)))
		}
	}
	if l := res.run(proxyPodnet, lo); l != nil && lo != hi {
		out = append(out, fmt.Sprintf("connect latency at %d Services within 5 %% of at %d, p50: %s vs %s (×%.3f) — %s (direct to the endpoint, alternating with them: %s vs %s)",
			hi, lo, us(p.ConnectP50), us(l.ConnectP50), float64(p.ConnectP50)/float64(l.ConnectP50),
			benchdoc.Verdict(float64(p.ConnectP50) <= 1.05*float64(l.ConnectP50)), us(p.DirectP50), us(l.DirectP50)))
		if p.DirectP50 > 0 && l.DirectP50 > 0 {
			hiRel, loRel := float64(p.ConnectP50)/float64(p.DirectP50), float64(l.ConnectP50)/float64(l.DirectP50)
			out = append(out, fmt.Sprintf("the same, each scale's ClusterIP connect over its direct one (the machine's drift between the scales taken out): ×%.3f at %d vs ×%.3f at %d (×%.3f) — %s",
				hiRel, hi, loRel, lo, hiRel/loRel, benchdoc.Verdict(hiRel <= 1.05*loRel)))
		}
	}
	if t := p.Traffic; t != nil {
		out = append(out, fmt.Sprintf("ClusterIP throughput ≥ 95 %% of direct: %.0f %% — %s", 100*t.ratio(), benchdoc.Verdict(t.ratio() >= .95)))
	}
	return out
}

// report is the plain-text report.
func report(res *result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "bench/services on %s\nload average %s at the start, %s at the end; took %s\n", res.Machine, res.LoadStart, res.LoadEnd, res.Took)
	for _, c := range res.Created {
		fmt.Fprintf(&b, "API filled to %d Services (+%d, each with its EndpointSlice) in %s\n", c.Services, c.Added, c.Took.Round(time.Millisecond))
	}
	for _, n := range res.Measured {
		head, rows := res.table(n)
		fmt.Fprintf(&b, "\n%s\n", strings.Join(head, " | "))
		for _, r := range rows {
			fmt.Fprintf(&b, "  %s\n", strings.Join(r, " | "))
		}
	}
	fmt.Fprintln(&b, "\nbars:")
	for _, s := range res.bars() {
		fmt.Fprintf(&b, "  %s\n", s)
	}
	return b.String()
}

// markdown is the section of docs/performance.md.
func markdown(res *result) string {
	var b strings.Builder
	b.WriteString("## Service proxy: podnet vs kube-proxy (nftables, iptables)\n\n")
	fmt.Fprintf(&b, "`make bench-services` (bench/services) on %s. Load average %s at the start, %s at the end: "+
		"a shared 2-core machine, so the figures are indicative; the run took %s.\n\n", res.Machine, res.LoadStart, res.LoadEnd, res.Took)
	fmt.Fprintf(&b, "One real API server (Kubernetes v1.32.3) holds selector-less TCP Services (every tenth a NodePort), each with an EndpointSlice of %d ready endpoints (no pods; their nodeName is another node's, as in a cluster of many nodes). "+
		"The proxies run one after the other, each on a fresh node namespace with the same Services: podnet's proxy (the `services` controller that podnet-agent runs with `--service-proxy`, in its own process, bench/services/proxy), "+
		"then upstream kube-proxy v1.32.3 in nftables mode and in iptables mode (default settings: minSyncPeriod 1 s). "+
		"Times into the kernel are seen by polling it (every 10 ms: the nftables maps through netlink, iptables-save for iptables mode). "+
		"Updates are %d Services added (their create → ClusterIP in the kernel) and %d endpoints changed (the slice's update → the new address in the kernel), %s apart. "+
		"CPU and memory are read from /proc (children included: kube-proxy execs nft and iptables-restore). "+
		"Connect latency is %d TCP connects from a client namespace routed through the node to svc-0's ClusterIP (its endpoints all in one endpoint namespace), and as many direct to the endpoint, alternating in ten rounds. "+
		"Each proxy's cold start, its connects and its throughput wait for a quiet machine first (90 %% idle CPU two seconds in a row, at most -settle): filling the API server leaves it and etcd busy for a while.\n\n",
		endpointsPerService, res.Trials, res.Trials, res.Gap, res.Connects)
	for _, c := range res.Created {
		fmt.Fprintf(&b, "- API filled to %d Services (+%d with their slices) in %s.\n", c.Services, c.Added, c.Took.Round(time.Millisecond))
	}
	if len(res.Measured) < len(res.Scales) {
		fmt.Fprintf(&b, "**Partial run**: measured %v of the scales %v.\n\n", res.Measured, res.Scales)
	}
	for _, n := range res.Measured {
		head, rows := res.table(n)
		fmt.Fprintf(&b, "\n| %s |\n|%s\n", strings.Join(head, " | "), strings.Repeat(" --- |", len(head)))
		for _, r := range rows {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
		}
	}
	b.WriteString("\nBars:\n\n")
	for _, s := range res.bars() {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	return b.String()
}
