package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Supervise is a node's supervisor (`podnet kube-node`), started by
// StartNode in the node's network namespace and new mount and UTS
// namespaces of its own. It becomes a child subreaper (it reaps
// containerd's shims and whatever is orphaned under it), sets the
// hostname to the node's name, binds the node's directories and sysctl
// files (see NodeConfig), creates the node's cgroupRoot, starts
// containerd, imports the images, starts kubelet and kube-proxy, logging
// each to Dir/logs/<name>.log, and writes its readiness (or the error
// that stopped it) as a JSON line to ready. It restarts nothing: a
// component that exits is logged. On SIGTERM or SIGINT it stops kubelet
// and kube-proxy, then containerd, then kills what is left in its mount
// namespace and the node's cgroups, and returns.
func Supervise(configPath string, ready io.WriteCloser) error {
	b, err := os.ReadFile(configPath)
	if err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	var cfg NodeConfig
	if err := json.Unmarshal(b, &cfg); err != nil {
		return fmt.Errorf("supervisor: config %s: %w", configPath, err)
	}
	if err := cfg.validate(); err != nil {
		return fmt.Errorf("supervisor: %w", err)
	}
	s := &supervisor{cfg: cfg, log: log.New(os.Stderr, "kube-node "+cfg.Name+": ", log.LstdFlags|log.Lmicroseconds)}
	// Signals first: a SIGTERM during setup stops the node too.
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	defer signal.Stop(sigs)
	go func() {
		for sig := range sigs {
			if sig == syscall.SIGCHLD {
				s.reapOrphans()
			} else if ctx.Err() == nil {
				s.log.Printf("%v: stopping", sig)
				stop()
			}
		}
	}()

	snapshotter, err := s.setUp(ctx)
	rep := readyReport{Snapshotter: snapshotter}
	if err != nil {
		rep.Error = err.Error()
	}
	if line, merr := json.Marshal(rep); merr == nil {
		_, _ = ready.Write(append(line, '\n'))
	}
	ready.Close()
	if err == nil {
		s.log.Printf("ready (snapshotter %s)", snapshotter)
		<-ctx.Done()
	}
	s.shutDown()
	return err
}

// supervisor runs one node's components.
type supervisor struct {
	cfg      NodeConfig
	log      *log.Logger
	children []*supervised
}

// supervised is a process the supervisor started.
type supervised struct {
	name   string
	cmd    *exec.Cmd
	exited chan struct{}
}

// errStopping is setUp's error when a signal asked the node to stop.
var errStopping = errors.New("stopped while starting")

// setUp prepares the node and starts its components; it returns the
// snapshotter containerd uses.
func (s *supervisor) setUp(ctx context.Context) (string, error) {
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		return "", fmt.Errorf("PR_SET_CHILD_SUBREAPER: %w", err)
	}
	// Never touch the machine's mounts: refuse to run in the mount
	// namespace of the process that started it.
	if err := ownNamespace("mnt"); err != nil {
		return "", err
	}
	// The node's hostname is its name, in a UTS namespace of its own
	// (never the machine's): containerd, kubelet, kube-proxy and the
	// host-network pods (which share containerd's UTS namespace) see it,
	// as on a machine of its own.
	if err := ownNamespace("uts"); err != nil {
		return "", err
	}
	if err := unix.Sethostname([]byte(s.cfg.Name)); err != nil {
		return "", fmt.Errorf("hostname %s: %w", s.cfg.Name, err)
	}
	tools, err := FindContainerdTools()
	if err != nil {
		return "", err
	}
	steps := []func() error{
		detachNamespaceMounts,
		s.cfg.mountNodeDirs,
		s.cfg.bindSysctls,
		s.cfg.makeCgroups,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return "", err
		}
	}
	snapshotter := SnapshotterNative
	if s.cfg.probeOverlay() {
		snapshotter = SnapshotterOverlay
	}
	if err := s.writeConfigs(tools.Runc, snapshotter); err != nil {
		return snapshotter, err
	}
	containerd, err := s.start("containerd", tools.Containerd, "--config", s.cfg.path("config", "containerd.toml"))
	if err != nil {
		return snapshotter, err
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := WaitCRI(wctx, containerdSocket, containerd.alive); err != nil {
		return snapshotter, s.stopping(ctx, err)
	}
	ictx, icancel := context.WithTimeout(ctx, 2*time.Minute)
	defer icancel()
	if err := importImages(ictx, tools.Ctr, containerdSocket, snapshotter, s.cfg.Images...); err != nil {
		return snapshotter, s.stopping(ctx, err)
	}
	if _, err := s.start("kubelet", s.cfg.Bins.Kubelet, s.cfg.kubeletArgs()...); err != nil {
		return snapshotter, err
	}
	if s.cfg.ProxyKubeconfig != "" {
		if _, err := s.start("kube-proxy", s.cfg.Bins.Proxy, s.cfg.proxyArgs()...); err != nil {
			return snapshotter, err
		}
	}
	return snapshotter, s.stopping(ctx, nil)
}

