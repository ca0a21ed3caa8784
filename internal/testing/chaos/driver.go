package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/testing/sandbox"
)

// opTimeout bounds one cnitool run; one that takes longer is killed and
// reported as a failure (a hang is a finding too).
const opTimeout = 2 * time.Minute

// hostPortBase is the first pod's host port; pod i maps hostPortBase+i.
const hostPortBase = 20000

// state is where a pod stands in the runtime's journal.
type state int

const (
	// invalid: an ADD was killed or failed, or a DEL began and did not
	// succeed; the pod is left to DEL or GC.
	invalid state = iota
	// valid: the last completed operation is a successful ADD.
	valid
	// deleted: a DEL succeeded.
	deleted
)

// pod is a pod of the run and its journal entry.
type pod struct {
	sp    *sandbox.Pod
	id    string // the container ID cnitool derives from the namespace path
	port  int
	state state
	busy  bool
	// lost: the runtime lost track of the pod after an operation on it
	// was killed or failed, so no DEL comes: only GC can clean it up.
	lost bool
	ips  []net.IPNet // from the successful ADD's result
	// history lists the pod's operations and their outcomes, for the
	// findings.
	history []string
}

// driver runs the operations of one chaos run and keeps the journal.
type driver struct {
	cfg     Config
	sb      *sandbox.Sandbox
	name    string // the network, cnitool's argument
	netDir  string // NETCONFPATH
	dataDir string // the plugins' state (ipam/, tuning/)

	mu   sync.Mutex
	rng  *mrand.Rand
	pods []*pod
	// durations of the operations that ran to their end unkilled, by
	// verb: the kill delays are drawn within them.
	durations map[string][]time.Duration
	// baseline is the node after one pod was added and deleted.
	baseline sandbox.NodeState
}

// outcome is one cnitool run.
type outcome struct {
	stdout     []byte
	wall       time.Duration
	killed     bool // SIGKILL landed before the run ended
	killMissed bool // the kill was due after the run had ended
	err        error
}

// warmUp adds and deletes one pod without kills, so the node has what the
// first pod creates once (the bridge, the tables); the node is then the
// baseline the teardown is compared with, and the two runs' durations
// seed the kill delays.
func (d *driver) warmUp(ctx context.Context) error {
	p, err := d.newPod()
	if err != nil {
		return err
	}
	d.durations = map[string][]time.Duration{}
	for _, verb := range []string{"add", "del"} {
		o := d.cnitool(ctx, verb, p, -1)
		if o.err != nil {
			return fmt.Errorf("warm-up %s: %w", verb, o.err)
		}
		// Under concurrency operations take longer: until real samples
		// come, the delays are drawn within twice the warm-up's time.
		d.durations["warm-up "+verb] = []time.Duration{2 * o.wall}
	}
	p.state = deleted
	if d.baseline, err = d.nodeState(); err != nil {
		return fmt.Errorf("baseline: %w", err)
	}
	return nil
}

// newPod creates a pod namespace with the next host port.
func (d *driver) newPod() (*pod, error) {
	sp, err := d.sb.NewPod()
	if err != nil {
		return nil, fmt.Errorf("pod namespace: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	p := &pod{sp: sp, id: sandbox.CNIToolContainerID(sp.Path()), port: hostPortBase + len(d.pods), busy: true}
	d.pods = append(d.pods, p)
	return p, nil
}

// run runs the operations, cfg.InFlight at a time.
func (d *driver) run(ctx context.Context, rep *Report) error {
	sem := make(chan struct{}, d.cfg.InFlight)
	var wg sync.WaitGroup
	var ctxErr error
	start := time.Now()
	for i := 0; i < d.cfg.Ops; i++ {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			ctxErr = ctx.Err()
		}
		if ctxErr != nil {
			break
		}
		verb, target, delay := d.next()
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			d.op(ctx, rep, verb, target, delay)
		}()
		if (i+1)%100 == 0 {
			fmt.Fprintf(d.cfg.Progress, "  %s: %d/%d operations, %s\n", d.cfg.Chain.Label, i+1, d.cfg.Ops, time.Since(start).Round(time.Second))
		}
	}
	wg.Wait()
	rep.OpsTook = time.Since(start)
	return ctxErr
}

