package main

import (
	"fmt"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
)

type result struct {
	Machine   benchdoc.Machine `json:"machine"`
	LoadStart string           `json:"loadAverageStart"`
	LoadEnd   string           `json:"loadAverageEnd"`
	// UpTook is the lab's start (control plane, nodes, podnet).
	UpTook time.Duration `json:"labUp"`
	// NetworkPolicy is the network-policy setting of podnet's ConfigMap.
	NetworkPolicy string `json:"networkPolicySetting"`
	// Probes are the real pods, one a node.
	Probes []probeInfo `json:"probes"`
	// APIPods are the API-only pods on the Virtual nodes, created (with
	// their status) in APIPodsTook.
	APIPods     int           `json:"apiPods"`
	APIPodsTook time.Duration `json:"apiPodsTook"`
	Virtual     []virtualNode `json:"virtualNodes"`
	Scales      []int         `json:"scales"`
	// Measured are the scales measured so far (all of Scales at the end).
	Measured       []int         `json:"measured"`
	Trials         int           `json:"trials"`
	PeerTrials     int           `json:"peerTrials"`
	Connects       int           `json:"connects"`
	Streams        int           `json:"streams"`
	Rounds         int           `json:"rounds"`
	StreamFor      time.Duration `json:"stream"`
	EnforceTimeout time.Duration `json:"enforceTimeout"`
	// Isolation is empty when the probe pods' isolation was enforced,
	// else why the enforcement trials were skipped.
	Isolation string        `json:"isolationNotEnforced,omitempty"`
	Runs      []*scaleRun   `json:"runs"`
	Traffic   []*trafficRun `json:"traffic"`
	Peer      peerInfo      `json:"peer"`
	Took      time.Duration `json:"took"`
}

// probeInfo is a real probe pod.
type probeInfo struct {
	Name string `json:"name"`
	Node string `json:"node"`
	IP   string `json:"ip"`
}

// scaleRun is the figures with Policies background policies.
type scaleRun struct {
	Policies int `json:"policies"`
	// Created is how long the background policies took to create, Idle
	// how long the agents then took to be idle again.
	Created time.Duration `json:"created"`
	Idle    time.Duration `json:"idle"`
	// Enforce is, per trial, an allow policy's create call → connecting
	// on every node (EnforceNodes: each node's); Revoke its delete call →
	// denied on every node.
	Enforce      []time.Duration   `json:"enforced"`
	EnforceNodes [][]time.Duration `json:"enforcedPerNode"`
	Revoke       []time.Duration   `json:"revoked"`
	// Peer is, per trial, a peer pod's create call → its address in a set
	// on every node.
	Peer []time.Duration `json:"peerSetUpdated"`
	// Agents are each agent's CPU over the scale's steps (Wall long) and
	// its memory at the end.
	Agents []agentUsage  `json:"agents"`
	Wall   time.Duration `json:"wall"`
	Note   []string      `json:"notes,omitempty"`
}

// trafficRun is throughput and connection rate from probe 0 to probe 1.
type trafficRun struct {
	Label    string `json:"label"`
	Policies int    `json:"policies"`
	// Enforced: the pair's traffic was evaluated by its policy chain (the
	// isolation was seen enforced).
	Enforced bool      `json:"enforced"`
	Gbps     []float64 `json:"gbps"`
	// PerSecond is each round's connection rate.
	PerSecond  []float64       `json:"connectsPerSecond"`
	connects   []time.Duration // every round's
	ConnectP50 time.Duration   `json:"connectP50"`
	ConnectP99 time.Duration   `json:"connectP99"`
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }
func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d)/1e3) }

// p50p99 is "p50 / p99 (n)", or "not measured".
func p50p99(ds []time.Duration) string {
	if len(ds) == 0 {
		return "not measured"
	}
	return fmt.Sprintf("%s / %s (%d)", ms(benchdoc.Percentile(ds, .5)), ms(benchdoc.Percentile(ds, .99)), len(ds))
}

