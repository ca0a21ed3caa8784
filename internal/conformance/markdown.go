package conformance

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"slices"
	"strings"
)

// proxyOrder is the order of the runs' columns.
var proxyOrder = []Proxy{KubeProxy, Podnet}

// Add puts run into rs, replacing an earlier run of the same suite with
// the same proxy.
func (rs *Results) Add(run *RunResult) {
	rs.Runs = slices.DeleteFunc(rs.Runs, func(r *RunResult) bool { return r.Suite == run.Suite && r.Proxy == run.Proxy })
	rs.Runs = append(rs.Runs, run)
	slices.SortStableFunc(rs.Runs, func(a, b *RunResult) int {
		if d := slices.Index(suiteOrder, a.Suite) - slices.Index(suiteOrder, b.Suite); d != 0 {
			return d
		}
		return slices.Index(proxyOrder, a.Proxy) - slices.Index(proxyOrder, b.Proxy)
	})
}

// LoadResults reads the results JSON at path; a missing file is no runs.
func LoadResults(path string) (*Results, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return &Results{}, nil
	} else if err != nil {
		return nil, fmt.Errorf("conformance results: %w", err)
	}
	var rs Results
	if err := json.Unmarshal(b, &rs); err != nil {
		return nil, fmt.Errorf("conformance results %s: %w", path, err)
	}
	for _, r := range rs.Runs {
		if r.Suite == "" {
			r.Suite = Services
		}
		if _, err := ParseSuite(string(r.Suite)); err != nil {
			return nil, fmt.Errorf("conformance results %s: %w", path, err)
		}
		if _, err := ParseProxy(string(r.Proxy)); err != nil {
			return nil, fmt.Errorf("conformance results %s: %w", path, err)
		}
	}
	return &rs, nil
}

// JSON is the results as indented JSON.
func (rs *Results) JSON() ([]byte, error) {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("conformance results: %w", err)
	}
	return append(b, '\n'), nil
}

// suiteTitles head the suites' sections.
var suiteTitles = map[Suite]string{
	Services:             "Services: `[sig-network] Services` (Kubernetes e2e)",
	NetworkPolicy:        "NetworkPolicy: `[sig-network] Netpol` (Kubernetes e2e)",
	ClusterNetworkPolicy: "ClusterNetworkPolicy: the network-policy-api conformance suite",
}