// next chooses the next operation: DEL of a live pod that no operation
// holds, or ADD of a new pod (target nil), the mix keeping about cfg.Pods
// pods live (those the runtime knows: not deleted, not lost); and the
// delay after which the operation is killed (negative: not killed).
func (d *driver) next() (verb string, target *pod, delay time.Duration) {
	d.mu.Lock()
	defer d.mu.Unlock()
	var live, free []*pod
	for _, p := range d.pods {
		if p.state == deleted || p.lost {
			continue
		}
		live = append(live, p)
		if !p.busy {
			free = append(free, p)
		}
	}
	pAdd := 1 - float64(len(live))/float64(2*d.cfg.Pods)
	verb = "add"
	if len(free) > 0 && d.rng.Float64() >= pAdd {
		verb = "del"
		target = free[d.rng.IntN(len(free))]
		target.busy = true
		// As for a runtime: an attachment whose DEL began is no longer
		// valid, whether or not the DEL completes.
		target.state = invalid
	}
	delay = -1
	if d.rng.Float64() < d.cfg.KillShare {
		delay = time.Duration(d.rng.Int64N(int64(d.typical(verb)) + 1))
	}
	return verb, target, delay
}

// typical is the duration within which kill delays are drawn: the 90th
// percentile of the verb's unkilled runs so far (twice the warm-up's until
// there are five).
func (d *driver) typical(verb string) time.Duration {
	ds := d.durations[verb]
	if len(ds) < 5 {
		return d.durations["warm-up "+verb][0]
	}
	s := slices.Sorted(slices.Values(ds))
	return s[len(s)*9/10]
}

