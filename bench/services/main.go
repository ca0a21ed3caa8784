// Command services benchmarks podnet's service proxy against upstream
// kube-proxy v1.32.3 in nftables mode and in iptables mode, on the same
// API and the same node topology, in one run.
//
// One real control plane (internal/kube) in a throwaway network namespace
// holds the Services: selector-less TCP Services (every tenth a NodePort
// one), each with an EndpointSlice of 5 ready endpoints created directly
// (no pods), created by parallel clients. For every scale (-scales,
// ascending: the API grows from one to the next) the proxies run one
// after the other, each on a fresh node: a network namespace with an
// underlay veth into the control plane's, a client namespace routed
// through it and an endpoint namespace holding the endpoints of svc-0
// with a TCP server. podnet's proxy is the controller of package services
// (what podnet-agent runs with --service-proxy) in its own process
// (bench/services/proxy, -proxy-bin), so its CPU and memory are read as
// kube-proxy's are, from /proc (children included: kube-proxy execs nft
// and iptables-restore).
//
// Per proxy and scale: the cold start (process started with the Services
// in the API → every ClusterIP in the kernel, seen by polling the kernel;
// and the proxy's own sync histogram at that moment); -trials times a
// Service added (EndpointSlice first, then the Service: its create call →
// its ClusterIP in the kernel) and an endpoint changed (the slice's update
// → the new address in the kernel), each -gap after the previous was seen
// (kube-proxy's default minSyncPeriod is 1 s: a lone update); TCP connect
// latency from the client to svc-0's ClusterIP and, as the reference, to
// an endpoint directly; at the largest scale, a TCP stream's throughput
// and one-byte request/response through the ClusterIP and direct.
//
// The kernel is polled through netlink: podnet's and kube-proxy's
// address . protocol . port verdict maps, podnet's hairpin set and
// kube-proxy's endpoint chains; iptables mode through iptables-save in
// the node's namespace.
//
//	go run ./bench/services -proxy-bin bin/bench-services-proxy [-scales 10,1000,5000,10000] [-trials 20] [-md docs/performance.md] [-json FILE]
//
// It needs root, nft and iptables-save on PATH; the Kubernetes binaries
// are taken from (or built into) kube.Build's cache. Everything it
// creates is removed at the end, also on failure or interrupt.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/bench/internal/benchnet"
)

type options struct {
	scales      []int
	trials      int
	connects    int
	gap         time.Duration
	streamFor   time.Duration
	proxies     []string
	proxyBin    string
	coldTimeout time.Duration
	settle      time.Duration
	keep        bool
	out         benchdoc.Output
}

func main() {
	var o options
	scales := flag.String("scales", "10,1000,5000,10000", "numbers of Services (× 5 endpoints), comma-separated")
	proxies := flag.String("proxies", strings.Join([]string{proxyPodnet, proxyNFTables, proxyIPTables}, ","), "the proxies compared, comma-separated")
	flag.IntVar(&o.trials, "trials", 20, "Services added, and endpoints changed, per proxy and scale")
	flag.IntVar(&o.connects, "connects", 500, "TCP connects timed per proxy and scale (and direct)")
	flag.DurationVar(&o.gap, "gap", 1100*time.Millisecond, "pause between updates: each is a lone one (kube-proxy's minSyncPeriod is 1 s)")
	flag.DurationVar(&o.streamFor, "stream", 3*time.Second, "length of a throughput run (3 through the ClusterIP, 3 direct, alternating)")
	flag.StringVar(&o.proxyBin, "proxy-bin", "bin/bench-services-proxy", "podnet's service proxy (go build ./bench/services/proxy)")
	flag.DurationVar(&o.coldTimeout, "cold-timeout", 10*time.Minute, "longest a proxy may take to program every Service from cold")
	flag.DurationVar(&o.settle, "settle", 2*time.Minute, "longest wait for a quiet machine (90 % idle CPU, two seconds in a row) before a proxy's cold start, its connects and its traffic; 0: no wait")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (proxy logs, control plane) for inspection")
	render := flag.Bool("render", false, "measure nothing: render -md's section again from the figures in -json (after a change of the report's prose)")
	o.out.Flags()
	flag.Parse()
	if *render {
		benchdoc.Main("services", func(context.Context) error { return rerender(o) })
		return
	}
	benchdoc.Main("services", func(ctx context.Context) error {
		var err error
		if o.scales, err = parseScales(*scales); err != nil {
			return err
		}
		o.proxies = strings.Split(*proxies, ",")
		return run(ctx, o)
	})
}

