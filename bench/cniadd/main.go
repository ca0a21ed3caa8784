// Command cniadd measures CNI ADD latency the way the project's bars
// define it: through the official cnitool (libcni), for bridge+host-local
// and for the full chain (bridge+host-local, portmap with a port mapping,
// bandwidth with rates, tuning with a sysctl) under podnet's plugins and
// under the reference plugins, alternating in one run, against the floor
// (the same client adding a loopback-only network). Each pod gets a fresh
// network namespace and is deleted right after its ADD; every node is a
// throwaway namespace.
//
// Then the burst: many pods of the full chain added at once (one cnitool
// process per pod, all started together) on a fresh node per round, the
// suites alternating; it reports the wall time, failures, duplicate
// addresses, and what DEL of them all left behind.
//
//	go run ./bench/cniadd [-n 100] [-burst 50] [-burst-rounds 3] [-md docs/performance.md]
//
// It needs root and the reference plugins in /usr/lib/cni.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/sandbox"
)

// bar is the project's bar: podnet's cost above the floor must be at most
// this fraction of the reference plugins' cost above the floor.
const bar = 1.0 / 3

func main() {
	var o options
	flag.IntVar(&o.n, "n", 100, "pods per configuration")
	flag.IntVar(&o.warmup, "warmup", 3, "untimed rounds first")
	flag.StringVar(&o.cniVersion, "cni-version", "1.0.0", "cniVersion of the conflists (the reference plugins speak up to 1.0.0)")
	flag.StringVar(&o.cniBin, "cni-bin", "", "podnet-cni binary (default: $PODNET_CNI_BIN, else built)")
	flag.StringVar(&o.cnitool, "cnitool", "", "cnitool binary (default: built from the cni module)")
	flag.StringVar(&o.podnetDir, "podnet-path", "", "use this CNI_PATH directory as the podnet side instead of podnet-cni (A/B runs, sanity checks)")
	flag.StringVar(&o.refDir, "ref", sandbox.ReferenceDir, "directory of the reference plugins")
	flag.StringVar(&o.md, "md", "", "also write the report as Markdown to this file")
	flag.BoolVar(&o.bare, "bare", true, "also time the bare plugin execs (no cnitool): VERSION, and bridge ADD/DEL")
	flag.IntVar(&o.burst, "burst", 50, "pods added at once in the burst (0: no burst)")
	flag.IntVar(&o.burstRounds, "burst-rounds", 3, "burst rounds per suite (the report takes the median)")
	flag.Parse()
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "cniadd:", err)
		os.Exit(1)
	}
}

type options struct {
	n, warmup  int
	cniVersion string
	cniBin     string
	cnitool    string
	refDir     string
	podnetDir  string
	md         string
	bare       bool

	burst, burstRounds int
	loadStart          string // the machine's load average when the run began
}

// suite is one set of plugins on its own node.
type suite struct {
	name    string // "podnet", "reference"
	binDir  string // CNI_PATH
	netDir  string // NETCONFPATH
	dataDir string
	host    *netns.Temp
}

// series is the measurements of one configuration.
type series struct {
	label      string
	wall       []time.Duration
	cpu        []time.Duration // user+sys of the command and its children
	failures   int
	lastErr    string
	suite, net string
}

func (s *series) add(wall, cpu time.Duration) {
	s.wall = append(s.wall, wall)
	s.cpu = append(s.cpu, cpu)
}