// op runs one operation and journals its outcome.
func (d *driver) op(ctx context.Context, rep *Report, verb string, p *pod, delay time.Duration) {
	if p == nil {
		var err error
		if p, err = d.newPod(); err != nil {
			d.mu.Lock()
			rep.fail(fmt.Sprintf("ADD: %v", err))
			d.mu.Unlock()
			return
		}
	}
	o := d.cnitool(ctx, verb, p, delay)
	var ips []net.IPNet
	var resErr error
	if verb == "add" && !o.killed && o.err == nil {
		if ips, resErr = resultIPs(o.stdout); resErr == nil && len(ips) == 0 {
			resErr = errors.New("no address in the result")
		}
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	p.busy = false
	p.history = append(p.history, o.String(verb, delay))
	if verb == "add" {
		rep.Adds++
	} else {
		rep.Dels++
	}
	switch {
	case o.killed:
		rep.Killed++
		if verb == "add" {
			rep.KilledAdds++
		}
		d.invalidate(p)
		return
	case o.killMissed:
		rep.KillsMissed++
	}
	if o.err == nil {
		d.durations[verb] = append(d.durations[verb], o.wall)
	}
	switch {
	case o.err != nil:
		rep.fail(fmt.Sprintf("%s %s: %v", strings.ToUpper(verb), p.id, o.err))
		d.invalidate(p)
	case resErr != nil:
		rep.fail(fmt.Sprintf("ADD %s: %v: %s", p.id, resErr, o.stdout))
		d.invalidate(p)
	case verb == "add":
		p.state, p.ips = valid, ips
	default:
		p.state = deleted
	}
}

// invalidate journals a pod whose operation was killed or failed: half
// of them stay candidates for a later DEL, as a runtime that tears a
// failed sandbox down retries; the runtime loses track of the other half,
// which only GC finds. d.mu is held.
func (d *driver) invalidate(p *pod) {
	p.state = invalid
	p.lost = d.rng.IntN(2) == 0
}

// cnitool runs `cnitool verb <network> <pod netns>` in the node namespace
// in a process group of its own and, with a delay ≥ 0, sends SIGKILL to
// the group after that delay unless it has ended.
func (d *driver) cnitool(ctx context.Context, verb string, p *pod, delay time.Duration) outcome {
	var o outcome
	cmd := exec.Command(d.cfg.CNITool, verb, d.name, p.sp.Path())
	cmd.Env = sandbox.CNIToolEnv(d.netDir, d.cfg.BinDir, "eth0", sandbox.ChainCaps(p.port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := d.cfg.Runner.Do(d.sb.Host.NS, cmd.Start); err != nil {
		o.err = fmt.Errorf("start cnitool %s: %w", verb, err)
		return o
	}
	start := time.Now()
	pid := cmd.Process.Pid
	// Wait for the exit without reaping: until cmd.Wait reaps it, the
	// group's leader keeps the group's ID, so a SIGKILL sent before
	// cannot reach another process.
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		var info unix.Siginfo
		for {
			if err := unix.Waitid(unix.P_PID, pid, &info, unix.WEXITED|unix.WNOWAIT, nil); !errors.Is(err, unix.EINTR) {
				return
			}
		}
	}()
	var kill <-chan time.Time
	if delay >= 0 {
		t := time.NewTimer(delay)
		defer t.Stop()
		kill = t.C
	}
	timeout := time.NewTimer(opTimeout)
	defer timeout.Stop()
	var why string // why SIGKILL is due: "chaos", "timeout" or "cancel"
	select {
	case <-exited:
	case <-kill:
		why = "chaos"
	case <-timeout.C:
		why = "timeout"
	case <-ctx.Done():
		why = "cancel"
	}
	if why != "" {
		select {
		case <-exited:
			why = "" // it ended meanwhile
		default:
			_ = unix.Kill(-pid, unix.SIGKILL)
		}
	}
	werr := cmd.Wait()
	o.wall = time.Since(start)
	o.stdout = stdout.Bytes()
	// The group's leader may still end on its own between the exit check
	// and the signal: only a leader the signal ended counts as killed.
	ws, _ := cmd.ProcessState.Sys().(syscall.WaitStatus)
	killed := why != "" && ws.Signaled()
	switch {
	case killed && why == "chaos":
		o.killed = true
	case killed && why == "timeout":
		o.err = fmt.Errorf("cnitool %s hung for %s and was killed", verb, opTimeout)
	case killed:
		o.err = fmt.Errorf("cnitool %s: %w", verb, ctx.Err())
	case werr != nil:
		o.err = fmt.Errorf("cnitool %s: %w: %s %s", verb, werr, strings.TrimSpace(stdout.String()), strings.TrimSpace(stderr.String()))
	}
	o.killMissed = delay >= 0 && !o.killed
	return o
}

// String tells how a run of verb (killed after delay, if ≥ 0) ended.
func (o outcome) String(verb string, delay time.Duration) string {
	s := fmt.Sprintf("%s %s", strings.ToUpper(verb), o.wall.Round(time.Millisecond))
	switch {
	case o.killed:
		s += fmt.Sprintf(" killed (after %s)", delay.Round(time.Millisecond))
	case o.err != nil:
		s += " failed"
	default:
		s += " ok"
	}
	return s
}

// resultIPs returns the addresses of a CNI result printed by cnitool.
func resultIPs(stdout []byte) ([]net.IPNet, error) {
	var r struct {
		IPs []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal(stdout, &r); err != nil {
		return nil, fmt.Errorf("parse the result: %w", err)
	}
	var ips []net.IPNet
	for _, ip := range r.IPs {
		a, n, err := net.ParseCIDR(ip.Address)
		if err != nil {
			return nil, fmt.Errorf("result address %q: %w", ip.Address, err)
		}
		ips = append(ips, net.IPNet{IP: a, Mask: n.Mask})
	}
	return ips, nil
}
