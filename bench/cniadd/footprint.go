package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// footprint is the installed size of each suite's plugins for the types
// podnet provides.
type footprint struct {
	PodnetBinary string   `json:"podnet_binary"`
	PodnetBytes  int64    `json:"podnet_bytes"`
	PodnetTypes  []string `json:"podnet_types"`
	// RefBytes sums the reference binaries of the types podnet provides,
	// each file counted once even where Debian hard-links two types.
	RefBytes int64    `json:"reference_bytes"`
	RefTypes []string `json:"reference_types"`
	// NoRef are podnet's types without a reference binary.
	NoRef []string `json:"podnet_types_without_reference"`
}

// measureFootprint sizes podnet-cni (one file, the types are hard links to
// it) and the reference binaries of the same types in refDir.
func measureFootprint(podnetCNI, refDir string) (footprint, error) {
	f := footprint{PodnetBinary: podnetCNI}
	fi, err := os.Stat(podnetCNI)
	if err != nil {
		return f, err
	}
	f.PodnetBytes = fi.Size()
	links, err := cnibin.Links(podnetCNI)
	if err != nil {
		return f, err
	}
	for t := range links {
		f.PodnetTypes = append(f.PodnetTypes, t)
	}
	sort.Strings(f.PodnetTypes)
	seen := map[uint64]bool{}
	for _, t := range f.PodnetTypes {
		ri, err := os.Stat(filepath.Join(refDir, t))
		if err != nil {
			f.NoRef = append(f.NoRef, t)
			continue
		}
		f.RefTypes = append(f.RefTypes, t)
		if st, ok := ri.Sys().(*syscall.Stat_t); ok {
			if seen[st.Ino] {
				continue
			}
			seen[st.Ino] = true
		}
		f.RefBytes += ri.Size()
	}
	return f, nil
}

// pluginRun is one plugin process of a libcni operation.
type pluginRun struct {
	typ, cmd string
	wall     time.Duration
	maxRSS   int64 // bytes: GNU time's %M (the plugin and the children it waited for)
}

// timeCmd is GNU time: it forks the plugin from its own small process and
// reports the plugin's ru_maxrss from wait4. The benchmark cannot take
// ru_maxrss of a child it starts itself: Linux carries the high-water RSS
// of the address space a process had before execve into its ru_maxrss,
// and a child of the benchmark starts as (a vfork of) the benchmark.
const timeCmd = "/usr/bin/time"

// recordingExec is libcni's plugin executor with a record of each plugin
// process: its wall time and its peak resident set size (ru_maxrss of the
// rusage wait4 returns for it, which covers the children it reaped, e.g.
// the reference bridge's host-local and iptables), through GNU time.
type recordingExec struct {
	runs   []pluginRun
	tmpDir string
}

var _ invoke.Exec = (*recordingExec)(nil)

