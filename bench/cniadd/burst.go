package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// burstResult is one round of the burst for one suite.
type burstResult struct {
	suite     string
	size      int // pods added at once
	round     int
	wall      time.Duration // first ADD started to last ADD exited
	cpu       time.Duration // user+sys of every cnitool ADD and the plugins it ran
	delWall   time.Duration // the same for DEL of every pod, all at once
	failures  int           // ADDs and DELs that failed
	firstErr  string
	addrs     int // addresses the results gave
	dupIPs    int // addresses given to more than one pod
	leftovers []string
}

// bursts runs the burst rounds of each size, the suites alternating (the
// order rotates each round), and returns the rounds (those done, on an
// error).
func (b *bench) bursts(suites []*suite, tmp string) ([]burstResult, error) {
	var out []burstResult
	for _, size := range b.o.burst {
		fmt.Fprintf(os.Stderr, "burst: %d full-chain pods at once, %d rounds per suite, alternating …\n", size, b.o.burstRounds)
		for round := 0; round < b.o.burstRounds; round++ {
			for j := range suites {
				s := suites[(round+j)%len(suites)]
				r, err := b.burst(s, size, round, tmp)
				if err != nil {
					return out, fmt.Errorf("burst of %d, %s round %d: %w", size, s.name, round+1, err)
				}
				out = append(out, r)
				fmt.Fprintf(os.Stderr, "  %-9s round %d: ADD %s, DEL %s, %d failures\n", s.name, round+1,
					r.wall.Round(time.Millisecond), r.delWall.Round(time.Millisecond), r.failures)
			}
		}
	}
	return out, nil
}

// burst is one round: a fresh node (its own host namespace, conflist and
// state directories), warmed up by one pod added and deleted so the
// bridge and the NAT chains exist, then b.o.burst pods, each in its own
// namespace, added at once by one cnitool process each; then all deleted
// at once, and what is left on the node compared with the warmed-up node.
func (b *bench) burst(s *suite, size, round int, tmp string) (burstResult, error) {
	res := burstResult{suite: s.name, size: size, round: round + 1}
	dir := filepath.Join(tmp, s.name, fmt.Sprintf("burst%d-%d", size, round+1))
	node := &suite{name: s.name, binDir: s.binDir, netDir: filepath.Join(dir, "net.d")}
	if err := os.MkdirAll(node.netDir, 0o755); err != nil {
		return res, err
	}
	list := sandbox.FullChain("burst", b.o.cniVersion, "cni0", "10.90.0.0/16", dir)
	if err := os.WriteFile(filepath.Join(node.netDir, "burst.conflist"), list.JSON(), 0o644); err != nil {
		return res, err
	}
	var err error
	if node.host, err = netns.NewTemp("pnburst" + s.name[:3]); err != nil {
		return res, err
	}
	defer node.host.Remove()
	if _, err := b.addDel(node, "burst"); err != nil {
		return res, fmt.Errorf("warm-up pod: %w", err)
	}
	ipam := filepath.Join(dir, "ipam")
	before, err := sandbox.TakeNodeState(node.host.NS, ipam)
	if err != nil {
		return res, err
	}

	pods := make([]*netns.Temp, 0, size)
	defer func() {
		for _, p := range pods {
			p.Remove()
		}
	}()
	for range size {
		p, err := netns.NewTemp("pnburstpod")
		if err != nil {
			return res, err
		}
		pods = append(pods, p)
	}
	cmds := func(verb string) []*exec.Cmd {
		cs := make([]*exec.Cmd, len(pods))
		for i, p := range pods {
			cs[i] = exec.Command(b.cnitool, verb, "burst", p.Path())
			cs[i].Env = sandbox.CNIToolEnv(node.netDir, node.binDir, "eth0", chainCaps("burst", 31000+i))
		}
		return cs
	}

	adds, err := b.atOnce(node.host, cmds("add"))
	if err != nil {
		return res, err
	}
	res.wall, res.cpu = adds.wall, adds.cpu
	seen := map[string]int{}
	for i, r := range adds.runs {
		if r.err != nil {
			res.fail(fmt.Sprintf("ADD pod %d: %v", i, r.err))
			continue
		}
		ips, err := resultIPs(r.stdout)
		if err != nil || len(ips) == 0 {
			res.fail(fmt.Sprintf("ADD pod %d: no address in the result (%v): %s", i, err, r.stdout))
			continue
		}
		for _, ip := range ips {
			seen[ip]++
			res.addrs++
		}
	}
	for _, n := range seen {
		if n > 1 {
			res.dupIPs += n
		}
	}

	dels, err := b.atOnce(node.host, cmds("del"))
	if err != nil {
		return res, err
	}
	res.delWall = dels.wall
	for i, r := range dels.runs {
		if r.err != nil {
			res.fail(fmt.Sprintf("DEL pod %d: %v", i, r.err))
		}
	}
	after, err := sandbox.TakeNodeState(node.host.NS, ipam)
	if err != nil {
		return res, err
	}
	res.leftovers = after.Since(before)
	return res, nil
}

