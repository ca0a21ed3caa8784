package kube

import (
	"fmt"
	"os/exec"
	"runtime"
	"sync"
	"syscall"

	"github.com/podnet/podnet/internal/netns"
	"golang.org/x/sys/unix"
)

// startInNetNS starts cmd inside the network namespace at nsPath; only
// the fork enters it. A detached process gets a session of its own and
// outlives the caller; any other dies with the caller (SIGKILL as its
// parent-death signal). cmd.SysProcAttr is set here.
func startInNetNS(nsPath string, cmd *exec.Cmd, detach bool) error {
	ns, err := netns.Open(nsPath)
	if err != nil {
		return err
	}
	defer ns.Close()
	if detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		return ns.Do(cmd.Start)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	forker.once.Do(func() {
		forker.reqs = make(chan forkRequest)
		go forkLoop(forker.reqs)
	})
	done := make(chan error, 1)
	forker.reqs <- forkRequest{ns: ns, cmd: cmd, done: done}
	return <-done
}

// forker forks the children that die with this process. The kernel sends
// the parent-death signal when the thread that forked the child ends,
// not the process, and the Go runtime does end threads: a goroutine that
// exits while locked to its thread (netns.Create's does) takes the thread
// with it, whichever thread that happens to be. So these children are
// forked on one thread that never ends.
var forker struct {
	once sync.Once
	reqs chan forkRequest
}

// forkRequest asks forkLoop to start cmd inside ns.
type forkRequest struct {
	ns   *netns.NS
	cmd  *exec.Cmd
	done chan<- error
}

// forkLoop serves fork requests on its own thread, for ever: each enters
// the request's namespace, starts the command and returns to the
// thread's own namespace (so that it holds no namespace alive).
func forkLoop(reqs <-chan forkRequest) {
	runtime.LockOSThread() // never unlocked: the thread must live on
	own, ownErr := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	for r := range reqs {
		if ownErr != nil {
			r.done <- fmt.Errorf("kube: fork thread's own netns: %w", ownErr)
			continue
		}
		if err := unix.Setns(r.ns.Fd(), unix.CLONE_NEWNET); err != nil {
			r.done <- fmt.Errorf("kube: enter netns %s: %w", r.ns.Path(), err)
			continue
		}
		r.done <- r.cmd.Start()
		// Back in its own namespace the thread pins no other. Should that
		// fail (it cannot, short of the kernel refusing its own netns),
		// the next request still enters its namespace first.
		_ = unix.Setns(own, unix.CLONE_NEWNET)
	}
}
