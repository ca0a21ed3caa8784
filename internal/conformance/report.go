package conformance

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/podnet/podnet/internal/kube"
)

// Results are every run kept for docs/conformance.md, one per proxy.
type Results struct {
	Runs []*RunResult `json:"runs"`
}

// RunResult is one run's outcome.
type RunResult struct {
	// Suite is the tests run; empty in results written before there were
	// several: Services.
	Suite      Suite     `json:"suite,omitempty"`
	Proxy      Proxy     `json:"proxy"`
	Date       time.Time `json:"date"`
	Kubernetes string    `json:"kubernetes"`
	Nodes      int       `json:"nodes"`
	Procs      int       `json:"procs"`
	Focus      string    `json:"focus"`
	Skip       string    `json:"skip"`
	Took       string    `json:"took"`
	// Summary are lines on the run as a whole from the suite's own
	// report (ClusterNetworkPolicy: the profile's result).
	Summary []string `json:"summary,omitempty"`
	// Cases are the suite's cases the focus selects, in the suite's
	// order, each with its outcome.
	Cases []Case `json:"cases"`
}

// Case is one e2e case's outcome.
type Case struct {
	Name        string  `json:"name"`
	Conformance bool    `json:"conformance"`
	State       State   `json:"state"`
	Reason      string  `json:"reason,omitempty"`
	Seconds     float64 `json:"seconds,omitempty"`
}

// State is a case's outcome.
type State string

// The outcomes: every ginkgo state that is neither passed nor skipped
// (failed, panicked, timed out, interrupted, aborted) is a failure, its
// reason saying which.
const (
	Passed  State = "pass"
	Failed  State = "fail"
	Skipped State = "skip"
)

// Counts are a run's totals per outcome.
func (r *RunResult) Counts() (pass, fail, skip int) {
	for _, c := range r.Cases {
		switch c.State {
		case Passed:
			pass++
		case Failed:
			fail++
		default:
			skip++
		}
	}
	return pass, fail, skip
}

// ginkgoReport is the part of ginkgo's JSON report (a list of suite
// reports, github.com/onsi/ginkgo/v2/types.Report) a run reads.
type ginkgoReport struct {
	SuiteDescription string
	StartTime        time.Time
	RunTime          time.Duration
	SpecReports      []struct {
		ContainerHierarchyTexts []string
		LeafNodeType            string
		LeafNodeText            string
		LeafNodeLabels          []string
		State                   string
		RunTime                 time.Duration
		Failure                 struct{ Message string }
	}
}

// maxReason bounds a reason's length in the report.
const maxReason = 300

// ParseReport reads ginkgo's JSON report at path and returns the cases
// cfg.Focus selects, with why each skipped one was: the skip message of a
// case that skipped itself, or the alternative of cfg.Skip that excluded
// it.
func ParseReport(path string, cfg Config) (*RunResult, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("e2e report: %w", err)
	}
	var suites []ginkgoReport
	if err := json.Unmarshal(b, &suites); err != nil {
		return nil, fmt.Errorf("e2e report %s: %w", path, err)
	}
	focus, err := regexp.Compile(cfg.Focus)
	if err != nil {
		return nil, fmt.Errorf("focus: %w", err)
	}
	skipRules, err := splitAlternatives(cfg.Skip)
	if err != nil {
		return nil, err
	}
	res := &RunResult{Suite: cfg.Suite, Proxy: cfg.Proxy, Kubernetes: kube.Version, Focus: cfg.Focus, Skip: cfg.Skip}
	for _, s := range suites {
		if res.Date.IsZero() || s.StartTime.Before(res.Date) {
			res.Date = s.StartTime.UTC().Truncate(time.Second)
		}
		res.Took = s.RunTime.Round(time.Second).String()
		for _, sr := range s.SpecReports {
			if sr.LeafNodeType != "It" {
				continue // suite-level setup and teardown nodes
			}
			name := strings.TrimSpace(strings.Join(append(slices.Clone(sr.ContainerHierarchyTexts), sr.LeafNodeText), " "))
			if !focus.MatchString(s.SuiteDescription + " " + name) {
				continue
			}
			c := Case{Name: name, Conformance: strings.Contains(name, "[Conformance]"), Seconds: sr.RunTime.Round(100 * time.Millisecond).Seconds()}
			msg := reason(sr.Failure.Message)
			switch sr.State {
			case "passed":
				c.State = Passed
			case "skipped", "pending":
				c.State = Skipped
				c.Reason = msg
				if c.Reason == "" {
					c.Reason = skipReason(s.SuiteDescription+" "+name, skipRules, sr.State)
				}
			default:
				c.State = Failed
				c.Reason = sr.State
				if msg != "" {
					c.Reason += ": " + msg
				}
			}
			res.Cases = append(res.Cases, c)
		}
	}
	if len(res.Cases) == 0 {
		return nil, fmt.Errorf("e2e report %s: no case matches the focus %q", path, cfg.Focus)
	}
	return res, nil
}

// splitAlternatives splits a regular expression's top-level alternatives
// ("a|b(c|d)" → "a", "b(c|d)"), each compiled.
func splitAlternatives(re string) ([]*regexp.Regexp, error) {
	if re == "" {
		return nil, nil
	}
	var parts []string
	depth, start := 0, 0
	for i := 0; i < len(re); i++ {
		switch re[i] {
		case '\\':
			i++
		case '(', '[':
			depth++
		case ')', ']':
			depth--
		case '|':
			if depth == 0 {
				parts = append(parts, re[start:i])
				start = i + 1
			}
		}
	}
	parts = append(parts, re[start:])
	var out []*regexp.Regexp
	for _, p := range parts {
		r, err := regexp.Compile(p)
		if err != nil {
			return nil, fmt.Errorf("skip %q: %w", p, err)
		}
		out = append(out, r)
	}
	return out, nil
}

// skipReason names what excluded a case that did not skip itself.
func skipReason(text string, rules []*regexp.Regexp, state string) string {
	for _, r := range rules {
		if r.MatchString(text) {
			why := "excluded by the skip rule `" + r.String() + "`"
			if s, ok := skipWhy[r.String()]; ok {
				why += ": " + s
			}
			return why
		}
	}
	if state == "pending" {
		return "pending in the suite"
	}
	return "not run (suite interrupted or timed out)"
}

// reason is a failure or skip message on one line, its white space
// collapsed, cut to maxReason bytes.
func reason(msg string) string {
	r := strings.Join(strings.Fields(msg), " ")
	if len(r) > maxReason {
		n := maxReason
		for n > 0 && !utf8.RuneStart(r[n]) {
			n--
		}
		r = r[:n] + "…"
	}
	return r
}