// suiteAbout says, under a suite's title, how to run it, what it selects
// and skips, and why.
var suiteAbout = map[Suite]string{
	Services: "`make conformance SUITE=services PROXY=kube-proxy|podnet`. The cases of\n" +
		"`[sig-network] Services` (k8s.io/kubernetes/test/e2e/network), 2 e2e\n" +
		"processes; skipped: those needing a cloud provider (LoadBalancer, ESIPP),\n" +
		"a cluster of their own ([Serial], [Disruptive]), long or flaky ones, and\n" +
		"feature-gated ones ([Feature:...]).\n" +
		"\n" +
		"Three cases need the lab's nodes and control plane to behave like real\n" +
		"hosts, which the lab does since 2026-12-03 10:30 UTC; runs made before\n" +
		"failed them with either proxy, for the lab's lack, not the proxy's (43\n" +
		"passed, 3 failed each). The runs below are after it. A focused run is\n" +
		"`CONF_FLAGS='-focus REGEX -md OTHER.md -json OTHER.json'`: written to\n" +
		"the default files it would replace the proxy's full run.\n" +
		"\n" +
		"The three:\n" +
		"\n" +
		"- *internalTrafficPolicy=Local Pod and Node, to Pod (hostNetwork: true)*\n" +
		"  expects a host-network pod to answer with its node's name as its\n" +
		"  hostname (\"Expected vm to equal n3\": every node shared the machine's\n" +
		"  UTS namespace). Each node now has a UTS namespace of its own named\n" +
		"  after it, which containerd, kubelet and the host-network pods share.\n" +
		"- *should create endpoints for unready pods* reads the pods through the\n" +
		"  API server's pods/proxy (\"the server is currently unable to handle the\n" +
		"  request\": the control plane's namespace had no route to the pods). The\n" +
		"  lab now routes every node's podCIDR from the control plane to that node\n" +
		"  (docs/lab.md).\n" +
		"- *should be rejected for evicted pods (no endpoints exist)* needs kubelet\n" +
		"  to evict a pod writing past its 5Mi ephemeral-storage limit (the pod\n" +
		"  was never evicted: kubelet ran without localStorageCapacityIsolation,\n" +
		"  so it ignored the limit, and without cAdvisor's disk usage metrics its\n" +
		"  eviction manager failed every sync, \"cannot find filesystem info for\n" +
		"  device\"). kubelet now accounts ephemeral storage and evicts.\n",
	NetworkPolicy: "`make conformance SUITE=netpol PROXY=podnet`. Every case of\n" +
		"`[sig-network] Netpol` (k8s.io/kubernetes/test/e2e/network/netpol: the\n" +
		"`[Feature:NetworkPolicy]` cases over TCP, UDP and, tagged\n" +
		"`[Feature:SCTPConnectivity]`, SCTP, and the `Netpol API` cases; Kubernetes\n" +
		"v1.32 has no legacy NetworkPolicy suite any more). Each case builds pods\n" +
		"a, b, c in three namespaces (agnhost serving TCP and UDP on 80 and 81) and\n" +
		"probes the full matrix (`agnhost connect`) against the expected one.\n" +
		"Skipped: the SCTP ones when the kernel has no SCTP (probed by the runner;\n" +
		"this machine's kernel lacks CONFIG_IP_SCTP).\n",
	ClusterNetworkPolicy: "`make conformance SUITE=cnp PROXY=podnet`. The conformance suite of\n" +
		"sigs.k8s.io/network-policy-api v0.3.0 (its conformance/ package): the\n" +
		"profile ClusterNetworkPolicy with its standard (core) features, the\n" +
		"admin and baseline tiers; the experimental ones (named ports, node\n" +
		"peers) are not claimed, so the suite skips their cases. Its test binary\n" +
		"is built from internal/kube/cnp (the suite's own dependencies, apart from\n" +
		"podnet's), which runs the suite as upstream's TestConformanceProfiles\n" +
		"does and writes its ConformanceReport; the runner installs the\n" +
		"standard-channel CRD of that release unless podnet's manifest did, runs\n" +
		"the binary under `go tool test2json` and reads both. Without SCTP in the\n" +
		"kernel the base pods' SCTP servers are left out (they cannot listen, so\n" +
		"the pods would never be ready and every case fail) and the SCTP cases of\n" +
		"both tiers are skipped; the cases mixing SCTP probes into their TCP and\n" +
		"UDP checks (InlineCIDRPeers, Gress, PortRange, AdminTierIngressTCP) run,\n" +
		"and a failure of theirs on an SCTP probe says so.\n",
}

// Markdown is docs/conformance.md: per suite, how its runs were made,
// their totals, and every case with its outcome in each run, side by
// side.
func (rs *Results) Markdown() string {
	var b strings.Builder
	b.WriteString(`# Conformance: upstream test suites against a podnet cluster

Generated by ` + "`make conformance SUITE=services|netpol|cnp PROXY=kube-proxy|podnet`" + `
(internal/conformance, test/conformance; root): a Kubernetes lab (` + "`podnet lab up --kubernetes`" + `:
control plane, containerd, kubelet per node, podnet from deploy/podnet.yaml)
with CoreDNS as the cluster DNS; the suites (` + "`e2e.test`" + ` and the
network-policy-api conformance test binary), agnhost and CoreDNS built from
the Go module proxy; the test images built locally under their upstream
references. One section per suite, saying what it selects and skips and
why, each run of a proxy beside the other's; every case the suite selects
is listed, with why it did not pass.

`)
	if len(rs.Runs) == 0 {
		b.WriteString("No run yet.\n")
		return b.String()
	}
	for _, suite := range suiteOrder {
		runs := slices.DeleteFunc(slices.Clone(rs.Runs), func(r *RunResult) bool { return r.Suite != suite })
		if len(runs) > 0 {
			writeSuite(&b, suite, runs)
		}
	}
	return b.String()
}

