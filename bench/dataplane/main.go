// Command dataplane measures podnet's data plane against its references in
// one run: iperf3 TCP throughput and TCP request/response latency for
//
//   - same node: a bare veth pair between two namespaces (the reference),
//     two pods on one lab node through podnet's routed `podnet` plugin,
//     two pods on podnet's `bridge` plugin, and for context the reference
//     plugins' bridge and ptp;
//   - across nodes, host-gw: the bare underlay between two lab nodes (eth0
//     through the segment's switch) as the reference, and a pod on each;
//   - across nodes, VXLAN: the same in a second lab built with the vxlan
//     backend on one segment (so the underlay is the same kind).
//
// Paths are measured alternating (the order flips every repetition), and
// each figure is the median over the repetitions, printed as a ratio to
// its reference with the VISION.md bar and "meets"/"misses". Across VXLAN
// it also checks that there is no MTU black hole: a DF echo of exactly the
// pod MTU and a 64 MiB transfer pass, and a DF echo one byte larger is
// refused at the pod (so the first check was not fragmented).
//
//	go run ./bench/dataplane [-t 10] [-reps 3] [-md docs/performance.md] [-json FILE]
//
// It needs root, iperf3, and the built binaries (make build). Everything
// it creates lives in namespaces of its own, removed also on failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

type options struct {
	secs, omit, reps int
	roundTrips       int
	agentBin, cniBin string
	reference        bool
	out              benchdoc.Output
}

func main() {
	var o options
	flag.IntVar(&o.secs, "t", 10, "iperf3 seconds per run")
	flag.IntVar(&o.omit, "omit", 1, "iperf3 seconds omitted at the start of each run (slow start); 0 with -t < 3")
	flag.IntVar(&o.reps, "reps", 3, "repetitions of every path (alternating)")
	flag.IntVar(&o.roundTrips, "rr", 20000, "request/response round trips per path and repetition")
	flag.StringVar(&o.agentBin, "agent-bin", "bin/podnet-agent", "podnet-agent binary")
	flag.StringVar(&o.cniBin, "cni-bin", "bin/podnet-cni", "podnet-cni binary")
	flag.BoolVar(&o.reference, "reference", true, "also measure the reference plugins' bridge and ptp (context, no bar)")
	o.out.Flags()
	flag.Parse()
	if o.secs < 3 {
		o.omit = 0
	}
	benchdoc.Main("dataplane", func(ctx context.Context) error { return run(ctx, o) })
}

// path is one measured path and its figures.
type path struct {
	Name   string   `json:"name"`
	Group  string   `json:"group"`
	Ref    string   `json:"reference,omitempty"` // the path it is compared to; empty for a reference
	Bar    float64  `json:"bar,omitempty"`       // minimum throughput ratio; 0: context, no bar
	Client endpoint `json:"client"`
	Server endpoint `json:"server"`

	Runs []throughput    `json:"runs"`
	RTTs []time.Duration `json:"-"`

	// Summary, filled by summarize.
	Gbps        float64 `json:"medianGbps"`
	Ratio       float64 `json:"ratio,omitempty"`
	Verdict     string  `json:"verdict,omitempty"`
	RTTp50us    float64 `json:"rttP50us"`
	RTTp99us    float64 `json:"rttP99us"`
	RTTRatio    float64 `json:"rttP50Ratio,omitempty"`
	Retransmits int     `json:"retransmits"`
}

// mtuCheck is the outcome of the no-black-hole checks on one path.
type mtuCheck struct {
	Path       string  `json:"path"`
	PodMTU     int     `json:"podMTU"`
	DFPing     string  `json:"dfPingAtMTU"`      // "ok" or the error
	Oversize   string  `json:"dfPingMTUPlus1"`   // "refused (EMSGSIZE)" or what happened
	Transfer   string  `json:"transfer64MiB"`    // "ok" or the error
	TransferMB float64 `json:"transferMBperSec"` // of the 64 MiB transfer
}