func (r *burstResult) fail(msg string) {
	r.failures++
	if r.firstErr == "" {
		r.firstErr = msg
	}
}

// proc is one process of a burst.
type proc struct {
	stdout []byte
	err    error
}

// batch is the outcome of processes run at once.
type batch struct {
	wall time.Duration
	cpu  time.Duration
	runs []proc
}

// atOnce starts every command from the runner thread inside ns (so each
// is a child in the node's namespace, with the private libcni cache), all
// before any is waited for, then waits for them all. wall runs from the
// first start to the last exit.
func (b *bench) atOnce(ns *netns.Temp, cmds []*exec.Cmd) (batch, error) {
	out := batch{runs: make([]proc, len(cmds))}
	stdouts := make([]bytes.Buffer, len(cmds))
	stderrs := make([]bytes.Buffer, len(cmds))
	started := make([]bool, len(cmds))
	var start time.Time
	err := b.r.Do(ns.NS, func() error {
		start = time.Now()
		for i, c := range cmds {
			c.Stdout, c.Stderr = &stdouts[i], &stderrs[i]
			if err := c.Start(); err != nil {
				out.runs[i].err = err
				continue
			}
			started[i] = true
		}
		return nil
	})
	if err != nil {
		return out, err
	}
	ends := make([]time.Time, len(cmds))
	var wg sync.WaitGroup
	for i, c := range cmds {
		if !started[i] {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := c.Wait()
			ends[i] = time.Now()
			if err != nil {
				out.runs[i].err = fmt.Errorf("%w: %s %s", err, strings.TrimSpace(stdouts[i].String()), strings.TrimSpace(stderrs[i].String()))
			}
		}()
	}
	wg.Wait()
	for i, c := range cmds {
		out.runs[i].stdout = stdouts[i].Bytes()
		if !started[i] {
			continue
		}
		if d := ends[i].Sub(start); d > out.wall {
			out.wall = d
		}
		if ru, ok := c.ProcessState.SysUsage().(*syscall.Rusage); ok && ru != nil {
			out.cpu += time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
		}
	}
	return out, nil
}

// resultIPs returns the addresses of a CNI result printed by cnitool.
func resultIPs(stdout []byte) ([]string, error) {
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(stdout, &r); err != nil {
		return nil, err
	}
	var ips []string
	for _, ip := range r.IPs {
		ips = append(ips, ip.Address)
	}
	return ips, nil
}

// median is the median of the rounds' values of f.
func median(rs []burstResult, f func(burstResult) time.Duration) time.Duration {
	ds := make([]time.Duration, len(rs))
	for i, r := range rs {
		ds[i] = f(r)
	}
	return pct(ds, .5)
}

func reportBursts(w io.Writer, o options, bursts []burstResult, j *jsonReport) {
	for _, size := range o.burst {
		var rs []burstResult
		for _, r := range bursts {
			if r.size == size {
				rs = append(rs, r)
			}
		}
		reportBurst(w, o, size, rs, j)
	}
}

