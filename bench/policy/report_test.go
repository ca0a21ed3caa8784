package main

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestBars(t *testing.T) {
	traffic := func(gbpsWith, rateWith float64, enforced bool) []*trafficRun {
		return []*trafficRun{
			{Label: "none", Gbps: []float64{10, 10, 11, 9}, PerSecond: []float64{1000, 1100, 900}},
			{Label: "with", Policies: 1003, Gbps: []float64{gbpsWith}, PerSecond: []float64{rateWith}, Enforced: enforced},
		}
	}
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	for _, tc := range []struct {
		what string
		res  *result
		want []string
	}{
		{"meets", &result{Measured: []int{10, 1000}, Runs: []*scaleRun{{Policies: 10, Enforce: ms(50)}, {Policies: 1000, Enforce: ms(100, 200, 900)}},
			Traffic: traffic(9.8, 950, true)},
			[]string{"900.0 ms (×0.90 of the bar) — meets", "98.0 % — meets", "95.0 % — meets"}},
		{"misses", &result{Measured: []int{1000}, Runs: []*scaleRun{{Policies: 1000, Enforce: ms(100, 1500)}}, Traffic: traffic(9, 800, true)},
			[]string{"1500.0 ms (×1.50 of the bar) — misses", "90.0 % — misses", "80.0 % — misses"}},
		{"not enforced", &result{Measured: []int{1000}, Isolation: "isolation not enforced within 1m0s", Runs: []*scaleRun{{Policies: 1000}},
			Traffic: traffic(10, 1000, false)},
			[]string{"not measured (isolation not enforced within 1m0s)", "the pair's traffic was not policed"}},
		{"1,000 not reached", &result{Measured: []int{10}, Runs: []*scaleRun{{Policies: 10, Enforce: ms(5)}}},
			[]string{"at 1000 policies: not measured (scales [10])", "throughput and connection rate with policies: not measured"}},
	} {
		t.Run(tc.what, func(t *testing.T) {
			got := strings.Join(tc.res.bars(), "\n")
			for _, w := range tc.want {
				if !strings.Contains(got, w) {
					t.Errorf("bars lack %q:\n%s", w, got)
				}
			}
			md := markdown(tc.res)
			for _, w := range append(tc.want, "## NetworkPolicy", "API objects only", "No peer column") {
				if !strings.Contains(md, w) {
					t.Errorf("markdown lacks %q", w)
				}
			}
		})
	}
}

func TestParseUsage(t *testing.T) {
	for _, tc := range []struct {
		what, text string
		cpu        time.Duration
		rss        int64
		wantErr    bool
	}{
		{"process collector", "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 4.194304e+07\n",
			1500 * time.Millisecond, 40 << 20, false},
		{"no memory", "# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1\n", 0, 0, true},
		{"garbage", "process_cpu_seconds_total one\n", 0, 0, true},
	} {
		t.Run(tc.what, func(t *testing.T) {
			cpu, rss, err := parseUsage([]byte(tc.text))
			if (err != nil) != tc.wantErr || cpu != tc.cpu || rss != tc.rss {
				t.Errorf("parseUsage = %s, %d, %v; want %s, %d, error %v", cpu, rss, err, tc.cpu, tc.rss, tc.wantErr)
			}
		})
	}
}

func TestParseScales(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    string
		wantErr bool
	}{
		{"10,100,1000", "[10 100 1000]", false},
		{"1000, 10,10", "[10 1000]", false},
		{"-1", "", true},
		{"many", "", true},
	} {
		got, err := parseScales(tc.in)
		if (err != nil) != tc.wantErr || (err == nil && fmt.Sprint(got) != tc.want) {
			t.Errorf("parseScales(%q) = %v, %v; want %s, error %v", tc.in, got, err, tc.want, tc.wantErr)
		}
	}
}

func TestFirstRun(t *testing.T) {
	// A pattern is the attempts in start order: y got the outcome
	// wanted, n did not, . has no result yet.
	attempts := func(pattern string) []*attempt {
		var out []*attempt
		for i, c := range pattern {
			if c == '.' {
				out = append(out, nil)
				continue
			}
			out = append(out, &attempt{i: i, ok: c == 'y'})
		}
		return out
	}
	for _, tc := range []struct {
		pattern string
		need    int
		first   int
		decided bool
	}{
		{"", 1, -1, true},
		{"nny", 1, 2, true},
		{"n.y", 1, -1, false},
		{"yyyy", 5, -1, true},
		{"nyyyyyn", 5, 1, true},
		{"yynyyyyy.", 5, 3, true},
		{"yynyy.yyy", 5, -1, false},
	} {
		first, decided := firstRun(attempts(tc.pattern), tc.need)
		if first != tc.first || decided != tc.decided {
			t.Errorf("firstRun(%q, %d) = %d, %v; want %d, %v", tc.pattern, tc.need, first, decided, tc.first, tc.decided)
		}
	}
}
