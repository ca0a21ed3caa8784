package conformance

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// spec is one entry of a ginkgo report for the tests.
type spec struct {
	containers []string
	leaf       string
	typ        string
	state      string
	failure    string
}

// writeReport writes a ginkgo JSON report of specs into a file.
func writeReport(t *testing.T, specs []spec) string {
	t.Helper()
	var reports []map[string]any
	for _, s := range specs {
		typ := s.typ
		if typ == "" {
			typ = "It"
		}
		reports = append(reports, map[string]any{
			"ContainerHierarchyTexts": s.containers, "LeafNodeType": typ, "LeafNodeText": s.leaf,
			"State": s.state, "RunTime": int64(1500 * time.Millisecond), "Failure": map[string]any{"Message": s.failure},
		})
	}
	b, err := json.Marshal([]map[string]any{{
		"SuiteDescription": "Kubernetes e2e suite", "StartTime": time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC),
		"RunTime": int64(20 * time.Minute), "SpecReports": reports,
	}})
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "report.json")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseReport(t *testing.T) {
	svc := []string{"[sig-network] Services"}
	path := writeReport(t, []spec{
		{typ: "SynchronizedBeforeSuite", state: "passed"},
		{containers: svc, leaf: "should serve a basic endpoint from pods [Conformance]", state: "passed"},
		{containers: svc, leaf: "should work after restarting apiserver [Disruptive]", state: "skipped"},
		{containers: svc, leaf: "should handle load balancer cleanup finalizer for service [Slow]", state: "skipped"},
		{containers: svc, leaf: "should be able to update service type to NodePort", state: "failed", failure: "\nexpected 3 endpoints\nbut got 2"},
		{containers: svc, leaf: "should have session affinity work for NodePort service", state: "timedout"},
		{containers: svc, leaf: "should preserve source pod IP for traffic thru service cluster IP", state: "skipped", failure: "Only supported for providers [gce gke] (not skeleton)"},
		{containers: svc, leaf: "should never run ", state: "skipped"},
		{containers: []string{"[sig-apps] Deployment"}, leaf: "deployment should delete old replica sets [Conformance]", state: "skipped"},
	})
	cfg := Config{Proxy: KubeProxy, Focus: ServicesFocus, Skip: ServicesSkip}
	res, err := ParseReport(path, cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []Case{
		{Name: "[sig-network] Services should serve a basic endpoint from pods [Conformance]", Conformance: true, State: Passed, Seconds: 1.5},
		{Name: "[sig-network] Services should work after restarting apiserver [Disruptive]", State: Skipped, Reason: "excluded by the skip rule `\\[Disruptive\\]`", Seconds: 1.5},
		{Name: "[sig-network] Services should handle load balancer cleanup finalizer for service [Slow]", State: Skipped, Reason: "excluded by the skip rule `\\[Slow\\]`", Seconds: 1.5},
		{Name: "[sig-network] Services should be able to update service type to NodePort", State: Failed, Reason: "failed: expected 3 endpoints but got 2", Seconds: 1.5},
		{Name: "[sig-network] Services should have session affinity work for NodePort service", State: Failed, Reason: "timedout", Seconds: 1.5},
		{Name: "[sig-network] Services should preserve source pod IP for traffic thru service cluster IP", State: Skipped, Reason: "Only supported for providers [gce gke] (not skeleton)", Seconds: 1.5},
		{Name: "[sig-network] Services should never run", State: Skipped, Reason: "not run (suite interrupted or timed out)", Seconds: 1.5},
	}
	if len(res.Cases) != len(want) {
		t.Fatalf("cases %+v\nwant %+v", res.Cases, want)
	}
	for i, c := range res.Cases {
		if c != want[i] {
			t.Errorf("case %d: %+v\nwant %+v", i, c, want[i])
		}
	}
	if pass, fail, skip := res.Counts(); pass != 1 || fail != 2 || skip != 4 {
		t.Errorf("counts %d passed, %d failed, %d skipped; want 1, 2, 4", pass, fail, skip)
	}
	if res.Date != time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC) || res.Proxy != KubeProxy || res.Took != "20m0s" {
		t.Errorf("run %s at %s took %s", res.Proxy, res.Date, res.Took)
	}
}

func TestParseReportErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.json")
	if err := os.WriteFile(garbage, []byte("{not json"), 0o644); err != nil {
		t.Fatal(err)
	}
	other := writeReport(t, []spec{{containers: []string{"[sig-apps] Deployment"}, leaf: "x", state: "passed"}})
	for _, tc := range []struct {
		name, path, focus, skip, want string
	}{
		{"missing", filepath.Join(dir, "none.json"), ServicesFocus, ServicesSkip, "no such file"},
		{"not JSON", garbage, ServicesFocus, ServicesSkip, "garbage.json"},
		{"no case", other, ServicesFocus, ServicesSkip, "no case matches"},
		{"bad focus", other, "(", ServicesSkip, "focus"},
		{"bad skip", other, ServicesFocus, "a|(", "skip"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseReport(tc.path, Config{Proxy: KubeProxy, Focus: tc.focus, Skip: tc.skip})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestReason(t *testing.T) {
	long := strings.Repeat("é", maxReason)
	for _, tc := range []struct{ msg, want string }{
		{"", ""},
		{"\n  Expected\n    <int>: 2\nto equal\n    <int>: 3\n", "Expected <int>: 2 to equal <int>: 3"},
		{long, long[:maxReason] + "…"},
		{"a" + long, "a" + long[:maxReason-2] + "…"},
	} {
		if got := reason(tc.msg); got != tc.want {
			t.Errorf("reason(%q) = %q, want %q", tc.msg, got, tc.want)
		}
	}
}

func TestSplitAlternatives(t *testing.T) {
	for _, tc := range []struct {
		re   string
		want []string
	}{
		{"", nil},
		{"a", []string{"a"}},
		{`\[Serial\]|LoadBalancer`, []string{`\[Serial\]`, "LoadBalancer"}},
		{`a(b|c)|[|]|\|d`, []string{"a(b|c)", "[|]", `\|d`}},
	} {
		got, err := splitAlternatives(tc.re)
		if err != nil {
			t.Fatalf("%q: %v", tc.re, err)
		}
		var gotS []string
		for _, r := range got {
			gotS = append(gotS, r.String())
		}
		if strings.Join(gotS, "\x00") != strings.Join(tc.want, "\x00") {
			t.Errorf("%q: %q, want %q", tc.re, gotS, tc.want)
		}
	}
}

func TestResultsMarkdown(t *testing.T) {
	kp := &RunResult{Suite: Services, Proxy: KubeProxy, Date: time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC), Kubernetes: "v1.32.3", Nodes: 2, Procs: 2, Took: "20m0s",
		Focus: ServicesFocus, Skip: ServicesSkip, Cases: []Case{
			{Name: "A [Conformance]", Conformance: true, State: Passed, Seconds: 12},
			{Name: "B | pipe", State: Skipped, Reason: "excluded by the skip rule `LoadBalancer`"},
		}}
	pn := &RunResult{Suite: Services, Proxy: Podnet, Kubernetes: "v1.32.3", Cases: []Case{
		{Name: "A [Conformance]", Conformance: true, State: Failed, Reason: "failed: no endpoints"},
		{Name: "C", State: Passed, Seconds: 3},
	}}
	cnp := &RunResult{Suite: ClusterNetworkPolicy, Proxy: Podnet, Kubernetes: "v1.32.3", Focus: "profile ClusterNetworkPolicy", Summary: []string{"profile ClusterNetworkPolicy, standard: failure"}, Cases: []Case{
		{Name: "CNPAdminTierGress", State: Passed, Seconds: 40},
	}}
	var rs Results
	rs.Add(cnp)
	rs.Add(pn)
	rs.Add(kp)
	rs.Add(kp) // a second run of a suite with a proxy replaces the first
	if len(rs.Runs) != 3 || rs.Runs[0].Proxy != KubeProxy || rs.Runs[1].Proxy != Podnet || rs.Runs[2] != cnp {
		t.Fatalf("runs %+v", rs.Runs)
	}
	md := rs.Markdown()
	for _, want := range []string{
		"## Services: `[sig-network] Services`",
		"| kube-proxy | 2026-12-03 04:00 | v1.32.3 | 2 | 2 | 20m0s | 1 | 0 | 1 |",
		"| case | C | kube-proxy | podnet |",
		"| A [Conformance] | C | pass (12 s) | **FAIL**: failed: no endpoints |",
		"| B \\| pipe |  | skip: excluded by the skip rule `LoadBalancer` | — |",
		"| C |  | — | pass (3 s) |",
		"## ClusterNetworkPolicy: the network-policy-api conformance suite",
		"  - profile ClusterNetworkPolicy, standard: failure\n",
		"| case | podnet |\n|---|---|\n| CNPAdminTierGress | pass (40 s) |",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
	if strings.Index(md, "## Services") > strings.Index(md, "## ClusterNetworkPolicy") || strings.Contains(md, "## NetworkPolicy") {
		t.Errorf("sections out of order or empty ones:\n%s", md)
	}

	path := filepath.Join(t.TempDir(), "conformance.json")
	b, err := rs.JSON()
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	back, err := LoadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	if back.Markdown() != md {
		t.Error("results read back render differently")
	}
	if none, err := LoadResults(filepath.Join(t.TempDir(), "none.json")); err != nil || len(none.Runs) != 0 || !strings.Contains(none.Markdown(), "No run yet") {
		t.Errorf("missing results: %+v, %v", none, err)
	}
	if err := os.WriteFile(path, []byte(`{"runs":[{"proxy":"ipvs"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadResults(path); err == nil || !strings.Contains(err.Error(), "ipvs") {
		t.Errorf("results with an unknown proxy: %v", err)
	}
	if err := os.WriteFile(path, []byte(`{"runs":[{"suite":"dns","proxy":"podnet"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadResults(path); err == nil || !strings.Contains(err.Error(), "dns") {
		t.Errorf("results with an unknown suite: %v", err)
	}
	// Results written before there were suites are Services runs.
	if err := os.WriteFile(path, []byte(`{"runs":[{"proxy":"podnet"}]}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if old, err := LoadResults(path); err != nil || old.Runs[0].Suite != Services {
		t.Errorf("results without suite: %+v, %v", old, err)
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Suite: Services, Proxy: KubeProxy, Nodes: 2, Procs: 2, Focus: ServicesFocus, Skip: ServicesSkip, Timeout: time.Hour, Dir: "/tmp/x"}
	if err := good.validate(); err != nil {
		t.Fatalf("valid config: %v", err)
	}
	for _, tc := range []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"proxy", func(c *Config) { c.Proxy = "ipvs" }, "unknown proxy"},
		{"suite", func(c *Config) { c.Suite = "dns" }, "unknown suite"},
		{"cnp focus", func(c *Config) { c.Suite = ClusterNetworkPolicy }, "no focus or skip"},
		{"nodes", func(c *Config) { c.Nodes = 1 }, "2 or more nodes"},
		{"procs", func(c *Config) { c.Procs = 0 }, "processes"},
		{"timeout", func(c *Config) { c.Timeout = 0 }, "timeout"},
		{"dir", func(c *Config) { c.Dir = "" }, "directory"},
		{"focus", func(c *Config) { c.Focus = "[" }, "selection"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.change(&c)
			if err := c.validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestDefaultSelection(t *testing.T) {
	for _, tc := range []struct {
		suite             Suite
		sctp              bool
		focus, skip, name string
	}{
		{Services, false, ServicesFocus, ServicesSkip, "[sig-network] Services should serve a basic endpoint from pods [Conformance]"},
		{NetworkPolicy, true, NetpolFocus, "", "[sig-network] Netpol NetworkPolicy between server and client should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"},
		{NetworkPolicy, false, NetpolFocus, SkipNoSCTP, "[sig-network] Netpol API should support creating NetworkPolicy API operations"},
		{ClusterNetworkPolicy, false, "", "", ""},
	} {
		focus, skip := tc.suite.DefaultSelection(tc.sctp)
		if focus != tc.focus || skip != tc.skip {
			t.Errorf("%s (sctp %v): %q, %q, want %q, %q", tc.suite, tc.sctp, focus, skip, tc.focus, tc.skip)
		}
		if focus != "" && !regexp.MustCompile(focus).MatchString(tc.name) {
			t.Errorf("%s: focus %q misses %q", tc.suite, focus, tc.name)
		}
	}
	sctp := "[sig-network] Netpol [Feature:SCTPConnectivity] [LinuxOnly] NetworkPolicy between server and client using SCTP should support a 'default-deny-ingress' policy [Feature:NetworkPolicy]"
	rules, err := splitAlternatives(SkipNoSCTP)
	if err != nil {
		t.Fatal(err)
	}
	if got := skipReason(sctp, rules, "skipped"); !strings.Contains(got, "no SCTP") {
		t.Errorf("SCTP case's skip reason %q", got)
	}
	if _, err := ParseSuite("dns"); err == nil {
		t.Error("unknown suite: no error")
	}
}
