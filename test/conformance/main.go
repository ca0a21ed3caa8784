// Command conformance runs an upstream conformance suite (the Kubernetes
// e2e tests for Services or NetworkPolicy, or the network-policy-api
// conformance suite) against a Kubernetes lab with one service proxy and
// writes docs/conformance.md and its JSON: every case with pass, fail or
// skip and why, beside the other runs kept in the JSON.
//
//	go run ./test/conformance [-suite services|netpol|cnp] [-proxy kube-proxy|podnet] [-nodes 3] [-procs 2] [-timeout 2h] [-keep] [-md docs/conformance.md] [-json docs/conformance.json]
//	go run ./test/conformance -render   # only regenerate the markdown from the JSON
//	go run ./test/conformance -report DIR/report.json -suite S -proxy P -nodes N -procs N   # add a finished run (cnp: DIR/cnp.json, DIR/cnp-report.yaml beside it)
//
// It needs root (the lab) and podnet's built binaries (make build); the
// Kubernetes binaries, e2e.test, ginkgo, agnhost, CoreDNS and the
// network-policy-api suite are built (or taken from internal/kube's
// cache). The lab has a random name and is
// taken down also on failure.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/conformance"
	"github.com/podnet/podnet/internal/lab"
)

func main() {
	var (
		cfg                           conformance.Config
		suite, proxy, md, js, workDir string
		focus, skip                   string
		report                        string
		render                        bool
		bins                          lab.Binaries
	)
	flag.StringVar(&suite, "suite", string(conformance.Services), "the tests: services, netpol (the e2e suites) or cnp (network-policy-api)")
	flag.StringVar(&proxy, "proxy", string(conformance.KubeProxy), "the cluster's service proxy: kube-proxy or podnet")
	flag.IntVar(&cfg.Nodes, "nodes", 3, "the lab's nodes (cases of externalTrafficPolicy changes need 3)")
	flag.IntVar(&cfg.Procs, "procs", 2, "cases run in parallel (e2e processes; cnp: go test -parallel)")
	flag.StringVar(&focus, "focus", "", "e2e cases to run (ginkgo regular expression); empty: the suite's default")
	flag.StringVar(&skip, "skip", "", "e2e cases to leave out (ginkgo regular expression); empty: the suite's default")
	flag.BoolVar(&cfg.SCTP, "sctp", conformance.KernelSCTP(), "the kernel has SCTP (default: probed); false skips the cases needing it")
	flag.DurationVar(&cfg.Timeout, "timeout", 2*time.Hour, "longest the e2e run may take")
	flag.BoolVar(&cfg.Keep, "keep", false, "leave the lab up at the end (podnet lab down --name NAME removes it)")
	flag.StringVar(&workDir, "dir", "", "directory for the run's files (images, e2e.log, report.json); empty: a new temporary one")
	flag.StringVar(&bins.Agent, "agent-bin", "bin/podnet-agent", "podnet-agent binary")
	flag.StringVar(&bins.CNI, "cni-bin", "bin/podnet-cni", "podnet-cni binary")
	flag.StringVar(&bins.CLI, "cli-bin", "bin/podnet", "podnet CLI binary (node supervisor, image)")
	flag.StringVar(&md, "md", "docs/conformance.md", "the markdown report to write")
	flag.StringVar(&js, "json", "docs/conformance.json", "the results JSON, read (the other proxy's run) and written")
	flag.BoolVar(&render, "render", false, "run nothing: regenerate -md from -json")
	flag.StringVar(&report, "report", "", "run nothing: add the finished run of this report (ginkgo JSON report.json; cnp: the events cnp.json, cnp-report.yaml beside it), made with -suite, -proxy, -nodes, -procs, -focus, -skip, -sctp, to -json and -md")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, suite, proxy, focus, skip, bins, workDir, md, js, report, render); err != nil {
		fmt.Fprintln(os.Stderr, "conformance:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg conformance.Config, suite, proxy, focus, skip string, bins lab.Binaries, workDir, md, js, report string, render bool) error {
	results, err := conformance.LoadResults(js)
	if err != nil {
		return err
	}
	if cfg.Proxy, err = conformance.ParseProxy(proxy); err != nil {
		return err
	}
	if cfg.Suite, err = conformance.ParseSuite(suite); err != nil {
		return err
	}
	cfg.Focus, cfg.Skip = cfg.Suite.DefaultSelection(cfg.SCTP)
	if focus != "" {
		cfg.Focus = focus
	}
	if skip != "" {
		cfg.Skip = skip
	}
	var res *conformance.RunResult
	switch {
	case render:
	case report != "" && cfg.Suite == conformance.ClusterNetworkPolicy:
		if res, err = conformance.ParseCNPReport(report, filepath.Join(filepath.Dir(report), conformance.CNPReportFile), cfg); err != nil {
			return err
		}
		res.Nodes, res.Procs = cfg.Nodes, cfg.Procs
	case report != "":
		if res, err = conformance.ParseReport(report, cfg); err != nil {
			return err
		}
		res.Nodes, res.Procs = cfg.Nodes, cfg.Procs
	default:
		if os.Geteuid() != 0 {
			return errors.New("needs root: creates network namespaces and runs Kubernetes nodes")
		}
		for _, p := range []*string{&bins.Agent, &bins.CNI, &bins.CLI} {
			if *p, err = filepath.Abs(*p); err != nil {
				return err
			}
		}
		cfg.LabBins = bins
		if workDir == "" {
			if workDir, err = os.MkdirTemp("", "podnet-conformance-"); err != nil {
				return err
			}
		}
		cfg.Dir = workDir
		cfg.Out = os.Stderr
		if res, err = conformance.Run(ctx, cfg); err != nil {
			return fmt.Errorf("%w (the run's files: %s)", err, workDir)
		}
		pass, fail, skipped := res.Counts()
		fmt.Fprintf(os.Stderr, "conformance: %s, %s: %d passed, %d failed, %d skipped (the run's files: %s)\n", res.Suite, res.Proxy, pass, fail, skipped, workDir)
	}
	if res != nil {
		results.Add(res)
		b, err := results.JSON()
		if err != nil {
			return err
		}
		if _, err := atomicfile.Write(js, b, 0o644); err != nil {
			return err
		}
	}
	if _, err := atomicfile.Write(md, []byte(results.Markdown()), 0o644); err != nil {
		return err
	}
	return nil
}