func run(o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces")
	}
	if err := sandbox.HaveReference(chainTypes...); err != nil && o.refDir == sandbox.ReferenceDir {
		return err
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		// The reference portmap and bridge (ipMasq) exec it.
		return fmt.Errorf("the reference plugins need iptables (apt-get install iptables): %w", err)
	}
	o.loadStart = loadAverage()
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "podnet-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	cnitool := o.cnitool
	if cnitool == "" {
		cnitool = filepath.Join(tmp, "cnitool")
		fmt.Fprintln(os.Stderr, "building cnitool …")
		if err := sandbox.Build(ctx, cnitool, "github.com/containernetworking/cni/cnitool"); err != nil {
			return err
		}
	}
	podnetBin := o.podnetDir
	if podnetBin == "" {
		bin := o.cniBin
		if bin == "" {
			fmt.Fprintln(os.Stderr, "locating/building podnet-cni …")
			if bin, err = sandbox.PodnetCNI(ctx, tmp); err != nil {
				return err
			}
		}
		podnetBin = filepath.Join(tmp, "podnet-bin")
		links, err := sandbox.PodnetLinks(bin)
		if err != nil {
			return err
		}
		if err := sandbox.LinkBinDir(podnetBin, links); err != nil {
			return err
		}
	}
	for _, typ := range chainTypes {
		if err := sandbox.Supports(podnetBin, typ); err != nil {
			return err
		}
	}

	suites := []*suite{
		{name: "podnet", binDir: podnetBin},
		{name: "reference", binDir: o.refDir},
	}
	for _, s := range suites {
		s.netDir = filepath.Join(tmp, s.name, "net.d")
		s.dataDir = filepath.Join(tmp, s.name, "ipam")
		if err := writeConflists(s, o.cniVersion); err != nil {
			return err
		}
		if s.host, err = netns.NewTemp("pnbench" + s.name[:3]); err != nil {
			return err
		}
		defer s.host.Remove()
	}

	r, err := newRunner(true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "no private libcni cache (%v): cnitool will use /var/lib/cni\n", err)
		if r, err = newRunner(false); err != nil {
			return err
		}
	}
	defer r.close()
	if r.private {
		probe, err := netns.NewTemp("pnbenchprobe")
		if err != nil {
			return err
		}
		ok := r.sees(suites[0].host.NS, probe.Path())
		probe.Remove()
		if !ok {
			fmt.Fprintln(os.Stderr, "new namespaces are not visible in a private mount namespace (/run/netns not shared): cnitool will use /var/lib/cni")
			r.close()
			if r, err = newRunner(false); err != nil {
				return err
			}
		}
	}
	if !r.private {
		defer cleanupMachineCache()
	}

	b := &bench{o: o, r: r, cnitool: cnitool}
	configs := []*series{}
	for _, net := range []string{"floor", "bridge", "chain"} {
		for _, s := range suites {
			configs = append(configs, &series{label: s.name + " " + netLabel[net], suite: s.name, net: net})
		}
	}
	bySuite := map[string]*suite{}
	for _, s := range suites {
		bySuite[s.name] = s
	}
	bare := map[string]*series{}
	for _, s := range suites {
		for _, k := range []string{"VERSION", "ADD", "DEL"} {
			bare[s.name+k] = &series{label: fmt.Sprintf("%s bridge %s", s.name, k)}
		}
	}

	fmt.Fprintf(os.Stderr, "measuring %d pods per configuration (+%d warm-up), alternating …\n", o.n, o.warmup)
	start := time.Now()
	for i := 0; i < o.warmup+o.n; i++ {
		timed := i >= o.warmup
		// Rotate the order so no configuration always runs first.
		for j := range configs {
			c := configs[(i+j)%len(configs)]
			wall, cpu, err := b.addDel(bySuite[c.suite], c.net)
			if err != nil {
				c.failures++
				c.lastErr = err.Error()
				continue
			}
			if timed {
				c.add(wall, cpu)
			}
		}
		if o.bare {
			for _, s := range suites {
				if err := b.bareRound(s, o.cniVersion, bare, timed); err != nil {
					bare[s.name+"ADD"].failures++
					bare[s.name+"ADD"].lastErr = err.Error()
				}
			}
		}
		if (i+1)%25 == 0 {
			fmt.Fprintf(os.Stderr, "  %d/%d rounds, %s\n", i+1, o.warmup+o.n, time.Since(start).Round(time.Second))
		}
	}

	seqTook := time.Since(start)
	var bursts map[string][]burstResult
	var burstErr error
	if o.burst > 0 {
		// On an error the rounds done so far are still reported.
		bursts, burstErr = b.bursts(suites, tmp)
	}

	var rep bytes.Buffer
	report(&rep, o, configs, bare, seqTook)
	if o.burst > 0 {
		reportBursts(&rep, o, bursts)
	}
	os.Stdout.Write(rep.Bytes())
	if o.md != "" {
		if err := os.WriteFile(o.md, markdown(rep.String(), o), 0o644); err != nil {
			return err
		}
	}
	if burstErr != nil {
		return burstErr
	}
	for _, c := range configs {
		if c.failures > 0 {
			return fmt.Errorf("%s: %d failures, last: %s", c.label, c.failures, c.lastErr)
		}
	}
	for name, rs := range bursts {
		for _, r := range rs {
			if r.failures > 0 || r.dupIPs > 0 || len(r.leftovers) > 0 {
				return fmt.Errorf("%s burst: %d failures, %d duplicate addresses, left behind %v; first error: %s",
					name, r.failures, r.dupIPs, r.leftovers, r.firstErr)
			}
		}
	}
	return nil
}