// rerender writes the report of the run recorded in -json again.
func rerender(o options) error {
	if o.out.JSON == "" || o.out.MD == "" {
		return errors.New("-render needs -json (read) and -md (written)")
	}
	b, err := os.ReadFile(o.out.JSON)
	if err != nil {
		return err
	}
	var res result
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("%s: %w", o.out.JSON, err)
	}
	return o.out.Publish("bench/services", markdown(&res), &res)
}

// parseScales parses -scales.
func parseScales(s string) ([]int, error) { return benchdoc.ParseScales(s, "Services", 1, 50000) }

// bench is one run's shared state.
type bench struct {
	o   options
	dir string
	api *apiCluster
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces and runs a control plane")
	}
	if o.trials < 1 || o.connects < 1 {
		return errors.New("needs -trials ≥ 1 and -connects ≥ 1")
	}
	for _, tool := range []string{"nft", "iptables-save"} {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%s: %w (kube-proxy execs nft; iptables-save observes iptables mode)", tool, err)
		}
	}
	if o.proxyBin, err = filepath.Abs(o.proxyBin); err != nil {
		return err
	}
	if _, err := os.Stat(o.proxyBin); err != nil {
		return fmt.Errorf("-proxy-bin: %w (go build -o %s ./bench/services/proxy)", err, o.proxyBin)
	}
	var kinds []proxyKind
	for _, k := range proxyKinds(o) {
		if slices.Contains(o.proxies, k.name) {
			kinds = append(kinds, k)
		}
	}
	if len(kinds) == 0 {
		return fmt.Errorf("-proxies: none of %q known (%s, %s, %s)", o.proxies, proxyPodnet, proxyNFTables, proxyIPTables)
	}
	start := time.Now()
	res := &result{Machine: benchdoc.ThisMachine("nft", "iptables"), LoadStart: benchdoc.LoadAverage(),
		Scales: o.scales, Trials: o.trials, Connects: o.connects, Gap: o.gap}
	b := &bench{o: o}
	if b.dir, err = os.MkdirTemp("", "bench-services-"); err != nil {
		return err
	}
	defer func() {
		if o.keep {
			fmt.Fprintf(os.Stderr, "kept %s\n", b.dir)
			return
		}
		err = errors.Join(err, os.RemoveAll(b.dir))
	}()
	fmt.Fprintln(os.Stderr, "starting the control plane …")
	if b.api, err = startCluster(ctx, filepath.Join(b.dir, "cp"), os.Stderr); err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.api.stop()) }()
	k := 0
	for _, n := range o.scales {
		t := time.Now()
		have := len(b.api.clusterIPs)
		if err := b.api.grow(ctx, n); err != nil {
			return err
		}
		took := time.Since(t)
		res.Created = append(res.Created, created{Services: n, Added: n - have, Took: took})
		fmt.Fprintf(os.Stderr, "%d Services in the API (%d added in %s, %.0f/s)\n", n, n-have, took.Round(time.Millisecond), float64(n-have)/took.Seconds())
		for _, kind := range kinds {
			k++
			r, err := b.measure(ctx, kind, k, n, n == o.scales[len(o.scales)-1])
			if err != nil {
				return fmt.Errorf("%s at %d Services: %w", kind.name, n, err)
			}
			fmt.Fprintln(os.Stderr, r.summary())
			res.Runs = append(res.Runs, r)
		}
		// Published after every scale: a run cut short (the larger
		// scales take long) leaves what it measured.
		res.Measured = append(res.Measured, n)
		if err := publish(o, res, start, n == o.scales[len(o.scales)-1]); err != nil {
			return err
		}
	}
	return nil
}

// publish writes the report of what res holds so far; final prints it.
func publish(o options, res *result, start time.Time, final bool) error {
	res.LoadEnd = benchdoc.LoadAverage()
	res.Took = time.Since(start).Round(time.Second)
	if final {
		fmt.Print(report(res))
	}
	return o.out.Publish("bench/services", markdown(res), res)
}

