package conformance

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
)

// The files of a ClusterNetworkPolicy run in Config.Dir: the test
// binary's events (go tool test2json) and its ConformanceReport.
const (
	CNPEventsFile = "cnp.json"
	CNPReportFile = "cnp-report.yaml"
)

// cnpTest is the test of internal/kube/cnp running the suite; its
// subtests are the suite's cases.
const cnpTest = "TestClusterNetworkPolicy"

// cnpProfile is the conformance profile the run checks.
const cnpProfile = "ClusterNetworkPolicy"

// cnpCRDName is the ClusterNetworkPolicy CRD's name.
const cnpCRDName = "clusternetworkpolicies.policy.networking.k8s.io"

// ensureCRD installs the ClusterNetworkPolicy CRD from crd unless the
// cluster has it already (podnet's manifest carries it).
func ensureCRD(ctx context.Context, l *lab.Lab, crd string, progress func(string, ...any)) error {
	if _, err := l.Kubectl(ctx, nil, "get", "crd", cnpCRDName); err == nil {
		progress("CRD %s installed by the manifest", cnpCRDName)
		return nil
	}
	b, err := os.ReadFile(crd)
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	if _, err := l.Kubectl(ctx, bytes.NewReader(b), "apply", "--server-side", "--field-manager=podnet-conformance", "-f", "-"); err != nil {
		return fmt.Errorf("conformance: CRD %s: %w", cnpCRDName, err)
	}
	if _, err := l.Kubectl(ctx, nil, "wait", "--for=condition=Established", "--timeout=1m", "crd/"+cnpCRDName); err != nil {
		return fmt.Errorf("conformance: CRD %s: %w", cnpCRDName, err)
	}
	progress("CRD %s installed from %s", cnpCRDName, crd)
	return nil
}

// runCNP runs the network-policy-api suite's test binary under go tool
// test2json inside the lab's control plane namespace: its events go to
// events (and out), its ConformanceReport to report.
func runCNP(ctx context.Context, cfg Config, l *lab.Lab, cnp kube.CNPConformance, events, report string, out io.Writer) error {
	cp, err := l.ControlPlane()
	if err != nil {
		return err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return fmt.Errorf("conformance: go tool test2json reads the suite's output: %w", err)
	}
	f, err := os.Create(events)
	if err != nil {
		return fmt.Errorf("conformance: %w", err)
	}
	defer f.Close()
	return runInControlPlane(ctx, cfg, l, io.MultiWriter(out, f), goBin, cnpArgs(cfg, cnp.Test, cp.AdminKubeconfig(), report)...)
}

// cnpArgs is the command line running the suite's test binary test under
// go tool test2json: the profile, the implementation the report names,
// the parallel cases, the report's path, whether the kernel has SCTP.
func cnpArgs(cfg Config, test, kubeconfig, report string) []string {
	return []string{
		"tool", "test2json", "-t", "-p", "cnp",
		test,
		"-test.v=test2json",
		"-test.run=^" + cnpTest + "$",
		"-test.timeout=" + cfg.Timeout.String(),
		"-test.parallel=" + strconv.Itoa(cfg.Procs),
		"-kubeconfig=" + kubeconfig,
		"-conformance-profiles=" + cnpProfile,
		"-organization=podnet",
		"-project=podnet",
		"-url=https://github.com/podnet/podnet",
		"-version=" + string(cfg.Proxy),
		"-contact=podnet",
		"-additional-info=make conformance SUITE=cnp PROXY=" + string(cfg.Proxy),
		"-report-output=" + report,
		"-sctp=" + strconv.FormatBool(cfg.SCTP),
	}
}

// testEvent is one event of go tool test2json.
type testEvent struct {
	Time    time.Time
	Action  string
	Test    string
	Elapsed float64
	Output  string
}

// cnpReport is the part of the suite's ConformanceReport
// (sigs.k8s.io/network-policy-api/conformance/apis/v1alpha1) a run reads.
type cnpReport struct {
	NetworkPolicyBundleVersion string `json:"networkPolicyBundleVersion"`
	Profiles                   []struct {
		Name         string     `json:"name"`
		Standard     cnpStatus  `json:"standard"`
		Experimental *cnpStatus `json:"experimental"`
	} `json:"profiles"`
}