var netLabel = map[string]string{
	"floor":  "loopback (floor)",
	"bridge": "bridge+host-local",
	"chain":  "full chain",
}

// chainTypes are the plugin types the benchmark runs.
var chainTypes = []string{"loopback", "bridge", "host-local", "portmap", "bandwidth", "tuning"}

// fullChain is the full chain as a node's runtime configures it:
// bridge+host-local on its own bridge and subnet, then portmap, bandwidth
// and tuning (a sysctl), their state in dataDir. The port mappings and the
// rates come as capability args (chainCaps).
func fullChain(name, version, bridge, subnet, dataDir string) sandbox.ConfList {
	return sandbox.ConfList{Name: name, CNIVersion: version, Plugins: []sandbox.Conf{
		sandbox.Bridge(bridge, sandbox.HostLocal(subnet, filepath.Join(dataDir, "ipam"))),
		sandbox.PortMap(nil),
		sandbox.Bandwidth(),
		sandbox.Tuning(sandbox.Conf{
			"dataDir": filepath.Join(dataDir, "tuning"),
			"sysctl":  map[string]any{"net.ipv4.conf.eth0.arp_notify": "1"},
		}),
	}}
}

// chainCaps are the capability args of a full-chain pod, as containerd
// sends them: a TCP and a UDP host port (distinct per pod), and ingress
// and egress rates of 100 Mbit/s with 1 Mbit bursts.
func chainCaps(hostPort int) string {
	caps := sandbox.BandwidthCap(100_000_000, 1_000_000, 100_000_000, 1_000_000)
	for k, v := range sandbox.PortMappings(
		sandbox.PortMapping("tcp", hostPort, 80, ""),
		sandbox.PortMapping("udp", hostPort, 53, ""),
	) {
		caps[k] = v
	}
	b, err := json.Marshal(caps)
	if err != nil {
		panic(err) // maps of strings and numbers always marshal
	}
	return string(b)
}

// writeConflists writes the floor, bridge and full-chain networks of a
// suite.
func writeConflists(s *suite, version string) error {
	if err := os.MkdirAll(s.netDir, 0o755); err != nil {
		return err
	}
	lists := []sandbox.ConfList{
		{Name: "floor", CNIVersion: version, Plugins: []sandbox.Conf{sandbox.Loopback()}},
		{Name: "bridge", CNIVersion: version, Plugins: []sandbox.Conf{
			sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/16", s.dataDir)),
		}},
		fullChain("chain", version, "cni1", "10.89.0.0/16", filepath.Join(filepath.Dir(s.dataDir), "chain")),
	}
	for _, l := range lists {
		if err := os.WriteFile(filepath.Join(s.netDir, l.Name+".conflist"), l.JSON(), 0o644); err != nil {
			return err
		}
	}
	return nil
}

type bench struct {
	o       options
	r       *runner
	cnitool string
}

// addDel creates a pod namespace, times `cnitool add`, then deletes the
// pod with `cnitool del` and removes the namespace.
func (b *bench) addDel(s *suite, net string) (wall, cpu time.Duration, err error) {
	pod, err := netns.NewTemp("pnbenchpod")
	if err != nil {
		return 0, 0, err
	}
	defer pod.Remove()
	ifName, caps := "eth0", ""
	switch net {
	case "floor":
		ifName = "lo"
	case "chain", "burst":
		caps = chainCaps(30080)
	}
	env := cnitoolEnv(s.netDir, s.binDir, ifName, caps)
	wall, cpu, err = b.exec(s.host, b.cnitool, env, nil, "add", net, pod.Path())
	if err != nil {
		return 0, 0, fmt.Errorf("cnitool add %s (%s): %w", net, s.name, err)
	}
	if _, _, err := b.exec(s.host, b.cnitool, env, nil, "del", net, pod.Path()); err != nil {
		return 0, 0, fmt.Errorf("cnitool del %s (%s): %w", net, s.name, err)
	}
	return wall, cpu, nil
}

// cnitoolEnv is cnitool's environment: where the conflists and plugins
// are, the interface name, and the capability args (JSON) if any.
func cnitoolEnv(netDir, binDir, ifName, caps string) []string {
	env := []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"NETCONFPATH=" + netDir,
		"CNI_PATH=" + binDir,
		"CNI_IFNAME=" + ifName,
	}
	if caps != "" {
		env = append(env, "CAP_ARGS="+caps)
	}
	return env
}

