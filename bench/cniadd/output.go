package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// jsonReport is the machine-readable report: the machine, every figure,
// and every ratio with its bar and verdict.
type jsonReport struct {
	Generated  string  `json:"generated"`
	Command    string  `json:"command"`
	Machine    machine `json:"machine"`
	LoadStart  string  `json:"load_average_start"`
	LoadEnd    string  `json:"load_average_end"`
	CNIVersion string  `json:"cni_version"`
	Pods       int     `json:"pods_per_configuration"`
	SeqSeconds float64 `json:"sequential_run_seconds"`
	// Latency is ADD and DEL through cnitool, per suite and network.
	Latency []latencyFigure `json:"latency"`
	// Bare is the bridge plugin executed without cnitool.
	Bare []latencyFigure `json:"bare_execs"`
	// Checks are the ratios podnet / reference, with the bar where the
	// project has one.
	Checks     []check        `json:"checks"`
	Bursts     []burstFigure  `json:"bursts"`
	Footprint  *footprint     `json:"footprint,omitempty"`
	ADDProfile []rssResult    `json:"add_profile"`
	Errors     []string       `json:"errors,omitempty"`
	byKey      map[string]int // Checks index by what+basis
}

type machine struct {
	Hostname  string `json:"hostname"`
	CPUs      int    `json:"cpus"`
	Kernel    string `json:"kernel"`
	Go        string `json:"go"`
	LibCNI    string `json:"libcni_cnitool"`
	Reference string `json:"reference_plugins"`
	Commit    string `json:"podnet_commit"`
}

type latencyFigure struct {
	Suite    string  `json:"suite"`
	Network  string  `json:"network"`
	Op       string  `json:"op"`
	N        int     `json:"n"`
	P50      float64 `json:"p50_ms"`
	P95      float64 `json:"p95_ms"`
	P99      float64 `json:"p99_ms"`
	CPU50    float64 `json:"cpu_p50_ms"`
	Cost     float64 `json:"cost_above_floor_p50_ms,omitempty"`
	Failures int     `json:"failures"`
}

type check struct {
	What      string   `json:"what"`
	Basis     string   `json:"basis,omitempty"`
	Unit      string   `json:"unit"`
	Podnet    float64  `json:"podnet"`
	Reference float64  `json:"reference"`
	Ratio     float64  `json:"ratio"`
	Bar       *float64 `json:"bar_max_ratio,omitempty"`
	BarSource string   `json:"bar_source,omitempty"`
	Verdict   string   `json:"verdict"`
}

type burstFigure struct {
	Pods      int      `json:"pods"`
	Suite     string   `json:"suite"`
	Round     int      `json:"round"`
	AddWall   float64  `json:"add_wall_s"`
	AddCPU    float64  `json:"add_cpu_s"`
	DelWall   float64  `json:"del_wall_s"`
	Failures  int      `json:"failures"`
	Addrs     int      `json:"addresses"`
	DupIPs    int      `json:"duplicate_addresses"`
	Leftovers []string `json:"left_behind"`
	FirstErr  string   `json:"first_error,omitempty"`
}

// ratio records podnet / reference; bar 0 means the project has no bar
// for it (verdict "no bar").
func (j *jsonReport) ratio(what, basis string, podnet, ref float64, unit string, bar float64, source string) check {
	c := check{What: what, Basis: basis, Unit: unit, Podnet: podnet, Reference: ref, Verdict: "no bar"}
	if ref != 0 {
		c.Ratio = podnet / ref
	}
	if bar > 0 {
		c.Bar, c.BarSource = &bar, source
		c.Verdict = "misses"
		if ref > 0 && c.Ratio <= bar {
			c.Verdict = "meets"
		}
	}
	j.Checks = append(j.Checks, c)
	return c
}

func msf(d time.Duration) float64 { return float64(d) / 1e6 }