// summary is the run in one line, for progress.
func (r *scaleRun) summary() string {
	return fmt.Sprintf("%d policies (created in %s, agents idle %s later): enforced p50/p99 %s, revoked %s, peer set %s; %s",
		r.Policies, r.Created, r.Idle, p50p99(r.Enforce), p50p99(r.Revoke), p50p99(r.Peer), strings.Join(r.Note, "; "))
}

func (t *trafficRun) summary() string {
	return fmt.Sprintf("traffic, %s: %.2f Gbit/s (median of %d), %.0f connects/s (median of %d), connect p50 %s",
		t.Label, benchdoc.Median(t.Gbps), len(t.Gbps), benchdoc.Median(t.PerSecond), len(t.PerSecond), us(t.ConnectP50))
}

// usage is the agents' CPU and memory in one cell.
func usage(as []agentUsage, wall time.Duration) string {
	var parts []string
	for _, a := range as {
		parts = append(parts, fmt.Sprintf("%s: %s CPU (%.1f %% of a core), %d MiB", a.Node, ms(a.CPU), 100*a.CPU.Seconds()/wall.Seconds(), a.RSS>>20))
	}
	return strings.Join(parts, "; ")
}

// traffic is the traffic with no policy and with the policies, nil
// when not measured.
func (res *result) traffic() (none, with *trafficRun) {
	for _, t := range res.Traffic {
		if len(t.Gbps) == 0 {
			continue
		}
		if t.Policies == 0 {
			none = t
		} else {
			with = t
		}
	}
	return none, with
}

// bars are the bars with their verdicts.
func (res *result) bars() []string {
	var out []string
	const target = 1000
	var at *scaleRun
	for _, r := range res.Runs {
		if r.Policies == target {
			at = r
		}
	}
	switch {
	case at == nil:
		out = append(out, fmt.Sprintf("enforcement p99 < 1 s at %d policies: not measured (scales %v)", target, res.Measured))
	case len(at.Enforce) == 0:
		out = append(out, fmt.Sprintf("enforcement p99 < 1 s at %d policies: not measured (%s)", target, firstNonEmpty(res.Isolation, strings.Join(at.Note, "; "))))
	default:
		p99 := benchdoc.Percentile(at.Enforce, .99)
		out = append(out, fmt.Sprintf("enforcement p99 < 1 s at %d policies: %s (×%.2f of the bar) — %s", target, ms(p99), p99.Seconds(), benchdoc.Verdict(p99 < time.Second)))
	}
	none, with := res.traffic()
	if none == nil || with == nil {
		return append(out, "throughput and connection rate with policies: not measured")
	}
	caveat := ""
	if !with.Enforced {
		caveat = " (the pair's traffic was not policed: no enforcement seen)"
	}
	wg, ng := benchdoc.Median(with.Gbps), benchdoc.Median(none.Gbps)
	out = append(out, fmt.Sprintf("throughput with %d policies ≥ 95 %% of none: %.2f vs %.2f Gbit/s, %.1f %% — %s%s",
		with.Policies, wg, ng, 100*wg/ng, benchdoc.Verdict(wg >= .95*ng), caveat))
	wr, nr := benchdoc.Median(with.PerSecond), benchdoc.Median(none.PerSecond)
	out = append(out, fmt.Sprintf("connection rate with %d policies ≥ 90 %% of none: %.0f vs %.0f connects/s, %.1f %% — %s%s",
		with.Policies, wr, nr, 100*wr/nr, benchdoc.Verdict(wr >= .90*nr), caveat))
	return out
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}

