package conformance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// writeEvents writes test2json events, one a line, to a file in dir.
func writeEvents(t *testing.T, dir string, events []testEvent) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("not an event\n")
	for _, ev := range events {
		line, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(append(line, '\n'))
	}
	path := filepath.Join(dir, CNPEventsFile)
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestParseCNPReport(t *testing.T) {
	dir := t.TempDir()
	start := time.Date(2026, 12, 3, 7, 0, 0, 0, time.UTC)
	top := cnpTest
	events := writeEvents(t, dir, []testEvent{
		{Time: start, Action: "run", Test: top},
		{Action: "output", Test: top, Output: "    cnp_test.go:1: Test Setup: Applying base manifests\n"},
		{Action: "run", Test: top + "/CNPAdminTierEgressTCP"},
		{Action: "run", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "    suite.go:250: Applying base/admin_tier/standard-egress-tcp-rules.yaml\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "    helper.go:144: \n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "        \tError Trace:\t/x/helper.go:144\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "        \tError:      \tShould be false\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "        \t            \tstill\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "        \tTest:       \tTestClusterNetworkPolicy/CNPAdminTierEgressTCP\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "        \tMessages:   \tconnection from harry-potter-0 to cedric-diggory-1 should be denied\n"},
		{Action: "output", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Output: "--- FAIL: TestClusterNetworkPolicy/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy (12.30s)\n"},
		{Action: "fail", Test: top + "/CNPAdminTierEgressTCP/Should_support_an_'allow-egress'_policy", Elapsed: 12.3},
		{Action: "fail", Test: top + "/CNPAdminTierEgressTCP", Elapsed: 12.34},
		{Action: "run", Test: top + "/CNPAdminTierEgressNamedPort"},
		{Action: "output", Test: top + "/CNPAdminTierEgressNamedPort", Output: "    suite.go:208: Skipping CNPAdminTierEgressNamedPort: suite does not support ClusterNetworkPolicyNamedPorts\n"},
		{Action: "skip", Test: top + "/CNPAdminTierEgressNamedPort"},
		{Action: "run", Test: top + "/CNPAdminTierEgressSCTP"},
		{Action: "output", Test: top + "/CNPAdminTierEgressSCTP", Output: "    suite.go:215: Skipping CNPAdminTierEgressSCTP\n"},
		{Action: "pass", Test: top + "/CNPAdminTierEgressSCTP"},
		{Action: "run", Test: top + "/CNPAdminTierGress"},
		{Action: "pass", Test: top + "/CNPAdminTierGress", Elapsed: 40},
		{Action: "run", Test: top + "/CNPBaselineTierGress"},
		{Action: "fail", Test: top, Elapsed: 600},
	})
	report := filepath.Join(dir, CNPReportFile)
	if err := os.WriteFile(report, []byte(`apiVersion: policy.networking.k8s.io/v1alpha1
kind: ConformanceReport
networkPolicyBundleVersion: v0.3.0
profiles:
- name: ClusterNetworkPolicy
  standard:
    result: failure
    statistics:
      Failed: 1
      Passed: 1
      Skipped: 1
    failedTests:
    - CNPAdminTierEgressTCP
    skippedTests:
    - CNPAdminTierEgressSCTP
  experimental:
    result: success
    statistics:
      Failed: 0
      Passed: 0
      Skipped: 0
    unsupportedFeatures:
    - ClusterNetworkPolicyNamedPorts
`), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := ParseCNPReport(events, report, Config{Suite: ClusterNetworkPolicy, Proxy: Podnet})
	if err != nil {
		t.Fatal(err)
	}
	want := []Case{
		{Name: "CNPAdminTierEgressTCP", State: Failed, Seconds: 12.3, Reason: "Should support an 'allow-egress' policy: Should be false still: connection from harry-potter-0 to cedric-diggory-1 should be denied"},
		{Name: "CNPAdminTierEgressNamedPort", State: Skipped, Reason: "Skipping CNPAdminTierEgressNamedPort: suite does not support ClusterNetworkPolicyNamedPorts"},
		{Name: "CNPAdminTierEgressSCTP", State: Skipped, Reason: cnpSCTPSkip},
		{Name: "CNPAdminTierGress", State: Passed, Seconds: 40},
		{Name: "CNPBaselineTierGress", State: Failed, Reason: "not finished (suite interrupted or timed out)"},
	}
	if len(res.Cases) != len(want) {
		t.Fatalf("cases %+v, want %+v", res.Cases, want)
	}
	for i, c := range res.Cases {
		if c != want[i] {
			t.Errorf("case %d: %+v, want %+v", i, c, want[i])
		}
	}
	if res.Suite != ClusterNetworkPolicy || res.Proxy != Podnet || !res.Date.Equal(start) || res.Took != "10m0s" {
		t.Errorf("run %+v", res)
	}
	summary := strings.Join(res.Summary, "\n")
	for _, s := range []string{
		"profile ClusterNetworkPolicy, standard: failure (1 passed, 1 failed, 1 skipped)",
		"features not claimed: ClusterNetworkPolicyNamedPorts",
		"bundle v0.3.0",
	} {
		if !strings.Contains(summary, s) {
			t.Errorf("summary %q lacks %q", summary, s)
		}
	}

	// Without a ConformanceReport the cases stand, the summary says so.
	res, err = ParseCNPReport(events, filepath.Join(dir, "none.yaml"), Config{Suite: ClusterNetworkPolicy, Proxy: Podnet})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Cases) != len(want) || !strings.Contains(strings.Join(res.Summary, ""), "no ConformanceReport") {
		t.Errorf("without report: %+v", res)
	}
}

