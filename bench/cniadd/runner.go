package main

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// runner executes commands from one dedicated OS thread. The thread has
// its own mount namespace in which a tmpfs covers /var/lib/cni, where
// cnitool keeps libcni's result cache (it has no option to move it): the
// benchmark leaves nothing on the machine's disk. Before each command the
// thread enters the network namespace of the node the command is for, so
// the command (cnitool, and the plugins it runs) is a child inside it.
type runner struct {
	reqs chan func()
	// private tells whether the cache is on the thread's private tmpfs;
	// when false, cnitool uses the machine's /var/lib/cni.
	private bool
}

// newRunner starts the runner thread. With private set it gives the
// thread its private /var/lib/cni, else the thread shares the machine's.
func newRunner(private bool) (*runner, error) {
	r := &runner{reqs: make(chan func()), private: private}
	errc := make(chan error, 1)
	go func() {
		// Never unlocked: the thread's namespaces are changed for good, and
		// it is destroyed when this goroutine returns.
		runtime.LockOSThread()
		if private {
			if err := privateCacheDir(); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
		for f := range r.reqs {
			f()
		}
	}()
	if err := <-errc; err != nil {
		return nil, err
	}
	return r, nil
}

// privateCacheDir moves the calling thread into a new mount namespace that
// still receives mounts from the machine's (new /run/netns entries), and
// mounts a tmpfs where libcni's default cache dir is.
func privateCacheDir() error {
	if err := unix.Unshare(unix.CLONE_NEWNS); err != nil {
		return fmt.Errorf("unshare mount namespace: %w", err)
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make mounts slave: %w", err)
	}
	if _, err := os.Stat("/var/lib/cni"); err == nil {
		return unix.Mount("tmpfs", "/var/lib/cni", "tmpfs", 0, "size=64m")
	}
	// No /var/lib/cni on the machine: cover /var/lib (for this thread
	// only) and make the directory inside the tmpfs.
	if err := unix.Mount("tmpfs", "/var/lib", "tmpfs", 0, "size=64m"); err != nil {
		return fmt.Errorf("mount tmpfs on /var/lib: %w", err)
	}
	return os.Mkdir("/var/lib/cni", 0o755)
}

// do runs f on the runner thread inside the network namespace ns.
func (r *runner) do(ns *netns.NS, f func() error) error {
	errc := make(chan error, 1)
	r.reqs <- func() {
		if err := vnetns.Set(ns.Handle()); err != nil {
			errc <- fmt.Errorf("enter %s: %w", ns.Path(), err)
			return
		}
		errc <- f()
	}
	return <-errc
}

// sees tells whether a path (a namespace bound under /run/netns after the
// runner started) is visible to the runner's children as a namespace.
func (r *runner) sees(ns *netns.NS, path string) bool {
	err := r.do(ns, func() error {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			return err
		}
		if st.Type != unix.NSFS_MAGIC {
			return errors.New("not a namespace")
		}
		return nil
	})
	return err == nil
}

// close stops the thread.
func (r *runner) close() { close(r.reqs) }