// bareRound times the bridge plugin executed directly, without cnitool:
// VERSION (the cost of starting the binary) and ADD then DEL of a pod.
func (b *bench) bareRound(s *suite, version string, out map[string]*series, timed bool) error {
	plugin := filepath.Join(s.binDir, "bridge")
	conf := sandbox.ConfList{Name: "bridge", CNIVersion: version, Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/16", s.dataDir)),
	}}.PluginConf(0)
	env := []string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND=VERSION"}
	w, c, err := b.exec(s.host, plugin, env, conf)
	if err != nil {
		return err
	}
	if timed {
		out[s.name+"VERSION"].add(w, c)
	}
	pod, err := netns.NewTemp("pnbenchpod")
	if err != nil {
		return err
	}
	defer pod.Remove()
	id := sandbox.RandomID()
	for _, cmd := range []string{"ADD", "DEL"} {
		env := append([]string{"PATH=/usr/sbin:/usr/bin:/sbin:/bin"},
			sandbox.Env(cmd, id, pod.Path(), "eth0", s.binDir)...)
		w, c, err := b.exec(s.host, plugin, env, conf)
		if err != nil {
			return fmt.Errorf("bare %s %s: %w", s.name, cmd, err)
		}
		if timed {
			out[s.name+cmd].add(w, c)
		}
	}
	return nil
}

// exec runs a command on the runner thread inside ns and returns its wall
// time and the CPU time of it and its children.
func (b *bench) exec(ns *netns.Temp, path string, env []string, stdin []byte, args ...string) (wall, cpu time.Duration, err error) {
	err = b.r.do(ns.NS, func() error {
		cmd := exec.Command(path, args...)
		cmd.Env = env
		if stdin != nil {
			cmd.Stdin = bytes.NewReader(stdin)
		}
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		start := time.Now()
		err := cmd.Run()
		wall = time.Since(start)
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
			cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
		if err != nil {
			return fmt.Errorf("%w: %s %s", err, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
		}
		return nil
	})
	return wall, cpu, err
}

// cleanupMachineCache removes what cnitool left in /var/lib/cni when the
// cache could not be private: DEL removes each result, so only the
// directories remain, removed when empty.
func cleanupMachineCache() {
	for _, d := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
		_ = os.Remove(d) // only if empty
	}
}

// loadAverage is the machine's 1-minute load average: the benchmark
// measures ratios in one run, but other load makes them noisier.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	return strings.Fields(string(b))[0]
}

func pct(ds []time.Duration, p float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	i := int(p*float64(len(s))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(s) {
		i = len(s) - 1
	}
	return s[i]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d)/1e6) }

func find(cs []*series, suite, net string) *series {
	for _, c := range cs {
		if c.suite == suite && c.net == net {
			return c
		}
	}
	return nil
}