// measure runs the proxy kind as node k with n Services in the API.
func (b *bench) measure(ctx context.Context, kind proxyKind, k, n int, largest bool) (r *proxyRun, err error) {
	r = &proxyRun{Proxy: kind.name, Services: n}
	nd, err := newNode(k, b.api.ns)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, nd.remove()) }()
	if err := b.api.createNode(ctx, nd.name, nd.ip.AsSlice()); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, b.api.deleteNode(context.WithoutCancel(ctx), nd.name)) }()
	ln, err := benchnet.Serve(nd.endpoint.NS, targetPort)
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	b.quiet(ctx, "before the cold start")
	p, err := b.start(kind, nd)
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, p.stop()) }()
	obs := kind.observer(nd)

	// Cold start: every ClusterIP programmed.
	want := b.api.clusterIPs
	seen, err := poll(ctx, p, b.o.coldTimeout, func() (bool, error) {
		have, err := obs.clusterIPs()
		if err != nil || len(have) < len(want) {
			return false, err
		}
		for _, ip := range want {
			if !have[ip] {
				return false, nil
			}
		}
		return true, nil
	})
	if errors.Is(err, errNotSeen) {
		// Recorded, not fatal: kube-proxy's iptables mode takes minutes
		// at 5,000 Services and more than the bound at 10,000; the other
		// proxies' figures at this scale still count.
		r.ColdTimedOut, r.Cold = true, b.o.coldTimeout
		fmt.Fprintf(os.Stderr, "%s at %d Services: %v\n", kind.name, n, err)
		if r.Usage, err = p.usage(); err != nil {
			return nil, err
		}
		r.ColdUsage = r.Usage
		return r, nil
	}
	if err != nil {
		return nil, fmt.Errorf("cold start: %w", err)
	}
	r.Cold = seen.Sub(p.started)
	// kube-proxy observes its sync's duration after the transaction:
	// the histogram may lag the kernel a moment.
	if _, err := poll(ctx, p, 30*time.Second, func() (bool, error) {
		var err error
		r.ColdSyncs, r.ColdSyncTime, err = p.syncs(ctx)
		return r.ColdSyncs > 0, err
	}); err != nil {
		return nil, fmt.Errorf("the proxy's first sync in its metrics: %w", err)
	}
	if r.ColdUsage, err = p.usage(); err != nil {
		return nil, err
	}

	// Connect latency, through svc-0's ClusterIP and direct, alternating
	// in ten rounds: both see the machine in the same state.
	svc0 := netip.AddrPortFrom(want[0], servicePort)
	direct := netip.AddrPortFrom(realEndpoints[0], targetPort)
	b.quiet(ctx, "before the connects")
	for round := range connectRounds {
		n := b.o.connects / connectRounds
		if round == 0 {
			n += b.o.connects % connectRounds
		}
		for _, c := range []struct {
			to  netip.AddrPort
			out *[]time.Duration
		}{{svc0, &r.Connect}, {direct, &r.ConnectDirect}} {
			times, err := benchnet.ConnectTimes(ctx, nd.client.NS, c.to, n)
			if err != nil {
				return nil, err
			}
			*c.out = append(*c.out, times...)
		}
	}

	// Updates: Services added, endpoints changed.
	before, err := p.usage()
	if err != nil {
		return nil, err
	}
	var added []string
	defer func() {
		for _, name := range added {
			err = errors.Join(err, b.api.deleteService(context.WithoutCancel(ctx), name))
		}
	}()
	for i := range b.o.trials {
		name := fmt.Sprintf("add-%d-%d", k, i)
		if err := b.api.createSlice(ctx, name, endpointsOf(n+k*b.o.trials+i)); err != nil {
			return nil, err
		}
		added = append(added, name)
		if err := benchlab.Pause(ctx, b.o.gap); err != nil {
			return nil, err
		}
		t0 := time.Now()
		ip, err := b.api.createService(ctx, name, false)
		if err != nil {
			return nil, err
		}
		seen, err := poll(ctx, p, time.Minute, func() (bool, error) {
			have, err := obs.clusterIPs()
			return have[ip], err
		})
		if err != nil {
			return nil, fmt.Errorf("service added: %w", err)
		}
		r.Add = append(r.Add, seen.Sub(t0))
	}
	for i := range b.o.trials {
		svc := 1 + i*(n-1)/b.o.trials
		if n == 1 {
			svc = 0
		}
		eps := slices.Clone(endpointsOf(svc))
		fresh := netip.AddrFrom4([4]byte{10, 245, byte(k), byte(i + 1)})
		eps[len(eps)-1] = fresh
		if err := benchlab.Pause(ctx, b.o.gap); err != nil {
			return nil, err
		}
		t0 := time.Now()
		if err := b.api.replaceEndpoint(ctx, serviceName(svc), eps); err != nil {
			return nil, err
		}
		seen, err := poll(ctx, p, time.Minute, func() (bool, error) { return obs.hasEndpoint(fresh) })
		if err != nil {
			return nil, fmt.Errorf("endpoint changed: %w", err)
		}
		r.Endpoint = append(r.Endpoint, seen.Sub(t0))
	}
	after, err := p.usage()
	if err != nil {
		return nil, err
	}
	r.UpdatesCPU = after.CPU - before.CPU
	r.UpdatesWall = 2 * time.Duration(b.o.trials) * b.o.gap

	if largest {
		b.quiet(ctx, "before the traffic")
		if r.Traffic, err = b.traffic(ctx, nd, svc0, direct); err != nil {
			return nil, err
		}
	}
	if r.Usage, err = p.usage(); err != nil {
		return nil, err
	}
	r.finish()
	return r, nil
}