// result is everything the run measured.
type result struct {
	Machine    benchdoc.Machine `json:"machine"`
	Seconds    int              `json:"iperfSeconds"`
	Reps       int              `json:"reps"`
	RoundTrips int              `json:"roundTrips"`
	Paths      []*path          `json:"paths"`
	MTU        []mtuCheck       `json:"mtuChecks"`
	Took       time.Duration    `json:"took"`
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces")
	}
	start := time.Now()
	bins, err := benchlab.Binaries(lab.Binaries{Agent: o.agentBin, CNI: o.cniBin})
	if err != nil {
		return err
	}
	var c cleanup
	defer func() {
		fmt.Fprintln(os.Stderr, "removing the namespaces and labs …")
		if cerr := c.run(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("cleanup: %w", cerr))
		}
	}()
	paths, err := build(ctx, &c, o, bins)
	if err != nil {
		return err
	}
	res := &result{Machine: benchdoc.ThisMachine("iperf3"), Seconds: o.secs, Reps: o.reps, RoundTrips: o.roundTrips, Paths: paths}
	for _, p := range paths {
		if !strings.Contains(p.Group, "across") || p.Ref == "" {
			continue
		}
		fmt.Fprintf(os.Stderr, "MTU checks on %s …\n", p.Name)
		res.MTU = append(res.MTU, checkMTU(p))
	}
	for rep := 0; rep < o.reps; rep++ {
		order := alternate(paths, rep)
		for _, p := range order {
			fmt.Fprintf(os.Stderr, "rep %d/%d: iperf3 %s (%s → %s) …\n", rep+1, o.reps, p.Name, p.Client.Label, p.Server.Label)
			t, err := iperf(ctx, p.Client, p.Server, o.secs, o.omit)
			if err != nil {
				return err
			}
			p.Runs = append(p.Runs, t)
		}
		for _, p := range order {
			fmt.Fprintf(os.Stderr, "rep %d/%d: %d round trips %s …\n", rep+1, o.reps, o.roundTrips, p.Name)
			rtts, err := pingPong(p.Client, p.Server, o.roundTrips, o.roundTrips/20)
			if err != nil {
				return err
			}
			p.RTTs = append(p.RTTs, rtts...)
		}
	}
	summarize(paths)
	res.Took = time.Since(start).Round(time.Second)
	text := report(res)
	fmt.Print(text)
	return o.out.Publish("bench/dataplane", markdown(res, text), res)
}