// cnpStatus is a profile's outcome at one support level.
type cnpStatus struct {
	Result     string `json:"result"`
	Summary    string `json:"summary"`
	Statistics struct {
		Passed, Skipped, Failed int
	} `json:"statistics"`
	SkippedTests        []string `json:"skippedTests"`
	UnsupportedFeatures []string `json:"unsupportedFeatures"`
}

// cnpSCTPSkip is why a case the suite skipped (-sctp=false) did not run.
const cnpSCTPSkip = "left out by the runner: the case tests SCTP and this kernel has none (CONFIG_IP_SCTP is not set; internal/kube/cnp -sctp=false)"

// ParseCNPReport reads a ClusterNetworkPolicy run: the test events at
// events (every case, its outcome and why) and the ConformanceReport at
// report (the cases the suite skipped, the profile's result). A run whose
// setup failed before any case is an error saying why.
func ParseCNPReport(events, report string, cfg Config) (*RunResult, error) {
	f, err := os.Open(events)
	if err != nil {
		return nil, fmt.Errorf("cnp events: %w", err)
	}
	defer f.Close()
	type caseState struct {
		Case
		output []string
		done   bool
	}
	var (
		order      []string
		cases      = map[string]*caseState{}
		top        []string
		topElapsed float64
		topAction  string
		started    time.Time
	)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var ev testEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil || ev.Test == "" {
			continue // not an event, or the package's
		}
		if started.IsZero() {
			started = ev.Time
		}
		if ev.Test == cnpTest {
			switch ev.Action {
			case "output":
				top = append(top, ev.Output)
			case "pass", "fail", "skip":
				topAction, topElapsed = ev.Action, ev.Elapsed
			}
			continue
		}
		rest, ok := strings.CutPrefix(ev.Test, cnpTest+"/")
		if !ok {
			continue
		}
		name, sub, _ := strings.Cut(rest, "/")
		c := cases[name]
		if c == nil {
			c = &caseState{Case: Case{Name: name}}
			cases[name] = c
			order = append(order, name)
		}
		switch {
		case ev.Action == "output":
			c.output = append(c.output, ev.Output)
		case sub == "" && slices.Contains([]string{"pass", "fail", "skip"}, ev.Action):
			c.done = true
			c.Seconds = math.Round(ev.Elapsed*10) / 10
			c.State = map[string]State{"pass": Passed, "fail": Failed, "skip": Skipped}[ev.Action]
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("cnp events %s: %w", events, err)
	}
	if len(order) == 0 {
		return nil, fmt.Errorf("cnp events %s: no case ran (%s %s): %s", events, cnpTest, orNone(topAction), failure(top))
	}
	res := &RunResult{Suite: ClusterNetworkPolicy, Proxy: cfg.Proxy, Kubernetes: kube.Version, Date: started.UTC().Truncate(time.Second),
		Focus: "profile " + cnpProfile + ", standard features", Took: (time.Duration(topElapsed) * time.Second).String()}
	if !cfg.SCTP {
		res.Skip = "the SCTP cases (no SCTP in this kernel)"
	}
	rep, rerr := readCNPReport(report)
	skipped := map[string]bool{}
	if rerr == nil {
		for _, p := range rep.Profiles {
			for _, st := range []*cnpStatus{&p.Standard, p.Experimental} {
				if st == nil {
					continue
				}
				for _, name := range st.SkippedTests {
					skipped[name] = true
				}
			}
			res.Summary = append(res.Summary, profileSummary(p.Name, "standard", p.Standard))
			if p.Experimental != nil {
				res.Summary = append(res.Summary, profileSummary(p.Name, "experimental", *p.Experimental))
			}
		}
		res.Summary = append(res.Summary, "network-policy-api bundle "+orNone(rep.NetworkPolicyBundleVersion))
	} else {
		res.Summary = append(res.Summary, "no ConformanceReport: "+reason(rerr.Error()))
	}
	for _, name := range order {
		c := cases[name]
		switch {
		case !c.done:
			c.State, c.Reason = Failed, "not finished (suite interrupted or timed out)"
		case skipped[name]:
			// The suite's SkipTests pass the case without running it.
			c.State, c.Reason = Skipped, cnpSCTPSkip
		case c.State == Failed:
			c.Reason = failure(c.output)
		case c.State == Skipped:
			c.Reason = skipMessage(c.output)
		}
		res.Cases = append(res.Cases, c.Case)
	}
	return res, nil
}