// ExecPlugin runs the plugin as a child of the calling thread (the
// benchmark's runner thread, inside the node's namespace).
func (e *recordingExec) ExecPlugin(ctx context.Context, pluginPath string, stdin []byte, environ []string) ([]byte, error) {
	out, err := os.CreateTemp(e.tmpDir, "rss-")
	if err != nil {
		return nil, err
	}
	out.Close()
	defer os.Remove(out.Name())
	cmd := exec.CommandContext(ctx, timeCmd, "-q", "-f", "%M", "-o", out.Name(), pluginPath)
	cmd.Env = environ
	cmd.Stdin = bytes.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	run := pluginRun{typ: filepath.Base(pluginPath), wall: time.Since(start)}
	for _, kv := range environ {
		if c, ok := strings.CutPrefix(kv, "CNI_COMMAND="); ok {
			run.cmd = c
		}
	}
	if b, rerr := os.ReadFile(out.Name()); rerr == nil {
		if kb, perr := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64); perr == nil {
			run.maxRSS = kb * 1024
		}
	}
	e.runs = append(e.runs, run)
	if err != nil {
		var perr types.Error
		if json.Unmarshal(stdout.Bytes(), &perr) == nil && perr.Code != 0 {
			return nil, &perr
		}
		return nil, fmt.Errorf("%s: %w: %s", pluginPath, err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// FindInPath finds a plugin as libcni does.
func (e *recordingExec) FindInPath(plugin string, paths []string) (string, error) {
	return invoke.FindInPath(plugin, paths)
}

// Decode parses a VERSION answer as libcni does.
func (e *recordingExec) Decode(b []byte) (version.PluginInfo, error) {
	var d version.PluginDecoder
	return d.Decode(b)
}

// rssResult is the per-plugin profile of one configuration's ADD.
type rssResult struct {
	Suite   string `json:"suite"`
	Network string `json:"network"`
	Pods    int    `json:"pods"`
	// PeakRSS is the median over the pods of the largest plugin process
	// of one ADD.
	PeakRSS int64 `json:"add_peak_rss_bytes"`
	// Plugins are the ADD's plugin processes in chain order, medians.
	Plugins []pluginFigure `json:"add_plugins"`
}

// pluginFigure is one plugin process of an ADD (medians over the pods).
type pluginFigure struct {
	Type   string  `json:"type"`
	WallMs float64 `json:"wall_p50_ms"`
	MaxRSS int64   `json:"peak_rss_bytes"`
}

// profileADD adds and deletes pods of one network through libcni in this
// process (plugins executed by recordingExec from the runner thread in the
// node's namespace) and returns each plugin process's wall time and peak
// RSS. This is where an ADD's time goes, plugin by plugin.
func (b *bench) profileADD(s *suite, net string, pods int, cacheDir string) (rssResult, error) {
	res := rssResult{Suite: s.name, Network: net, Pods: pods}
	if _, err := os.Stat(timeCmd); err != nil {
		return res, fmt.Errorf("the ADD profile needs GNU time (apt-get install time): %w", err)
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return res, err
	}
	list, err := libcni.LoadConfList(s.netDir, confName(net))
	if err != nil {
		return res, err
	}
	var peaks []time.Duration // bytes, in a Duration for pct
	perPlugin := map[int][]time.Duration{}
	perRSS := map[int][]time.Duration{}
	var types []string
	for i := 0; i < pods; i++ {
		pod, err := netns.NewTemp("pnbenchrss")
		if err != nil {
			return res, err
		}
		rec := &recordingExec{tmpDir: cacheDir}
		cni := libcni.NewCNIConfigWithCacheDir([]string{s.binDir}, cacheDir, rec)
		rt := &libcni.RuntimeConf{ContainerID: cniruntime.RandomID(), NetNS: pod.Path(), IfName: "eth0",
			CapabilityArgs: chainCaps(net, 30080)}
		if net == "floor" {
			rt.IfName = "lo"
		}
		err = b.r.Do(s.host.NS, func() error {
			if _, err := cni.AddNetworkList(context.Background(), list, rt); err != nil {
				return fmt.Errorf("ADD: %w", err)
			}
			adds := len(rec.runs)
			if err := cni.DelNetworkList(context.Background(), list, rt); err != nil {
				return fmt.Errorf("DEL: %w", err)
			}
			rec.runs = rec.runs[:adds]
			return nil
		})
		pod.Remove()
		if err != nil {
			return res, fmt.Errorf("profile %s %s: %w", s.name, net, err)
		}
		var peak int64
		types = types[:0]
		for j, r := range rec.runs {
			types = append(types, r.typ)
			perPlugin[j] = append(perPlugin[j], r.wall)
			perRSS[j] = append(perRSS[j], time.Duration(r.maxRSS))
			peak = max(peak, r.maxRSS)
		}
		peaks = append(peaks, time.Duration(peak))
	}
	res.PeakRSS = int64(pct(peaks, .5))
	for j, t := range types {
		res.Plugins = append(res.Plugins, pluginFigure{Type: t, WallMs: msf(pct(perPlugin[j], .5)), MaxRSS: int64(pct(perRSS[j], .5))})
	}
	return res, nil
}

func mb(b int64) string { return fmt.Sprintf("%.1f MB", float64(b)/1e6) }

func reportFootprint(w io.Writer, f footprint, rss []rssResult, j *jsonReport) {
	fmt.Fprintf(w, "\nplugin footprint\n")
	fmt.Fprintf(w, "installed size: podnet-cni %s (one file; its %d types are hard links to it)\n", mb(f.PodnetBytes), len(f.PodnetTypes))
	fmt.Fprintf(w, "                reference  %s (%d binaries in %s for the same types: %s)\n", mb(f.RefBytes), len(f.RefTypes),
		sandbox.ReferenceDir, strings.Join(f.RefTypes, " "))
	if len(f.NoRef) > 0 {
		fmt.Fprintf(w, "                (podnet types without a reference binary, not in the sum: %s)\n", strings.Join(f.NoRef, " "))
	}
	if f.RefBytes > 0 {
		fmt.Fprintf(w, "                podnet / reference = %.2f (no bar)\n", float64(f.PodnetBytes)/float64(f.RefBytes))
		j.ratio("installed size of the plugins podnet provides", "", float64(f.PodnetBytes), float64(f.RefBytes), "bytes", 0, "")
	}
	if len(rss) == 0 {
		return
	}
	fmt.Fprintf(w, "\none ADD through libcni, plugin by plugin (medians over %d pods; wall time of each plugin process, and its peak RSS:\n", rss[0].Pods)
	fmt.Fprintf(w, "ru_maxrss from wait4 of the plugin process, through GNU time (its %%M), which includes the children it reaped, e.g. the reference's host-local)\n")
	fmt.Fprintf(w, "%-36s %12s  %s\n", "configuration", "ADD peak RSS", "plugin processes: wall p50 / peak RSS")
	for _, r := range rss {
		var parts []string
		for _, p := range r.Plugins {
			parts = append(parts, fmt.Sprintf("%s %.1f ms / %s", p.Type, p.WallMs, mb(p.MaxRSS)))
		}
		fmt.Fprintf(w, "%-36s %12s  %s\n", r.Suite+" "+netLabel[r.Network], mb(r.PeakRSS), strings.Join(parts, ", "))
	}
	for _, net := range nets[1:] {
		p, ref := findRSS(rss, "podnet", net), findRSS(rss, "reference", net)
		if p != nil && ref != nil && ref.PeakRSS > 0 {
			fmt.Fprintf(w, "%s: peak RSS of one ADD, podnet %s / reference %s = %.2f (no bar)\n", netLabel[net], mb(p.PeakRSS), mb(ref.PeakRSS),
				float64(p.PeakRSS)/float64(ref.PeakRSS))
			j.ratio("peak RSS of one ADD, "+netLabel[net], "", float64(p.PeakRSS), float64(ref.PeakRSS), "bytes", 0, "")
		}
	}
}

func findRSS(rs []rssResult, suite, net string) *rssResult {
	for i := range rs {
		if rs[i].Suite == suite && rs[i].Network == net {
			return &rs[i]
		}
	}
	return nil
}