// alternate returns the paths in order on even repetitions, reversed on
// odd ones, so no path always runs first or last.
func alternate(paths []*path, rep int) []*path {
	out := append([]*path(nil), paths...)
	if rep%2 == 1 {
		for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

// Groups and their references.
const (
	sameNode  = "same node"
	acrossHGW = "across nodes, host-gw"
	acrossVX  = "across nodes, VXLAN"
	refVeth   = "bare veth pair"
	refHGW    = "underlay (host-gw lab)"
	refVX     = "underlay (VXLAN lab)"
)

// build makes every topology and returns the paths to measure, each
// reference next to what is compared to it.
func build(ctx context.Context, c *cleanup, o options, bins lab.Binaries) ([]*path, error) {
	var paths []*path
	add := func(name, group, ref string, bar float64, a, b endpoint) {
		paths = append(paths, &path{Name: name, Group: group, Ref: ref, Bar: bar, Client: a, Server: b})
	}
	fmt.Fprintln(os.Stderr, "bare veth pair …")
	a, b, err := vethPair(c)
	if err != nil {
		return nil, err
	}
	add(refVeth, sameNode, "", 0, a, b)

	fmt.Fprintln(os.Stderr, "lab with the host-gw backend …")
	hg, err := twoNodeLab(ctx, c, "hg", cluster.HostGW, bins, os.Stderr)
	if err != nil {
		return nil, err
	}
	eps, err := labEndpoints(hg, "n1-p1", "n1-p2", "n2-p1")
	if err != nil {
		return nil, err
	}
	add("podnet routed (podnet plugin)", sameNode, refVeth, 0.95, eps[0], eps[1])

	fmt.Fprintln(os.Stderr, "podnet bridge …")
	links, err := cnibin.Links(bins.CNI)
	if err != nil {
		return nil, err
	}
	a, b, err = cniPair(ctx, c, "pnbpbr", sandbox.Options{Plugins: links}, sandbox.Bridge("pnbench0", sandbox.HostLocal("10.98.1.0/24", "")))
	if err != nil {
		return nil, err
	}
	add("podnet bridge", sameNode, refVeth, 0.95, a, b)
	if o.reference {
		if err := sandbox.HaveReference("bridge", "ptp", "host-local"); err != nil {
			return nil, fmt.Errorf("%w (-reference=false skips them)", err)
		}
		ref := sandbox.Options{CNIPath: []string{sandbox.ReferenceDir}}
		a, b, err = cniPair(ctx, c, "pnbrbr", ref, sandbox.Bridge("pnbench0", sandbox.HostLocal("10.98.2.0/24", "")))
		if err != nil {
			return nil, err
		}
		add("reference bridge", sameNode, refVeth, 0, a, b)
		a, b, err = cniPair(ctx, c, "pnbrpt", ref, sandbox.PTP(sandbox.HostLocal("10.98.3.0/24", "")))
		if err != nil {
			return nil, err
		}
		add("reference ptp", sameNode, refVeth, 0, a, b)
	}

	u1, err := labNode(hg, "n1")
	if err != nil {
		return nil, err
	}
	u2, err := labNode(hg, "n2")
	if err != nil {
		return nil, err
	}
	add(refHGW, acrossHGW, "", 0, u1, u2)
	add("podnet host-gw", acrossHGW, refHGW, 0.90, eps[0], eps[2])

	fmt.Fprintln(os.Stderr, "lab with the vxlan backend …")
	vx, err := twoNodeLab(ctx, c, "vx", cluster.VXLAN, bins, os.Stderr)
	if err != nil {
		return nil, err
	}
	veps, err := labEndpoints(vx, "n1-p1", "n2-p1")
	if err != nil {
		return nil, err
	}
	if u1, err = labNode(vx, "n1"); err != nil {
		return nil, err
	}
	if u2, err = labNode(vx, "n2"); err != nil {
		return nil, err
	}
	add(refVX, acrossVX, "", 0, u1, u2)
	add("podnet VXLAN", acrossVX, refVX, 0.75, veps[0], veps[1])
	return paths, nil
}

func labEndpoints(l *lab.Lab, pods ...string) ([]endpoint, error) {
	var out []endpoint
	for _, p := range pods {
		e, err := labPod(l, p)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// checkMTU runs the no-black-hole checks from the path's client pod.
func checkMTU(p *path) mtuCheck {
	m := mtuCheck{Path: p.Name}
	mtu, err := p.Client.linkMTU("eth0")
	if err != nil {
		m.DFPing, m.Oversize, m.Transfer = err.Error(), "-", "-"
		return m
	}
	m.PodMTU = mtu
	m.DFPing = "ok"
	if err := p.Client.dfPing(p.Server.IP, mtu); err != nil {
		m.DFPing = err.Error()
	}
	m.Oversize = "refused (EMSGSIZE)"
	if err := p.Client.dfPing(p.Server.IP, mtu+1); err == nil {
		m.Oversize = "answered: DF was not honoured"
	} else if !errors.Is(err, syscall.EMSGSIZE) {
		m.Oversize = err.Error()
	}
	m.Transfer = "ok"
	const size = 64 << 20
	took, err := transfer(p.Client, p.Server, size, 60*time.Second)
	if err != nil {
		m.Transfer = err.Error()
	} else {
		m.TransferMB = float64(size) / (1 << 20) / took.Seconds()
	}
	return m
}