// readCNPReport reads the suite's ConformanceReport.
func readCNPReport(path string) (*cnpReport, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("ConformanceReport: %w", err)
	}
	var r cnpReport
	if err := yaml.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("ConformanceReport %s: %w", path, err)
	}
	return &r, nil
}

// profileSummary is one line on a profile's result at a support level.
func profileSummary(profile, level string, st cnpStatus) string {
	s := fmt.Sprintf("profile %s, %s: %s (%d passed, %d failed, %d skipped)", profile, level, orNone(st.Result),
		st.Statistics.Passed, st.Statistics.Failed, st.Statistics.Skipped)
	if st.Summary != "" {
		s += ": " + st.Summary
	}
	if len(st.UnsupportedFeatures) > 0 {
		slices.Sort(st.UnsupportedFeatures)
		s += "; features not claimed: " + strings.Join(st.UnsupportedFeatures, ", ")
	}
	return s
}

// orNone is s, or "none" when empty.
func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// testify's failure fields ("        \tError:      \tmessage") and their
// further lines ("        \t            \tmore").
var (
	testifyField = regexp.MustCompile(`^\s*\t([A-Z][A-Za-z ]*):\s*\t?(.*)$`)
	testifyMore  = regexp.MustCompile(`^\s*\t\s+\t(.*)$`)
)

// failure is a failed test's reason from its output, on its first
// failure: the step (subtest) that failed, the last line logged before it
// (with its file:line prefix: t.Logf, t.Errorf) and testify's "Error" and
// "Messages" fields; with a note when SCTP probes failed for want of SCTP
// in the kernel.
func failure(output []string) string {
	lines := strings.Split(strings.Join(output, ""), "\n")
	var step, logged string
	var fields []string
	collecting, done := false, false
	for _, line := range lines {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "--- FAIL: "); ok && step == "" {
			name, _, _ := strings.Cut(rest, " (")
			if parts := strings.SplitN(name, "/", 3); len(parts) == 3 {
				step = strings.ReplaceAll(parts[2], "_", " ")
			}
			done = true
			continue
		}
		if done {
			continue
		}
		if m := testifyMore.FindStringSubmatch(line); m != nil && collecting {
			fields[len(fields)-1] += " " + strings.TrimSpace(m[1])
		} else if m := testifyField.FindStringSubmatch(line); m != nil {
			collecting = m[1] == "Error" || m[1] == "Messages"
			if collecting {
				fields = append(fields, strings.TrimSpace(m[2]))
			}
		} else if msg := loggedMessage(line); msg != "" && !progressLine.MatchString(msg) && len(fields) == 0 {
			logged = msg
			collecting = false
		} else {
			collecting = false
		}
	}
	var parts []string
	for _, p := range []string{step, logged, strings.Join(fields, ": ")} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	if len(parts) == 0 {
		return "failed (no message)"
	}
	r := strings.Join(parts, ": ")
	if out := strings.Join(output, ""); strings.Contains(out, "--protocol=sctp") && strings.Contains(out, "protocol not supported") {
		r = "[SCTP probes fail: no SCTP in this kernel] " + r
	}
	return reason(r)
}

// progressLine matches what the suite logs as it goes, not why a case
// failed.
var progressLine = regexp.MustCompile(`^(Applying|Creating|Updating|Deleting|Test Setup:) `)

// skipMessage is a skipped test's reason: what it logged with t.Skipf.
func skipMessage(output []string) string {
	for _, line := range strings.Split(strings.Join(output, ""), "\n") {
		if msg := loggedMessage(line); msg != "" {
			return reason(msg)
		}
	}
	return "skipped by the suite"
}

// loggedMessage is the message of a line a test logged ("    file.go:12:
// message"), or "" for any other line.
func loggedMessage(line string) string {
	field := strings.TrimSpace(line)
	loc, msg, ok := strings.Cut(field, ": ")
	if !ok || !strings.Contains(loc, ".go:") || strings.Contains(loc, " ") {
		return ""
	}
	return strings.TrimSpace(msg)
}