// tables are the figures: one row per scale, and the traffic.
func (res *result) tables() (scales, traffic [][]string) {
	scales = append(scales, []string{"NetworkPolicies", "created in (agents idle after)", "policy created → enforced on every node, p50 / p99 (trials)",
		"policy deleted → denied on every node, p50 / p99", "peer pod created → in every node's set, p50 / p99", "agents: CPU over the steps, memory"})
	for _, r := range res.Runs {
		scales = append(scales, []string{fmt.Sprint(r.Policies), fmt.Sprintf("%s (%s)", ms(r.Created), ms(r.Idle)),
			p50p99(r.Enforce), p50p99(r.Revoke), p50p99(r.Peer), usage(r.Agents, r.Wall)})
	}
	traffic = append(traffic, []string{"cluster", "TCP throughput, median Gbit/s (runs)", "connects/s, median (rounds)", "connect p50 / p99"})
	for _, t := range res.Traffic {
		label := t.Label
		if t.Policies > 0 {
			label = fmt.Sprintf("%d %s", t.Policies, t.Label)
		}
		traffic = append(traffic, []string{label, fmt.Sprintf("%.2f (%d)", benchdoc.Median(t.Gbps), len(t.Gbps)),
			fmt.Sprintf("%.0f (%d)", benchdoc.Median(t.PerSecond), len(t.PerSecond)), us(t.ConnectP50) + " / " + us(t.ConnectP99)})
	}
	return scales, traffic
}

// method says what was real, what API objects only, and how each figure
// is taken.
func (res *result) method() []string {
	var probes []string
	for _, p := range res.Probes {
		probes = append(probes, fmt.Sprintf("%s on %s (%s)", p.Name, p.Node, p.IP))
	}
	var virtual []string
	for _, v := range res.Virtual {
		virtual = append(virtual, fmt.Sprintf("%s (%s)", v.Name, v.PodCIDR))
	}
	return []string{
		fmt.Sprintf("Real: a Kubernetes lab (`lab --kubernetes`, v1.32.3) of %d nodes, each a network namespace running containerd, kubelet and podnet's agent "+
			"from deploy/podnet.yaml (its ConfigMap's `network-policy`: %s), up in %s; on each node one probe pod (busybox, run by kubelet, attached by podnet's CNI plugin): %s. "+
			"The benchmark serves TCP and opens connections inside the probe pods' network namespaces.", len(res.Probes), res.NetworkPolicy, res.UpTook, strings.Join(probes, ", ")),
		fmt.Sprintf("API objects only: %d pods in %d namespaces (%d app labels, a named container port) bound to %d virtual nodes — Node objects with no kubelet, "+
			"tainted NoSchedule and NoExecute, never Ready, no podnet peer: %s — their status (Running, Ready, podIP from the virtual node's own podCIDR, "+
			"allocated by kube-controller-manager) written through the status subresource; created in %s. The peer pods of the set trials are such pods too. "+
			"(podnet's DaemonSet, tolerating every taint, also gets a pod on each virtual node: it stays Pending, host network, no peer.)",
			res.APIPods, apiNamespaces, apiApps, len(res.Virtual), strings.Join(virtual, ", "), res.APIPodsTook),
		"Background policies: NetworkPolicies in the API-only pods' namespaces, each selecting one app's pods and allowing ingress from the next app's " +
			"(every third from every namespace, every fifth on the named port), every fourth isolating egress too (to an ipBlock with an except). " +
			"After they are created, the run waits until every agent used < 5 % of a core over a second.",
		fmt.Sprintf("Policy created → enforced, by real traffic: the probe pods are isolated for ingress (policy %s/isolate); per trial a policy allowing the probe pods "+
			"to reach each other is created, and from each node's neighbour TCP connects to that node's probe pod start every %s, each given %s "+
			"(one SYN: below its first retransmission); the time is the create call → the start of the first connect that succeeded, on the slowest node. "+
			"The policy is then deleted and denied-again is timed the same way, from the first of %d failed connects in a row (on a loaded machine a lone timeout may be a starved connect). "+
			"Bounded by %s, then counted as not seen.",
			probeNamespace, attemptEvery, attemptTimeout, deniedRun, res.EnforceTimeout),
		fmt.Sprintf("Peer pod created → its peers' sets updated: per trial an API-only pod that policy %s/peers (selecting the probe pods, so every node needs the set) admits is created, "+
			"its status with its address written at once; every node's kernel is polled every 10 ms through netlink until the address is in a set of the %s table.", probeNamespace, policyTable),
		fmt.Sprintf("Traffic between %s and %s (different nodes): %d TCP streams of %s (Go, in-process both ends), then %d TCP connects one after the other (connection rate); "+
			"%d rounds, each with the largest scale's policies plus %s/isolate, %s/peers and one allowing the pair (so the pair's new connections are evaluated by a policed chain), "+
			"then with no policy in the cluster (all deleted, the agents idle again).",
			res.probeName(0), res.probeName(1), res.Streams, res.StreamFor, res.Connects, res.Rounds, probeNamespace, probeNamespace),
		"Agent CPU and memory: each agent's /metrics (process_cpu_seconds_total, process_resident_memory_bytes) before and after a scale's steps.",
		fmt.Sprintf("No peer column: the issue asks for %s side by side, but it queues the first packet of every policed connection to userspace with nftables' "+
			"queue statement, which needs %s; this kernel: `%s`. Run on it, it fails: %s", res.Peer.Name, peerKconfig, res.Peer.Kernel, res.Peer.Observed),
	}
}