func TestParseCNPReportErrors(t *testing.T) {
	dir := t.TempDir()
	setupFailed := writeEvents(t, dir, []testEvent{
		{Action: "run", Test: cnpTest},
		{Action: "output", Test: cnpTest, Output: "    helper.go:144: \n"},
		{Action: "output", Test: cnpTest, Output: "        \tError:      \tReceived unexpected error:\n"},
		{Action: "output", Test: cnpTest, Output: "        \t            \tcontext deadline exceeded\n"},
		{Action: "output", Test: cnpTest, Output: "        \tMessages:   \terror waiting for namespaces to be ready\n"},
		{Action: "fail", Test: cnpTest, Elapsed: 300},
	})
	for _, tc := range []struct {
		name, events, want string
	}{
		{"missing", filepath.Join(dir, "none.json"), "no such file"},
		{"setup failed", setupFailed, "no case ran (TestClusterNetworkPolicy fail): Received unexpected error: context deadline exceeded: error waiting for namespaces to be ready"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCNPReport(tc.events, filepath.Join(dir, CNPReportFile), Config{Suite: ClusterNetworkPolicy, Proxy: Podnet})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestFailure(t *testing.T) {
	for _, tc := range []struct {
		name   string
		output []string
		want   string
	}{
		{"testify", []string{"    x.go:1: \n", "        \tError:      \tboom\n", "        \tTest:       \tT\n"}, "boom"},
		{"logged", []string{"    suite.go:250: Applying base/x.yaml\n", "    x_test.go:9: kubeconfig: no such file\n"}, "kubeconfig: no such file"},
		{"step", []string{
			"=== RUN   TestClusterNetworkPolicy/C/Should_deny\n",
			"    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.244.0.10:80]\n",
			"    helper.go:71: Expected connection to fail from a/b to 10.244.0.10, but instead it successfully connected.\n",
			"    helper.go:70: \n",
			"        \tError Trace:\thelper.go:70\n",
			"        \t            \t\t\t\tx.go:50\n",
			"        \tError:      \tCondition never satisfied\n",
			"        \tTest:       \tTestClusterNetworkPolicy/C/Should_deny\n",
			"--- FAIL: TestClusterNetworkPolicy/C/Should_deny (10.04s)\n",
			"    helper.go:71: a later step's message\n",
		}, "Should deny: Expected connection to fail from a/b to 10.244.0.10, but instead it successfully connected.: Condition never satisfied"},
		{"sctp", []string{
			"    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.244.0.10:9003]\n",
			"    helper.go:71: Expected connection to succeed from a/b to 10.244.0.10, but instead it miserably failed. stderr: OTHER: protocol not supported\n",
		}, "[SCTP probes fail: no SCTP in this kernel] Expected connection to succeed from a/b to 10.244.0.10, but instead it miserably failed. stderr: OTHER: protocol not supported"},
		{"nothing", []string{"--- FAIL: T (0.00s)\n"}, "failed (no message)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := failure(tc.output); got != tc.want {
				t.Errorf("failure: %q, want %q", got, tc.want)
			}
		})
	}
}

func TestCNPArgs(t *testing.T) {
	args := strings.Join(cnpArgs(Config{Suite: ClusterNetworkPolicy, Proxy: Podnet, Procs: 3, Timeout: time.Hour}, "/c/cnp.test", "/k/admin.conf", "/d/cnp-report.yaml"), " ")
	for _, want := range []string{
		"tool test2json -t -p cnp /c/cnp.test -test.v=test2json",
		"-test.timeout=1h0m0s", "-test.parallel=3", "-kubeconfig=/k/admin.conf",
		"-conformance-profiles=ClusterNetworkPolicy", "-report-output=/d/cnp-report.yaml", "-sctp=false",
	} {
		if !strings.Contains(args, want) {
			t.Errorf("args %q lack %q", args, want)
		}
	}
}
