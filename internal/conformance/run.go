// Package conformance runs the upstream Kubernetes end-to-end tests for
// Services (`[sig-network] Services`: every [Conformance] case and the
// rest that needs no cloud provider, is not disruptive and not slow)
// against a Kubernetes lab (internal/lab), with the cluster's DNS
// (CoreDNS) and the test images built here, and turns their report into
// docs/conformance.md: every case with pass, fail or skip and why, one
// column per service proxy run.
package conformance

import (
	"bytes"
	"context"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
)

// Proxy is the service proxy the run's cluster runs.
type Proxy string

// The proxies a run can be made with.
const (
	// KubeProxy is upstream kube-proxy on every node (the lab's default).
	KubeProxy Proxy = "kube-proxy"
	// Podnet is podnet-agent's own service proxy and no kube-proxy.
	Podnet Proxy = "podnet"
)

// ParseProxy checks a proxy's name.
func ParseProxy(s string) (Proxy, error) {
	switch p := Proxy(s); p {
	case KubeProxy, Podnet:
		return p, nil
	}
	return "", fmt.Errorf("unknown proxy %q (kube-proxy or podnet)", s)
}

// The default selection: the Services suite without what needs a cloud
// provider (LoadBalancer, ESIPP), disrupts the cluster, must run alone
// or takes long, and without feature-gated cases. No [Conformance] case
// of the suite matches Skip (the report lists any that did).
const (
	DefaultFocus = `\[sig-network\] Services`
	DefaultSkip  = `\[Serial\]|\[Disruptive\]|\[Slow\]|\[Flaky\]|LoadBalancer|ESIPP|\[Feature:`
)

// Config is one run.
type Config struct {
	Proxy Proxy
	// Nodes is the lab's node count (≥ 2: several cases need endpoints on
	// two nodes).
	Nodes int
	// Procs is how many e2e processes run cases in parallel.
	Procs int
	// Focus and Skip select the cases (ginkgo regular expressions on a
	// case's full text).
	Focus, Skip string
	// Timeout bounds the e2e run.
	Timeout time.Duration
	// Dir keeps the run's files: images/, e2e.log, report.json.
	Dir string
	// LabBins are podnet's programs for the lab (its image).
	LabBins lab.Binaries
	// Keep leaves the lab up after the run (podnet lab down --name removes
	// it).
	Keep bool
	// Out gets progress and the e2e output.
	Out io.Writer
}

// validate checks the configuration.
func (c Config) validate() error {
	if _, err := ParseProxy(string(c.Proxy)); err != nil {
		return err
	}
	switch {
	case c.Nodes < 2:
		return fmt.Errorf("needs 2 or more nodes, not %d", c.Nodes)
	case c.Procs < 1:
		return fmt.Errorf("needs 1 or more e2e processes, not %d", c.Procs)
	case c.Timeout <= 0:
		return errors.New("needs a positive timeout")
	case c.Dir == "":
		return errors.New("needs a directory for the run's files")
	}
	for _, re := range []string{c.Focus, c.Skip} {
		if _, err := regexp.Compile(re); err != nil {
			return fmt.Errorf("case selection: %w", err)
		}
	}
	return nil
}

//go:embed coredns.yaml
var corednsManifest []byte