func (res *result) probeName(i int) string {
	if i < len(res.Probes) {
		return res.Probes[i].Name
	}
	return fmt.Sprintf("probe %d", i)
}

// report is the plain-text report.
func report(res *result) string {
	var b strings.Builder
	fmt.Fprintf(&b, "bench/policy on %s\nload average %s at the start, %s at the end; took %s\n\n", res.Machine, res.LoadStart, res.LoadEnd, res.Took)
	for _, m := range res.method() {
		fmt.Fprintf(&b, "- %s\n", m)
	}
	if res.Isolation != "" {
		fmt.Fprintf(&b, "\nNOT ENFORCED: %s\n", res.Isolation)
	}
	scales, traffic := res.tables()
	for _, t := range [][][]string{scales, traffic} {
		b.WriteString("\n")
		for _, r := range t {
			fmt.Fprintf(&b, "  %s\n", strings.Join(r, " | "))
		}
	}
	for _, r := range res.Runs {
		for _, n := range r.Note {
			fmt.Fprintf(&b, "note, %d policies: %s\n", r.Policies, n)
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
	b.WriteString("## NetworkPolicy\n\n")
	fmt.Fprintf(&b, "`make bench-policy` (bench/policy) on %s. Load average %s at the start, %s at the end: "+
		"a shared 2-core machine, so the figures are indicative; the run took %s.\n\n", res.Machine, res.LoadStart, res.LoadEnd, res.Took)
	for _, m := range res.method() {
		fmt.Fprintf(&b, "- %s\n", m)
	}
	if res.Isolation != "" {
		fmt.Fprintf(&b, "\n**Not enforced**: %s.\n", res.Isolation)
	}
	if len(res.Measured) < len(res.Scales) {
		fmt.Fprintf(&b, "\n**Partial run**: measured %v of the scales %v.\n", res.Measured, res.Scales)
	}
	scales, traffic := res.tables()
	for _, t := range [][][]string{scales, traffic} {
		fmt.Fprintf(&b, "\n| %s |\n|%s\n", strings.Join(t[0], " | "), strings.Repeat(" --- |", len(t[0])))
		for _, r := range t[1:] {
			fmt.Fprintf(&b, "| %s |\n", strings.Join(r, " | "))
		}
	}
	var notes []string
	for _, r := range res.Runs {
		for _, n := range r.Note {
			notes = append(notes, fmt.Sprintf("- %d policies: %s", r.Policies, n))
		}
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, "\nNotes:\n\n%s\n", strings.Join(notes, "\n"))
	}
	b.WriteString("\nBars:\n\n")
	for _, s := range res.bars() {
		fmt.Fprintf(&b, "- %s\n", s)
	}
	return b.String()
}
