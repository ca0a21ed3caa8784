package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/bench/internal/benchnet"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// probe is a real pod on a lab node: busybox run by containerd through
// kubelet, attached by podnet's CNI plugin; the benchmark serves TCP in
// its network namespace and connects from it.
type probe struct {
	node string
	name string
	ip   netip.Addr
	ns   *netns.NS
	ln   net.Listener
}

// Reachability is tried by TCP connects started every attemptEvery, each
// given up after attemptTimeout (below the 1 s of a SYN's first
// retransmission: an attempt sees the policy of its one SYN). A connect
// that succeeds is proof of an allowing policy; one that fails may also
// have been starved on a loaded machine, so denial is a run of
// deniedRun failed attempts in a row.
const (
	attemptEvery   = 10 * time.Millisecond
	attemptTimeout = 500 * time.Millisecond
	deniedRun      = 5
)

// errNotSeen is a reachability change not seen before its deadline.
var errNotSeen = errors.New("not seen")

// startProbes runs a probe pod on each of the lab's nodes, waits until
// they run, and serves benchnet's server on probePort in each.
func startProbes(ctx context.Context, l *lab.Lab, c kubernetes.Interface, timeout time.Duration) (probes []*probe, err error) {
	defer func() {
		if err != nil {
			err = errors.Join(err, closeProbes(probes))
		}
	}()
	grace := int64(1)
	for i, n := range l.Nodes {
		p := &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: probeNamespace, Name: fmt.Sprintf("probe-%d", i), Labels: map[string]string{"bench": "probe"}},
			Spec: corev1.PodSpec{
				NodeName:                      n.Name,
				TerminationGracePeriodSeconds: &grace,
				Containers: []corev1.Container{{
					Name: "sleep", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
					Command: []string{"sleep", "1000000000"},
				}},
			},
		}
		if _, err := c.CoreV1().Pods(probeNamespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			return nil, fmt.Errorf("probe pod %s: %w", p.Name, err)
		}
	}
	deadline := time.Now().Add(timeout)
	for i, n := range l.Nodes {
		name := fmt.Sprintf("probe-%d", i)
		var ip netip.Addr
		for {
			kp, err := c.CoreV1().Pods(probeNamespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return probes, fmt.Errorf("probe pod %s: %w", name, err)
			}
			if kp.Status.Phase == corev1.PodRunning && kp.Status.PodIP != "" {
				if ip, err = netip.ParseAddr(kp.Status.PodIP); err != nil {
					return probes, fmt.Errorf("probe pod %s: podIP: %w", name, err)
				}
				break
			}
			if time.Now().After(deadline) {
				return probes, fmt.Errorf("probe pod %s on %s not running after %s (phase %s)", name, n.Name, timeout, kp.Status.Phase)
			}
			if err := benchlab.Pause(ctx, 250*time.Millisecond); err != nil {
				return probes, err
			}
		}
		ns, err := l.PodNetNS(ctx, probeNamespace, name)
		if err != nil {
			return probes, err
		}
		p := &probe{node: n.Name, name: name, ip: ip, ns: ns}
		probes = append(probes, p)
		if p.ln, err = benchnet.Serve(ns, probePort); err != nil {
			return probes, fmt.Errorf("probe pod %s: %w", name, err)
		}
	}
	return probes, nil
}

func closeProbes(probes []*probe) error {
	var errs []error
	for _, p := range probes {
		if p.ln != nil {
			errs = append(errs, p.ln.Close())
		}
		errs = append(errs, p.ns.Close())
	}
	return errors.Join(errs...)
}

// server is the probe's TCP server.
func (p *probe) server() netip.AddrPort { return netip.AddrPortFrom(p.ip, probePort) }

// pair is a probe, reached from the probe of the next node: its node's
// ingress policy decides, for traffic that crosses the underlay.
type pair struct{ from, to *probe }

// pairs are the probes each reached from the next node's.
func pairs(probes []*probe) []pair {
	var out []pair
	for i, p := range probes {
		out = append(out, pair{from: probes[(i+1)%len(probes)], to: p})
	}
	return out
}

// reach tries one TCP connect from the namespace to addr.
func reach(ctx context.Context, from *netns.NS, to netip.AddrPort) bool {
	c, err := from.DialContext(ctx, &net.Dialer{Timeout: attemptTimeout}, "tcp4", to.String())
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// firstOutcome starts connects from → to every attemptEvery until one
// gets want (connected: true; refused or timed out, deniedRun in a row:
// false) and returns when the first attempt in start order that got it
// began, after t0; errNotSeen when none did by t0+timeout.
func firstOutcome(ctx context.Context, p pair, want bool, t0 time.Time, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	need := 1
	if !want {
		need = deniedRun
	}
	// Attempts in flight are at most attemptTimeout/attemptEvery + 1: the
	// buffer takes the results of those still running on return.
	results := make(chan attempt, 2*int(attemptTimeout/attemptEvery))
	var done []*attempt
	launch := func() {
		i, at := len(done), time.Now()
		done = append(done, nil)
		go func() { results <- attempt{i: i, at: at, ok: reach(ctx, p.from.ns, p.to.server()) == want} }()
	}
	tick := time.NewTicker(attemptEvery)
	defer tick.Stop()
	deadline := time.NewTimer(time.Until(t0.Add(timeout)))
	defer deadline.Stop()
	expired := false
	launch()
	for {
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-deadline.C:
			expired = true
		case <-tick.C:
			if !expired {
				launch()
			}
		case r := <-results:
			done[r.i] = &r
		}
		i, decided := firstRun(done, need)
		switch {
		case i >= 0:
			return done[i].at.Sub(t0), nil
		case expired && decided:
			return 0, fmt.Errorf("%s → %s %s after %s: %w", p.from.name, p.to.name, outcome(want), timeout, errNotSeen)
		}
	}
}

// attempt is one connect attempt's result: the i-th started, at at, got
// the outcome wanted or not.
type attempt struct {
	i  int
	at time.Time
	ok bool
}

// firstRun is the index of the first of the first need attempts in a row
// (in start order) that got the outcome wanted, -1 when there is none
// yet; decided is false while an attempt without its result may still
// start or complete such a run.
func firstRun(done []*attempt, need int) (first int, decided bool) {
	run := 0
	for j, r := range done {
		switch {
		case r == nil:
			return -1, false
		case r.ok:
			run++
			if run == need {
				return j - need + 1, true
			}
		default:
			run = 0
		}
	}
	return -1, true
}

func outcome(connects bool) string {
	if connects {
		return "connecting"
	}
	return "denied"
}

// onEveryNode times, for every pair at once, t0 → the first connect
// getting want, and returns the time by which every node had it (the
// slowest) and each node's.
func onEveryNode(ctx context.Context, ps []pair, want bool, t0 time.Time, timeout time.Duration) (time.Duration, []time.Duration, error) {
	per := make([]time.Duration, len(ps))
	errs := make([]error, len(ps))
	done := make(chan struct{})
	for i, p := range ps {
		go func() {
			per[i], errs[i] = firstOutcome(ctx, p, want, t0, timeout)
			done <- struct{}{}
		}()
	}
	for range ps {
		<-done
	}
	if err := errors.Join(errs...); err != nil {
		return 0, per, err
	}
	return slices.Max(per), per, nil
}
