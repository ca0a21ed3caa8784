// Package conformance runs upstream conformance suites against a
// Kubernetes lab (internal/lab), with the cluster's DNS (CoreDNS) and the
// test images built here, and turns their reports into
// docs/conformance.md: every case with pass, fail or skip and why, one
// column per service proxy run. The suites: the Kubernetes end-to-end
// tests for Services (`[sig-network] Services`: every [Conformance] case
// and the rest that needs no cloud provider, is not disruptive and not
// slow) and for NetworkPolicy (`[sig-network] Netpol`), and the
// network-policy-api conformance suite (profile ClusterNetworkPolicy).
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
	"slices"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

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

// Suite is the tests a run runs.
type Suite string

// The suites.
const (
	// Services is the e2e suite's `[sig-network] Services`.
	Services Suite = "services"
	// NetworkPolicy is the e2e suite's `[sig-network] Netpol`: every
	// NetworkPolicy case (k8s.io/kubernetes/test/e2e/network/netpol).
	NetworkPolicy Suite = "netpol"
	// ClusterNetworkPolicy is the conformance suite of
	// sigs.k8s.io/network-policy-api (internal/kube/cnp): the profile
	// ClusterNetworkPolicy, its standard (core) features.
	ClusterNetworkPolicy Suite = "cnp"
)

// suiteOrder is the order of the suites' sections.
var suiteOrder = []Suite{Services, NetworkPolicy, ClusterNetworkPolicy}

// ParseSuite checks a suite's name.
func ParseSuite(s string) (Suite, error) {
	if slices.Contains(suiteOrder, Suite(s)) {
		return Suite(s), nil
	}
	return "", fmt.Errorf("unknown suite %q (services, netpol or cnp)", s)
}

// e2e tells whether the suite is cases of the Kubernetes e2e suite
// (selected with ginkgo's focus and skip).
func (s Suite) e2e() bool { return s != ClusterNetworkPolicy }

// The e2e suites' default selections. Services: without what needs a
// cloud provider (LoadBalancer, ESIPP), disrupts the cluster, must run
// alone or takes long, and without feature-gated cases; no [Conformance]
// case of the suite matches the skip (the report lists any that did).
// NetworkPolicy: every case ([Feature:NetworkPolicy] and the API cases),
// those needing SCTP skipped on a kernel without it (SkipNoSCTP).
const (
	ServicesFocus = `\[sig-network\] Services`
	ServicesSkip  = `\[Serial\]|\[Disruptive\]|\[Slow\]|\[Flaky\]|LoadBalancer|ESIPP|\[Feature:`
	NetpolFocus   = `\[sig-network\] Netpol`
	// SkipNoSCTP selects the e2e cases that need SCTP connectivity.
	SkipNoSCTP = `\[Feature:SCTPConnectivity\]`
)

// DefaultSelection is the suite's default focus and skip (none for
// ClusterNetworkPolicy, whose cases are its profile's); sctp says whether
// the kernel has SCTP.
func (s Suite) DefaultSelection(sctp bool) (focus, skip string) {
	switch s {
	case Services:
		return ServicesFocus, ServicesSkip
	case NetworkPolicy:
		if !sctp {
			skip = SkipNoSCTP
		}
		return NetpolFocus, skip
	}
	return "", ""
}

// skipWhy explains skip rules beyond their text, in the report.
var skipWhy = map[string]string{
	SkipNoSCTP: "this kernel has no SCTP (CONFIG_IP_SCTP is not set)",
}

// KernelSCTP tells whether this kernel has SCTP: whether an SCTP socket
// can be made (which loads the module where it is one).
func KernelSCTP() bool {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, unix.IPPROTO_SCTP)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// Config is one run.
type Config struct {
	Suite Suite
	Proxy Proxy
	// Nodes is the lab's node count (≥ 2: several cases need endpoints on
	// two nodes).
	Nodes int
	// Procs is how many e2e processes run cases in parallel.
	Procs int
	// Focus and Skip select an e2e suite's cases (ginkgo regular
	// expressions on a case's full text).
	Focus, Skip string
	// SCTP says the lab's kernel has SCTP: without it the
	// ClusterNetworkPolicy suite leaves out its SCTP servers and cases.
	SCTP bool
	// Timeout bounds the e2e run.
	Timeout time.Duration
	// Dir keeps the run's files: images/, e2e.log, report.json (e2e
	// suites) or cnp.json and cnp-report.yaml (ClusterNetworkPolicy).
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
	if _, err := ParseSuite(string(c.Suite)); err != nil {
		return err
	}
	if _, err := ParseProxy(string(c.Proxy)); err != nil {
		return err
	}
	if !c.Suite.e2e() && (c.Focus != "" || c.Skip != "") {
		return fmt.Errorf("suite %s runs its profile's cases: no focus or skip", c.Suite)
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
// and the test images, runs the suite's selected cases and returns their
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
	var cnp kube.CNPConformance
	if cfg.Suite == ClusterNetworkPolicy {
		if cnp, err = kube.BuildCNPConformance(ctx, kube.BuildConfig{Out: out}); err != nil {
			return nil, err
		}
		progress("network-policy-api conformance suite ready")
	}
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
	var res *RunResult
	if cfg.Suite.e2e() {
		report := filepath.Join(cfg.Dir, "report.json")
		_ = os.Remove(report)
		runErr := runE2E(ctx, cfg, l, bins, report, out)
		progress("e2e run ended: %v", runErr)
		var perr error
		if res, perr = ParseReport(report, cfg); perr != nil {
			return nil, errors.Join(runErr, perr)
		}
	} else {
		if err := ensureCRD(ctx, l, cnp.CRD, progress); err != nil {
			return nil, err
		}
		events, report := filepath.Join(cfg.Dir, CNPEventsFile), filepath.Join(cfg.Dir, CNPReportFile)
		for _, f := range []string{events, report} {
			_ = os.Remove(f)
		}
		runErr := runCNP(ctx, cfg, l, cnp, events, report, out)
		progress("network-policy-api conformance run ended: %v", runErr)
		var perr error
		if res, perr = ParseCNPReport(events, report, cfg); perr != nil {
			return nil, errors.Join(runErr, perr)
		}
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
// test process to the nodes); the JSON report goes to report, the output
// to e2e.log and out.
func runE2E(ctx context.Context, cfg Config, l *lab.Lab, bins kube.ConformanceBinaries, report string, out io.Writer) error {
	cp, err := l.ControlPlane()
	if err != nil {
		return err
	}
	logFile, err := os.Create(filepath.Join(cfg.Dir, "e2e.log"))
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	defer logFile.Close()
	return runInControlPlane(ctx, cfg, l, io.MultiWriter(out, logFile), bins.Ginkgo,
		ginkgoArgs(cfg, bins, cp.AdminKubeconfig(), l.Kube.Bins.Kubectl, report)...)
}

// runInControlPlane runs prog with args in cfg.Dir inside the lab's
// control plane namespace, its output going to stdout, bounded by
// cfg.Timeout and five minutes more. Ended (interrupt, timeout), prog and
// the processes it started are killed together: the lab goes down after,
// with everything they made.
func runInControlPlane(ctx context.Context, cfg Config, l *lab.Lab, stdout io.Writer, prog string, args ...string) error {
	ns, err := netns.OpenNamed(l.Kube.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout+5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = cfg.Dir
	cmd.Stdout = stdout
	cmd.Stderr = stdout
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if err := ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("conformance: %s: %w", filepath.Base(prog), err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("conformance: %s: %w", filepath.Base(prog), err)
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
