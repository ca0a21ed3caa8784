// Command chaos measures VISION's crash-chaos bar: kill -9 of the runtime
// and its plugins during 1,000 ADD/DEL, then 0 duplicate IPs and 0 leaked
// IPs, links and rules after GC. For each chain that matters — the full
// chain (bridge+host-local, portmap, bandwidth, tuning) and podnet's
// cluster conflist — it runs internal/testing/chaos: N operations through cnitool,
// a few at a time, a share of them SIGKILLed (cnitool and its plugins) at
// a random point, then libcni's GC with the attachments the journal still
// holds valid, the audit, and a teardown. The reference plugins (Debian's
// containernetworking-plugins: CNI up to 1.0.0, no GC verb) run the full
// chain the same way as a contrast: at 1.0.0 a runtime's GC only DELs the
// attachments libcni cached.
//
//	go run ./bench/chaos [-n 1000] [-inflight 6] [-kill 0.3] [-reference] [-md docs/performance.md] [-json FILE]
//
// It needs root; every namespace and file it creates is removed, also on
// failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/chaos"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

type options struct {
	n, inflight, pods int
	kill              float64
	seed              uint64
	reference         bool
	cniBin, cnitool   string
	refDir            string
	out               benchdoc.Output
}

func main() {
	var o options
	flag.IntVar(&o.n, "n", 1000, "ADD and DEL operations per chain")
	flag.IntVar(&o.inflight, "inflight", 6, "operations at once")
	flag.Float64Var(&o.kill, "kill", 0.3, "share of the operations sent SIGKILL")
	flag.IntVar(&o.pods, "pods", 32, "live pods the mix of ADD and DEL hovers around")
	flag.Uint64Var(&o.seed, "seed", 0, "seed of the choices (0: random; the report gives each run's)")
	flag.BoolVar(&o.reference, "reference", true, "also run the reference plugins' full chain (cniVersion 1.0.0, no GC verb) as a contrast")
	flag.StringVar(&o.cniBin, "cni-bin", "", "podnet-cni binary (default: $PODNET_CNI_BIN, else built)")
	flag.StringVar(&o.cnitool, "cnitool", "", "cnitool binary (default: built from the cni module)")
	flag.StringVar(&o.refDir, "ref", sandbox.ReferenceDir, "directory of the reference plugins")
	o.out.Flags()
	flag.Parse()
	benchdoc.Main("chaos", func(ctx context.Context) error { return run(ctx, o) })
}

// run is one chain of one suite.
type runSpec struct {
	suite  string // "podnet", "reference"
	binDir string
	chain  chaos.Chain
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces")
	}
	tmp, err := os.MkdirTemp("", "podnet-chaos-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if o.cnitool == "" {
		o.cnitool = filepath.Join(tmp, "cnitool")
		fmt.Fprintln(os.Stderr, "building cnitool …")
		if err := sandbox.BuildCNITool(ctx, o.cnitool); err != nil {
			return err
		}
	}
	if o.cniBin == "" {
		fmt.Fprintln(os.Stderr, "locating/building podnet-cni …")
		if o.cniBin, err = sandbox.PodnetCNI(ctx, tmp); err != nil {
			return err
		}
	}
	links, err := cnibin.Links(o.cniBin)
	if err != nil {
		return err
	}
	podnetBin := filepath.Join(tmp, "podnet-bin")
	if err := cniruntime.LinkDir(podnetBin, links); err != nil {
		return err
	}
	specs := []runSpec{
		{suite: "podnet", binDir: podnetBin, chain: chaos.FullChain("1.1.0")},
		{suite: "podnet", binDir: podnetBin, chain: chaos.ClusterChain("", "")},
	}
	if o.reference {
		if err := sandbox.HaveReference("bridge", "host-local", "portmap", "bandwidth", "tuning"); err != nil && o.refDir == sandbox.ReferenceDir {
			return err
		}
		if _, err := exec.LookPath("iptables"); err != nil {
			// The reference portmap and bridge (ipMasq) exec it.
			return fmt.Errorf("the reference plugins need iptables (apt-get install iptables): %w", err)
		}
		specs = append(specs, runSpec{suite: "reference", binDir: o.refDir, chain: chaos.FullChain("1.0.0")})
	}
	runner, err := sandbox.NewRunner()
	if err != nil {
		return err
	}
	defer runner.Close()

	res := &result{Machine: benchdoc.ThisMachine(), Ops: o.n, InFlight: o.inflight, KillShare: o.kill, Pods: o.pods}
	start := time.Now()
	for _, s := range specs {
		fmt.Fprintf(os.Stderr, "%s %s: %d operations, %d in flight, %.0f %% killed …\n", s.suite, s.chain.Label, o.n, o.inflight, 100*o.kill)
		rep, err := chaos.Run(ctx, chaos.Config{Chain: s.chain, BinDir: s.binDir, CNITool: o.cnitool, Runner: runner,
			Ops: o.n, InFlight: o.inflight, KillShare: o.kill, Pods: o.pods, Seed: o.seed, Progress: os.Stderr})
		if err != nil {
			return fmt.Errorf("%s %s: %w", s.suite, s.chain.Label, err)
		}
		fmt.Fprint(os.Stderr, rep.Summary())
		res.Runs = append(res.Runs, suiteReport{Suite: s.suite, Report: rep})
	}
	res.Took = time.Since(start).Round(time.Second)
	text := report(res)
	fmt.Print(text)
	if err := o.out.Publish("bench/chaos", markdown(res, text), res); err != nil {
		return err
	}
	for _, r := range res.Runs {
		if r.Suite == "podnet" && !r.Report.Clean() {
			return fmt.Errorf("podnet %s did not recover from the kills:\n%s", r.Report.Chain, r.Report.Summary())
		}
	}
	return nil
}