func report(w io.Writer, o options, configs []*series, bare map[string]*series, took time.Duration) {
	host, _ := os.Hostname()
	fmt.Fprintf(w, "CNI ADD latency through cnitool (libcni), cniVersion %s, %d pods per configuration, alternating\n", o.cniVersion, o.n)
	fmt.Fprintf(w, "machine: %s, %d CPUs, %s; run took %s; load average %s at start, %s at end\n\n", host, runtime.NumCPU(), runtime.Version(),
		took.Round(time.Second), o.loadStart, loadAverage())
	fmt.Fprintf(w, "%-32s %10s %10s %14s %10s %8s\n", "configuration", "p50", "p95", "cost>floor p50", "CPU p50", "failures")
	for _, c := range configs {
		cost := "-"
		if c.net != "floor" {
			if f := find(configs, c.suite, "floor"); f != nil {
				cost = ms(pct(c.wall, .5) - pct(f.wall, .5))
			}
		}
		fmt.Fprintf(w, "%-32s %10s %10s %14s %10s %8d\n", c.label, ms(pct(c.wall, .5)), ms(pct(c.wall, .95)), cost, ms(pct(c.cpu, .5)), c.failures)
	}
	p50 := func(suite, net string) time.Duration { return pct(find(configs, suite, net).wall, .5) }
	fmt.Fprintln(w)
	for _, net := range []string{"bridge", "chain"} {
		label := netLabel[net]
		pc, rc := p50("podnet", net)-p50("podnet", "floor"), p50("reference", net)-p50("reference", "floor")
		if rc <= 0 {
			fmt.Fprintf(w, "%s: reference cost above floor is %s: no ratio\n", label, ms(rc))
			continue
		}
		ratio := float64(pc) / float64(rc)
		fmt.Fprintf(w, "%-18s each suite above its own floor: podnet %s / reference %s = %.2f (bar <= %.2f): %s\n",
			label+",", ms(pc), ms(rc), ratio, bar, verdict(ratio))
		// Stricter: both above the lower floor, so a slower-starting
		// binary is not subtracted away.
		floor := min(p50("podnet", "floor"), p50("reference", "floor"))
		pc2, rc2 := p50("podnet", net)-floor, p50("reference", net)-floor
		ratio2 := float64(pc2) / float64(rc2)
		fmt.Fprintf(w, "%-18s both above the lower floor (%s): podnet %s / reference %s = %.2f (bar <= %.2f): %s\n",
			label+",", ms(floor), ms(pc2), ms(rc2), ratio2, bar, verdict(ratio2))
	}
	if len(bare) > 0 {
		fmt.Fprintf(w, "\nbare plugin execs (no cnitool, no libcni), same run:\n")
		fmt.Fprintf(w, "%-32s %10s %10s %10s\n", "exec", "p50", "p95", "CPU p50")
		for _, s := range []string{"podnet", "reference"} {
			for _, k := range []string{"VERSION", "ADD", "DEL"} {
				b := bare[s+k]
				if b == nil || len(b.wall) == 0 {
					continue
				}
				fmt.Fprintf(w, "%-32s %10s %10s %10s\n", b.label, ms(pct(b.wall, .5)), ms(pct(b.wall, .95)), ms(pct(b.cpu, .5)))
			}
		}
		// Where the full chain's time goes: each plugin is a process of
		// its own, and the chain runs four more of them than the floor
		// (bridge, host-local, portmap, bandwidth, tuning vs loopback).
		for _, s := range []string{"podnet", "reference"} {
			v, ch, fl := bare[s+"VERSION"], find(configs, s, "chain"), find(configs, s, "floor")
			if v == nil || len(v.wall) == 0 || ch == nil || len(ch.wall) == 0 || fl == nil || len(fl.wall) == 0 {
				continue
			}
			cost := pct(ch.wall, .5) - pct(fl.wall, .5)
			starts := 4 * pct(v.wall, .5)
			fmt.Fprintf(w, "%s: the full chain's cost above the floor is %s; starting its 4 extra plugin processes alone (4 x VERSION p50) is %s (%.0f%%)\n",
				s, ms(cost), ms(starts), 100*float64(starts)/float64(cost))
		}
		for _, s := range []string{"podnet", "reference"} {
			add, br := bare[s+"ADD"], find(configs, s, "bridge")
			if add != nil && len(add.wall) > 0 && br != nil && len(br.wall) > 0 {
				fmt.Fprintf(w, "%s: the bridge plugin's own ADD is %s of the %s cnitool call (%.0f%%)\n", s,
					ms(pct(add.wall, .5)), ms(pct(br.wall, .5)), 100*float64(pct(add.wall, .5))/float64(pct(br.wall, .5)))
			}
		}
	}
}

// verdict says whether a ratio podnet/reference meets the bar.
func verdict(ratio float64) string {
	if ratio <= bar {
		return "meets"
	}
	return "misses"
}

func markdown(text string, o options) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# Performance\n\nGenerated by `make bench` (`go run ./bench/cniadd -n %d -burst %d -burst-rounds %d`) on %s.\n\n",
		o.n, o.burst, o.burstRounds, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	b.WriteString(`Sequential ADD latency: each configuration adds and deletes a pod in a fresh network namespace
through the official ` + "`cnitool`" + `, all configurations alternating in one run; the floor is the same
client adding a loopback-only network. Two networks are measured: bridge+host-local, and the full
chain (bridge+host-local, portmap with a TCP and a UDP host port, bandwidth with 100 Mbit/s rates
both ways, tuning with a sysctl), the mappings and rates sent as capability args as containerd
sends them. The bar: podnet's cost above the floor at most 1/3 of the reference plugins' cost above
the floor (Debian containernetworking-plugins).

Burst: the full chain's pods added at once, one ` + "`cnitool`" + ` process per pod, each pod in its
own namespace, on a fresh node (host namespace) per round, the suites alternating; then all
deleted at once, and what is left on the node (links, nftables rules, IPAM records) reported. The
bar: all succeed, no duplicate IP, wall time at most 1/3 of the reference's.

The machine is shared: its load average is in the report; the ratios come from one run in which
the suites alternate, so both see the same load.

` + "```\n")
	b.WriteString(text)
	b.WriteString("```\n")
	return b.Bytes()
}