// Run brings up a Kubernetes lab with cfg.Proxy, deploys the cluster DNS
// and the test images, runs the selected e2e cases and returns their
// results; the lab is taken down after (unless cfg.Keep). A run whose
// cases fail is no error: the results say so.
func Run(ctx context.Context, cfg Config) (result *RunResult, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	start := time.Now()
	progress := func(format string, a ...any) {
		fmt.Fprintf(out, "conformance: %s (%s)\n", fmt.Sprintf(format, a...), time.Since(start).Round(time.Second))
	}
	if err := os.MkdirAll(cfg.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("conformance: %w", err)
	}
	bins, err := kube.BuildConformance(ctx, kube.BuildConfig{Out: out})
	if err != nil {
		return nil, err
	}
	progress("e2e.test, ginkgo, agnhost and coredns ready")
	images, err := Images(ctx, filepath.Join(cfg.Dir, "images"), bins)
	if err != nil {
		return nil, err
	}
	spec := labSpec(cfg)
	name := "conf-" + strconv.FormatInt(time.Now().Unix()%1_000_000, 36)
	l, err := lab.New("", name, spec, cfg.LabBins, out)
	if err != nil {
		return nil, err
	}
	defer func() {
		if cfg.Keep {
			fmt.Fprintf(out, "conformance: lab %s left up: podnet lab down --name %s removes it\n", name, name)
			return
		}
		if derr := lab.Down("", name); derr != nil {
			err = errors.Join(err, fmt.Errorf("conformance: lab down: %w", derr))
		}
	}()
	if err := l.Up(ctx); err != nil {
		return nil, err
	}
	progress("lab %s up", name)
	for _, n := range l.Nodes {
		kn, err := l.KubeNode(n.Name)
		if err != nil {
			return nil, err
		}
		if err := kn.ImportImages(ctx, images...); err != nil {
			return nil, err
		}
	}
	progress("images %s, %s, %s imported on every node", AgnhostImage, BusyboxImage, CoreDNSImage)
	if _, err := l.Kubectl(ctx, bytes.NewReader(corednsManifest), "apply", "-f", "-"); err != nil {
		return nil, fmt.Errorf("conformance: cluster DNS: %w", err)
	}
	if _, err := l.Kubectl(ctx, nil, "-n", "kube-system", "rollout", "status", "deployment/coredns", "--timeout=5m"); err != nil {
		return nil, fmt.Errorf("conformance: cluster DNS: %w", err)
	}
	progress("cluster DNS (CoreDNS) serving at %s", lab.ClusterDNS)
	report := filepath.Join(cfg.Dir, "report.json")
	_ = os.Remove(report)
	runErr := runE2E(ctx, cfg, l, bins, report, out)
	progress("e2e run ended: %v", runErr)
	res, perr := ParseReport(report, cfg)
	if perr != nil {
		return nil, errors.Join(runErr, perr)
	}
	res.Nodes = cfg.Nodes
	res.Procs = cfg.Procs
	return res, nil
}

// labSpec is the lab of the run: Kubernetes with cfg.Nodes nodes and the
// proxy asked for: upstream kube-proxy in its default (iptables) mode, or
// podnet's service proxy with no kube-proxy.
func labSpec(cfg Config) lab.Spec {
	spec := lab.Spec{Nodes: cfg.Nodes, Kubernetes: true, KubeProxy: kube.ProxyIPTables}
	if cfg.Proxy == Podnet {
		spec.KubeProxy = lab.KubeProxyNone
	}
	return spec
}

// runE2E runs the selected cases with ginkgo (cfg.Procs processes of
// e2e.test) inside the lab's control plane namespace, which reaches the
// API server and every node's address (NodePort cases connect from the
// test process to the nodes); the JSON report goes to report.
func runE2E(ctx context.Context, cfg Config, l *lab.Lab, bins kube.ConformanceBinaries, report string, out io.Writer) error {
	cp, err := l.ControlPlane()
	if err != nil {
		return err
	}
	ns, err := netns.OpenNamed(l.Kube.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	logFile, err := os.Create(filepath.Join(cfg.Dir, "e2e.log"))
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	defer logFile.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Ginkgo, ginkgoArgs(cfg, bins, cp.AdminKubeconfig(), l.Kube.Bins.Kubectl, report)...)
	cmd.Dir = cfg.Dir
	cmd.Stdout = io.MultiWriter(out, logFile)
	cmd.Stderr = cmd.Stdout
	// Ended (interrupt, timeout), ginkgo and its e2e processes are killed
	// together: the lab goes down after, with everything they made.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("conformance: ginkgo: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("conformance: ginkgo: %w", err)
	}
	return nil
}

// ginkgoArgs is ginkgo's command line running e2e.test: the selection,
// the processes, the report; after "--" e2e.test's own flags (the
// skeleton provider: no cloud, no SSH to nodes).
func ginkgoArgs(cfg Config, bins kube.ConformanceBinaries, kubeconfig, kubectl, report string) []string {
	return []string{
		"run",
		"--procs=" + strconv.Itoa(cfg.Procs),
		"--focus=" + cfg.Focus,
		"--skip=" + cfg.Skip,
		"--timeout=" + cfg.Timeout.String(),
		"--json-report=" + filepath.Base(report),
		"--output-dir=" + filepath.Dir(report),
		"--no-color",
		"--silence-skips",
		bins.E2E,
		"--",
		"--kubeconfig=" + kubeconfig,
		"--kubectl-path=" + kubectl,
		"--provider=skeleton",
		"--num-nodes=" + strconv.Itoa(cfg.Nodes),
		"--dns-domain=" + kube.ClusterDomain,
		"--report-dir=" + filepath.Dir(report),
		"--disable-log-dump",
		"--dump-logs-on-failure=false",
	}
}