// writeSuite writes the section of one suite's runs.
func writeSuite(b *strings.Builder, suite Suite, runs []*RunResult) {
	fmt.Fprintf(b, "## %s\n\n%s\n", suiteTitles[suite], suiteAbout[suite])
	b.WriteString("| proxy | date (UTC) | Kubernetes | nodes | parallel | time | passed | failed | skipped |\n|---|---|---|---|---|---|---|---|---|\n")
	for _, r := range runs {
		pass, fail, skip := r.Counts()
		fmt.Fprintf(b, "| %s | %s | %s | %d | %d | %s | %d | %d | %d |\n",
			r.Proxy, r.Date.Format("2006-01-02 15:04"), r.Kubernetes, r.Nodes, r.Procs, r.Took, pass, fail, skip)
	}
	b.WriteString("\nSelection")
	if suite.e2e() {
		b.WriteString(" (ginkgo regular expressions on a case's full text)")
	}
	b.WriteString(":\n\n")
	for _, r := range runs {
		fmt.Fprintf(b, "- %s: focus `%s`, skip `%s`\n", r.Proxy, r.Focus, r.Skip)
		for _, line := range r.Summary {
			fmt.Fprintf(b, "  - %s\n", line)
		}
	}
	names := caseNames(runs)
	conformance := map[string]bool{}
	for _, r := range runs {
		for _, c := range r.Cases {
			conformance[c.Name] = conformance[c.Name] || c.Conformance
		}
	}
	withC := slices.ContainsFunc(names, func(n string) bool { return conformance[n] })
	b.WriteString("\n### Cases\n\n")
	if withC {
		b.WriteString("[C] marks a [Conformance] case. ")
	}
	b.WriteString("A reason is the failure's first line, the case's own skip message, or the skip rule that excluded it.\n\n| case |")
	if withC {
		b.WriteString(" C |")
	}
	for _, r := range runs {
		fmt.Fprintf(b, " %s |", r.Proxy)
	}
	b.WriteString("\n|---|")
	if withC {
		b.WriteString("---|")
	}
	b.WriteString(strings.Repeat("---|", len(runs)))
	b.WriteString("\n")
	for _, name := range names {
		cells := make([]string, len(runs))
		for i, r := range runs {
			cells[i] = "—"
			for _, c := range r.Cases {
				if c.Name == name {
					cells[i] = cell(c)
				}
			}
		}
		fmt.Fprintf(b, "| %s |", escape(name))
		if withC {
			c := ""
			if conformance[name] {
				c = "C"
			}
			fmt.Fprintf(b, " %s |", c)
		}
		fmt.Fprintf(b, " %s |\n", strings.Join(cells, " | "))
	}
	b.WriteString("\n")
}

// caseNames are the cases of runs, sorted (ginkgo runs them in a
// random order).
func caseNames(runs []*RunResult) []string {
	seen := map[string]bool{}
	for _, r := range runs {
		for _, c := range r.Cases {
			seen[c.Name] = true
		}
	}
	return slices.Sorted(maps.Keys(seen))
}

// cell is a case's outcome in the cases table.
func cell(c Case) string {
	switch c.State {
	case Passed:
		return fmt.Sprintf("pass (%.0f s)", c.Seconds)
	case Failed:
		return "**FAIL**: " + escape(c.Reason)
	default:
		return "skip: " + escape(c.Reason)
	}
}

// escape keeps text from breaking a table row.
func escape(s string) string {
	return strings.NewReplacer("|", `\|`, "\n", " ").Replace(s)
}