// quietIdle is the share of idle CPU time a measurement waits for.
const quietIdle = 0.9

// connectRounds: the connects through the ClusterIP and direct alternate
// in this many rounds.
const connectRounds = 10

// quiet waits for the machine to be quiet (benchlab.Quiet), at most
// -settle; it only says so when it was not.
func (b *bench) quiet(ctx context.Context, what string) {
	if b.o.settle <= 0 {
		return
	}
	waited, ok, err := benchlab.Quiet(ctx, quietIdle, b.o.settle)
	switch {
	case err != nil:
		fmt.Fprintf(os.Stderr, "%s: waiting for a quiet machine: %v\n", what, err)
	case !ok:
		fmt.Fprintf(os.Stderr, "%s: the machine was not %.0f %% idle within %s; measuring anyway\n", what, 100*quietIdle, waited.Round(time.Second))
	}
}

// traffic measures throughput and request/response through the ClusterIP
// and direct, alternating.
func (b *bench) traffic(ctx context.Context, nd *node, svc, direct netip.AddrPort) (*traffic, error) {
	t := &traffic{}
	for range 3 {
		for _, s := range []struct {
			addr netip.AddrPort
			to   *[]float64
		}{{svc, &t.ClusterIPGbps}, {direct, &t.DirectGbps}} {
			g, err := benchnet.Stream(ctx, nd.client.NS, s.addr, b.o.streamFor)
			if err != nil {
				return nil, err
			}
			*s.to = append(*s.to, g)
		}
	}
	var err error
	if t.RRClusterIP, err = benchnet.RoundTrips(ctx, nd.client.NS, svc, 5000); err != nil {
		return nil, err
	}
	if t.RRDirect, err = benchnet.RoundTrips(ctx, nd.client.NS, direct, 5000); err != nil {
		return nil, err
	}
	return t, nil
}

// poll checks cond every 10 ms until it holds, and returns when the
// check that found it began; it fails when the proxy exits or after
// timeout.
// errNotSeen is poll's error when the condition did not hold in time.
var errNotSeen = errors.New("not in the kernel")

func poll(ctx context.Context, p *process, timeout time.Duration, cond func() (bool, error)) (time.Time, error) {
	deadline := time.Now().Add(timeout)
	var last error
	for {
		at := time.Now()
		ok, err := cond()
		if ok {
			return at, nil
		}
		if err != nil {
			last = err
		}
		if err := p.exited(); err != nil {
			return time.Time{}, err
		}
		if at.After(deadline) {
			return time.Time{}, fmt.Errorf("%w after %s (last error: %v); the proxy's log ends:\n%s", errNotSeen, timeout, last, tail(p.logPath))
		}
		if err := benchlab.Pause(ctx, 10*time.Millisecond); err != nil {
			return time.Time{}, err
		}
	}
}