func newJSONReport(o options) *jsonReport {
	host, _ := os.Hostname()
	j := &jsonReport{
		Generated:  time.Now().UTC().Format(time.RFC3339),
		Command:    command(o),
		LoadStart:  o.loadStart,
		CNIVersion: o.cniVersion,
		Pods:       o.n,
		Machine: machine{Hostname: host, CPUs: runtime.NumCPU(), Kernel: kernel(), Go: runtime.Version(),
			LibCNI: libcniVersion(), Reference: referenceVersion(), Commit: commit()},
	}
	return j
}

func command(o options) string {
	return fmt.Sprintf("go run ./bench/cniadd -n %d -burst %s -burst-rounds %d", o.n, o.burst.String(), o.burstRounds)
}

func kernel() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// libcniVersion is the version of the CNI module cnitool and libcni are
// built from (this benchmark's own dependency).
func libcniVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/containernetworking/cni" {
				return d.Version
			}
		}
	}
	return "unknown"
}

// referenceVersion is the Debian package of the reference plugins.
func referenceVersion() string {
	out, err := exec.Command("dpkg-query", "-W", "-f", "${Package} ${Version}", "containernetworking-plugins").Output()
	if err != nil {
		return "unknown (not a Debian package)"
	}
	return string(out)
}

func commit() string {
	out, err := exec.Command("git", "rev-parse", "--short", "HEAD").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}

// markdown is cniadd's section: how it measures, then the report text.
func markdown(text string, o options) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "## CNI\n\nGenerated by `make bench` (`%s`) on %s; the same figures, every bar and verdict are in `performance.json`.\n\n",
		command(o), time.Now().UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString(`Sequential ADD and DEL latency: each configuration adds a pod in a fresh network namespace and
deletes it through the official ` + "`cnitool`" + ` (libcni), all configurations alternating in one run; the
floor is the same client adding a loopback-only network. Networks: bridge+host-local; ptp+host-local;
the full chain (bridge+host-local, portmap with a TCP and a UDP host port, bandwidth with 100 Mbit/s
rates both ways, tuning with a sysctl), the mappings and rates sent as capability args as containerd
sends them; and podnet's cluster conflist, generated by the node agent's own code (internal/cniconf:
the podnet plugin alone with host-local over a node subnet, honouring the portMappings and bandwidth
capabilities itself; cniVersion 1.1.0 as the agent writes it), whose reference counterpart is the
reference ` + "`ptp`" + `+host-local chained with ` + "`portmap`" + ` and ` + "`bandwidth`" + ` (cniVersion 1.0.0, the reference
plugins' highest), both given the same mappings and rates: the closest reference conflist, ptp being
the reference's routed veth. The bar (VISION.md): podnet's ADD cost above the floor at most 1/3 of the
reference plugins' (Debian containernetworking-plugins), for bridge+host-local and the full chain; the
same 1/3 is shown for ptp, marked as an extension; the cluster conflist's bar is 0.10 (issue 12: one
exec against the reference's three); DEL has no bar.

Burst: the full chain's pods added at once, one ` + "`cnitool`" + ` process per pod, each pod in its own
namespace, on a fresh node (host namespace) per round, the suites alternating; then all deleted at
once, and what is left on the node (links, nftables rules, IPAM records) reported. The bar: all
succeed, no duplicate IP, wall time at most 1/3 of the reference's (VISION names 50 pods).

Footprint: the installed size of podnet-cni against the reference binaries of the same types; the
peak RSS of one ADD is ru_maxrss from wait4 of each plugin process libcni runs, taken by GNU time (the process and the
children it reaped), the ADD's figure being its largest plugin process; the same pass gives each
plugin's wall time, which is where an ADD's time goes.

The machine is shared: its load average is in the report; the ratios come from one run in which the
suites alternate, so both see the same load.

` + "```\n")
	b.WriteString(text)
	b.WriteString("```\n")
	return b.Bytes()
}