// ownNamespace checks that the supervisor runs in a namespace of the kind
// ("mnt", "uts") of its own, not in the one of the process that started
// it (the machine's), which it must never change.
func ownNamespace(kind string) error {
	self, err := nsOf(os.Getpid(), kind)
	if err != nil {
		return err
	}
	if parent, err := nsOf(os.Getppid(), kind); err != nil || parent == self {
		return fmt.Errorf("not in a %s namespace of its own (%s): StartNode runs the supervisor", kind, self)
	}
	return nil
}

// stopping returns errStopping when ctx was cancelled (by a signal),
// else err.
func (s *supervisor) stopping(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return errStopping
	}
	return err
}

// writeConfigs writes the components' configuration files.
func (s *supervisor) writeConfigs(runc, snapshotter string) error {
	ctd, err := s.cfg.containerdConfig(runc, snapshotter)
	if err != nil {
		return err
	}
	kubelet, err := s.cfg.kubeletConfig()
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"containerd.toml": []byte(ctd),
		"kubelet.json":    kubelet,
		// Pods with dnsPolicy Default get the node's resolv.conf: none.
		"resolv.conf": nil,
	}
	if s.cfg.ProxyKubeconfig != "" {
		if files["kube-proxy.json"], err = s.cfg.proxyConfig(); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(s.cfg.path("config"), 0o755); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	for name, b := range files {
		if err := os.WriteFile(s.cfg.path("config", name), b, 0o644); err != nil {
			return fmt.Errorf("node config: %w", err)
		}
	}
	return nil
}

// start starts a component, logging to Dir/logs/<name>.log.
func (s *supervisor) start(name, bin string, args ...string) (*supervised, error) {
	logf, err := os.OpenFile(s.cfg.path("logs", name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	defer logf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Env = []string{"PATH=" + ToolPath, "HOME=/root"}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &supervised{name: name, cmd: cmd, exited: make(chan struct{})}
	go func() {
		err := cmd.Wait()
		s.log.Printf("%s (pid %d) exited: %v", name, cmd.Process.Pid, err)
		close(c.exited)
	}()
	s.children = append(s.children, c)
	s.log.Printf("started %s (pid %d): %s %v", name, cmd.Process.Pid, filepath.Base(bin), args)
	return c, nil
}

// alive is an error once the component has exited.
func (c *supervised) alive() error {
	select {
	case <-c.exited:
		return fmt.Errorf("%s exited: %v", c.name, c.cmd.ProcessState)
	default:
		return nil
	}
}

// ownComms are the command names of the supervisor's own children (and
// its own, which a child has until it execs): exec.Cmd waits for those.
func (s *supervisor) ownComms() []string {
	comms := []string{"containerd", "kubelet", "kube-proxy", "ctr"}
	if p, ok := readProcInfo(os.Getpid()); ok {
		comms = append(comms, p.comm)
	}
	return comms
}

// reapOrphans reaps the exited processes re-parented to the supervisor.
func (s *supervisor) reapOrphans() {
	own := s.ownComms()
	ReapOrphans(0, func(comm string) bool { return !slices.Contains(own, comm) })
}

// shutDown stops kubelet and kube-proxy, then containerd (SIGTERM, then
// SIGKILL after 10 s), then kills what is left: shims and pods (in the
// node's cgroups), and anything else in the node's mount namespace.
func (s *supervisor) shutDown() {
	var runtime, rest []*supervised
	for _, c := range s.children {
		if c.name == "containerd" {
			runtime = append(runtime, c)
		} else {
			rest = append(rest, c)
		}
	}
	s.stopComponents(rest)
	s.stopComponents(runtime)
	self := os.Getpid()
	ns, _ := nsOf(self, "mnt")
	cgroup := s.cfg.cgroupRoot()
	left := func() []int {
		var pids []int
		for _, pid := range append(ProcsInMountNS(ns), CgroupProcs(cgroup)...) {
			if pid != self && !slices.Contains(pids, pid) {
				pids = append(pids, pid)
			}
		}
		return pids
	}
	if killed := KillLeft(0, left); len(killed) > 0 {
		s.log.Printf("killed the node's remaining processes: %v", killed)
	}
	if running := ReapOrphans(5*time.Second, func(string) bool { return true }); len(running) > 0 {
		s.log.Printf("children still running: %v", running)
	}
	s.log.Printf("stopped")
}

// stopComponents sends SIGTERM to the components and waits for them,
// killing those still running after 10 s.
func (s *supervisor) stopComponents(cs []*supervised) {
	for _, c := range cs {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	deadline := time.After(10 * time.Second)
	for _, c := range cs {
		select {
		case <-c.exited:
		case <-deadline:
			s.log.Printf("%s did not stop on SIGTERM: killed", c.name)
			_ = c.cmd.Process.Kill()
			<-c.exited
		}
	}
}