// reportBurst reports the rounds of one burst size.
func reportBurst(w io.Writer, o options, size int, rs []burstResult, j *jsonReport) {
	of := func(suite string) []burstResult {
		var out []burstResult
		for _, r := range rs {
			if r.suite == suite {
				out = append(out, r)
			}
		}
		return out
	}
	fmt.Fprintf(w, "\nburst: %d full-chain pods added at once (one cnitool process each, all started together), then all deleted at once;\n", size)
	fmt.Fprintf(w, "a fresh node per round, warmed up by one pod; %d rounds per suite, the suites alternating\n", o.burstRounds)
	fmt.Fprintf(w, "%-10s %5s %10s %10s %8s %8s %10s %8s %6s %7s  %s\n", "suite", "round", "ADD wall", "ADD CPU", "CPU/pod", "cores", "DEL wall",
		"failures", "addrs", "dup IPs", "left behind after DEL")
	for _, name := range []string{"podnet", "reference"} {
		for _, r := range of(name) {
			left := "nothing"
			if len(r.leftovers) > 0 {
				left = strings.Join(r.leftovers, ", ")
			}
			j.Bursts = append(j.Bursts, burstFigure{Pods: size, Suite: name, Round: r.round, AddWall: r.wall.Seconds(), AddCPU: r.cpu.Seconds(),
				DelWall: r.delWall.Seconds(), Failures: r.failures, Addrs: r.addrs, DupIPs: r.dupIPs, Leftovers: r.leftovers, FirstErr: r.firstErr})
			fmt.Fprintf(w, "%-10s %5d %10s %10s %8s %8.2f %10s %8d %6d %7d  %s\n", name, r.round, sec(r.wall), sec(r.cpu),
				ms(r.cpu/time.Duration(max(size, 1))), r.cpu.Seconds()/max(r.wall.Seconds(), 1e-9), sec(r.delWall),
				r.failures, r.addrs, r.dupIPs, left)
		}
	}
	fmt.Fprintf(w, "(ADD CPU: user+sys of the cnitool processes and the plugins they ran; cores: ADD CPU / ADD wall)\n")
	pr, rr := of("podnet"), of("reference")
	p := median(pr, func(r burstResult) time.Duration { return r.wall })
	ref := median(rr, func(r burstResult) time.Duration { return r.wall })
	fmt.Fprintln(w)
	source := "VISION.md (50 pods added at once, full chain)"
	if size != 50 {
		source = fmt.Sprintf("VISION.md's 50-pod bar applied to %d pods", size)
	}
	if ref > 0 {
		c := j.ratio(fmt.Sprintf("burst of %d, ADD wall time", size), fmt.Sprintf("median of %d rounds", len(pr)), p.Seconds(), ref.Seconds(), "s", bar, source)
		fmt.Fprintf(w, "burst of %d, ADD wall, median of %d: podnet %s / reference %s = %.2f (bar <= %.2f): %s\n",
			size, len(pr), sec(p), sec(ref), c.Ratio, bar, c.Verdict)
	}
	pd := median(pr, func(r burstResult) time.Duration { return r.delWall })
	rd := median(rr, func(r burstResult) time.Duration { return r.delWall })
	if rd > 0 {
		c := j.ratio(fmt.Sprintf("burst of %d, DEL wall time", size), fmt.Sprintf("median of %d rounds", len(pr)), pd.Seconds(), rd.Seconds(), "s", 0, "")
		fmt.Fprintf(w, "burst of %d, DEL wall, median of %d: podnet %s / reference %s = %.2f (no bar)\n", size, len(pr), sec(pd), sec(rd), c.Ratio)
	}
	for _, name := range []string{"podnet", "reference"} {
		fails, dups, leaks := 0, 0, 0
		for _, r := range of(name) {
			fails += r.failures
			dups += r.dupIPs
			leaks += len(r.leftovers)
		}
		ok := "all succeeded, no duplicate IP, nothing left behind"
		verdict := "meets"
		if fails+dups+leaks > 0 {
			ok = fmt.Sprintf("%d failures, %d duplicate addresses, %d kinds of leftovers", fails, dups, leaks)
			verdict = "misses"
		}
		if name == "podnet" {
			j.Checks = append(j.Checks, check{What: fmt.Sprintf("burst of %d: all succeed, no duplicate IP", size), Unit: "failures+duplicates+leftovers",
				Podnet: float64(fails + dups + leaks), BarSource: source, Verdict: verdict})
		}
		fmt.Fprintf(w, "%s burst of %d: %s\n", name, size, ok)
		for _, r := range of(name) {
			if r.firstErr != "" {
				fmt.Fprintf(w, "  round %d, first error: %s\n", r.round, r.firstErr)
			}
		}
	}
}

func sec(d time.Duration) string { return fmt.Sprintf("%.2f s", d.Seconds()) }
