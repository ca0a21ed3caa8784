package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/bench/internal/benchnet"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// pollEvery is how often the kernel is polled.
const pollEvery = 10 * time.Millisecond

// inEveryNodeSet polls every node's policy table until ip is in one of
// its sets on all of them, and returns when the poll that completed the
// picture began, after t0; errNotSeen after b.o.enforceTimeout.
func (b *bench) inEveryNodeSet(ctx context.Context, ip netip.Addr, t0 time.Time) (time.Duration, error) {
	var nss []*netns.NS
	defer func() {
		for _, ns := range nss {
			ns.Close()
		}
	}()
	for _, n := range b.l.Nodes {
		ns, err := b.l.OpenNetNS(ctx, n.Name)
		if err != nil {
			return 0, err
		}
		nss = append(nss, ns)
	}
	seen := make([]bool, len(nss))
	for {
		at := time.Now()
		all := true
		for i, ns := range nss {
			if seen[i] {
				continue
			}
			ok, err := inPeerSet(ns, ip)
			if err != nil {
				return 0, fmt.Errorf("%s: %w", b.l.Nodes[i].Name, err)
			}
			seen[i] = ok
			all = all && ok
		}
		if all {
			return at.Sub(t0), nil
		}
		if at.Sub(t0) > b.o.enforceTimeout {
			var missing []string
			for i, ok := range seen {
				if !ok {
					missing = append(missing, b.l.Nodes[i].Name)
				}
			}
			return 0, fmt.Errorf("in no set of %s on %v after %s: %w", policyTable, missing, b.o.enforceTimeout, errNotSeen)
		}
		if err := benchlab.Pause(ctx, pollEvery); err != nil {
			return 0, err
		}
	}
}

// traffic adds to t a measurement of throughput and connection rate
// from the first node's probe pod to the second's.
func (b *bench) traffic(ctx context.Context, t *trafficRun) error {
	from, to := b.probes[0], b.probes[1]
	for range b.o.streams {
		g, err := benchnet.Stream(ctx, from.ns, to.server(), b.o.streamFor)
		if err != nil {
			return fmt.Errorf("%s: %w", t.Label, err)
		}
		t.Gbps = append(t.Gbps, g)
	}
	start := time.Now()
	times, err := benchnet.ConnectTimes(ctx, from.ns, to.server(), b.o.connects)
	if err != nil {
		return fmt.Errorf("%s: %w", t.Label, err)
	}
	t.PerSecond = append(t.PerSecond, float64(len(times))/time.Since(start).Seconds())
	t.connects = append(t.connects, times...)
	t.ConnectP50, t.ConnectP99 = benchdoc.Percentile(t.connects, .5), benchdoc.Percentile(t.connects, .99)
	fmt.Fprintln(os.Stderr, t.summary())
	return nil
}

// agentUsage is what a node's agent used.
type agentUsage struct {
	Node string        `json:"node"`
	CPU  time.Duration `json:"cpu"`
	RSS  int64         `json:"rssBytes"`
}

// agentUsages reads every node's agent's CPU time and resident memory
// from its /metrics (the Prometheus process collector).
func agentUsages(ctx context.Context, l *lab.Lab) ([]agentUsage, error) {
	var out []agentUsage
	for _, n := range l.Nodes {
		code, body, err := l.AgentGet(ctx, n, "/metrics")
		if err != nil {
			return nil, fmt.Errorf("agent of %s: %w", n.Name, err)
		}
		if code != http.StatusOK {
			return nil, fmt.Errorf("agent of %s: /metrics answered %d", n.Name, code)
		}
		cpu, rss, err := parseUsage(body)
		if err != nil {
			return nil, fmt.Errorf("agent of %s: %w", n.Name, err)
		}
		out = append(out, agentUsage{Node: n.Name, CPU: cpu, RSS: rss})
	}
	return out, nil
}

// Agents are idle when each used less than idleShare of a core over
// idleWindow.
const (
	idleWindow = time.Second
	idleShare  = 0.05
)

// idle waits until every agent is idle (it has worked through the
// policies just created), for up to b.o.idleTimeout; still busy then, it
// goes on and says so.
func (b *bench) idle(ctx context.Context) error {
	deadline := time.Now().Add(b.o.idleTimeout)
	prev, err := agentUsages(ctx, b.l)
	if err != nil {
		return err
	}
	for {
		if err := benchlab.Pause(ctx, idleWindow); err != nil {
			return err
		}
		cur, err := agentUsages(ctx, b.l)
		if err != nil {
			return err
		}
		busy := false
		for _, u := range usageDelta(prev, cur) {
			busy = busy || u.CPU.Seconds() > idleShare*idleWindow.Seconds()
		}
		if !busy {
			return nil
		}
		if time.Now().After(deadline) {
			fmt.Fprintf(os.Stderr, "agents still busy after %s; measuring anyway\n", b.o.idleTimeout)
			return nil
		}
		prev = cur
	}
}

// usageDelta is the CPU each agent used between before and after, with
// its memory after.
func usageDelta(before, after []agentUsage) []agentUsage {
	out := make([]agentUsage, len(after))
	for i, a := range after {
		out[i] = a
		for _, b := range before {
			if b.Node == a.Node {
				out[i].CPU -= b.CPU
			}
		}
	}
	return out
}

// parseUsage reads process_cpu_seconds_total and
// process_resident_memory_bytes from a Prometheus text exposition.
func parseUsage(text []byte) (cpu time.Duration, rss int64, err error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return 0, 0, fmt.Errorf("metrics: %w", err)
	}
	value := func(name string) (float64, error) {
		f, ok := fams[name]
		if !ok || len(f.GetMetric()) == 0 {
			return 0, fmt.Errorf("no %s in the metrics", name)
		}
		m := f.GetMetric()[0]
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), nil
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), nil
		}
		return 0, fmt.Errorf("%s is neither a counter nor a gauge", name)
	}
	c, err := value("process_cpu_seconds_total")
	if err != nil {
		return 0, 0, err
	}
	r, err := value("process_resident_memory_bytes")
	if err != nil {
		return 0, 0, err
	}
	return time.Duration(c * float64(time.Second)), int64(r), nil
}
