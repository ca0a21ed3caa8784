package sandbox

import (
	"context"
	"crypto/sha512"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"

	vnetns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/netns"
)

// CNIToolPackage is the official CNI command-line runtime, built from the
// cni module podnet requires.
const CNIToolPackage = "github.com/containernetworking/cni/cnitool"

// BuildCNITool builds cnitool into out.
func BuildCNITool(ctx context.Context, out string) error {
	return Build(ctx, out, CNIToolPackage)
}

// CNIToolEnv is cnitool's environment: where the conflists (NETCONFPATH)
// and the plugins (CNI_PATH) are, the interface name, and the capability
// args (CAP_ARGS, as containerd sends them; nil for none).
func CNIToolEnv(netDir, binDir, ifName string, caps map[string]any) []string {
	env := []string{
		"PATH=/usr/sbin:/usr/bin:/sbin:/bin",
		"NETCONFPATH=" + netDir,
		"CNI_PATH=" + binDir,
		"CNI_IFNAME=" + ifName,
	}
	if caps != nil {
		b, err := json.Marshal(caps)
		if err != nil {
			panic(err) // maps of strings, numbers and lists always marshal
		}
		env = append(env, "CAP_ARGS="+string(b))
	}
	return env
}

// CNIToolContainerID is the container ID cnitool gives the attachment of
// the namespace at netnsPath (an absolute path, as passed to cnitool): it
// derives the ID from a hash of the path.
func CNIToolContainerID(netnsPath string) string {
	s := sha512.Sum512([]byte(netnsPath))
	return fmt.Sprintf("cnitool-%x", s[:10])
}

// Runner executes commands from one dedicated OS thread. When it can, the
// thread has its own mount namespace in which a tmpfs covers /var/lib/cni,
// where cnitool keeps libcni's result cache (cnitool has no option to move
// it): a benchmark leaves nothing on the machine's disk. Before each
// command the thread enters the network namespace of the node the command
// is for, so the command (cnitool, and the plugins it runs) is a child
// inside it. libcni called in f (see Do) with the default cache dir shares
// cnitool's cache.
type Runner struct {
	reqs    chan func()
	private bool
}

// NewRunner starts a Runner with a private libcni cache, or, where the
// machine does not allow it (no mount namespace, or namespaces created
// later not visible in one), with the machine's /var/lib/cni.
func NewRunner() (*Runner, error) {
	r, err := startRunner(true)
	if err != nil {
		fmt.Fprintf(os.Stderr, "no private libcni cache (%v): cnitool will use /var/lib/cni\n", err)
		return startRunner(false)
	}
	probe, err := netns.NewTemp("pnprobe")
	if err != nil {
		r.Close()
		return nil, err
	}
	ok := r.sees(probe.Path())
	probe.Remove()
	if !ok {
		fmt.Fprintln(os.Stderr, "new namespaces are not visible in a private mount namespace (/run/netns not shared): cnitool will use /var/lib/cni")
		r.Close()
		return startRunner(false)
	}
	return r, nil
}

// startRunner starts the runner thread. With private set it gives the
// thread its private /var/lib/cni, else the thread shares the machine's.
func startRunner(private bool) (*Runner, error) {
	r := &Runner{reqs: make(chan func()), private: private}
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

// Do runs f on the runner thread inside the network namespace ns.
// Processes f starts are children inside ns that see the runner's cache.
func (r *Runner) Do(ns *netns.NS, f func() error) error {
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
func (r *Runner) sees(path string) bool {
	errc := make(chan error, 1)
	r.reqs <- func() {
		var st unix.Statfs_t
		if err := unix.Statfs(path, &st); err != nil {
			errc <- err
			return
		}
		if st.Type != unix.NSFS_MAGIC {
			errc <- errors.New("not a namespace")
			return
		}
		errc <- nil
	}
	return <-errc == nil
}

// Close stops the thread. Without a private cache it removes the
// machine's /var/lib/cni/results and /var/lib/cni when they are empty
// (DEL removes each result, so only the directories remain).
func (r *Runner) Close() {
	close(r.reqs)
	if !r.private {
		for _, d := range []string{"/var/lib/cni/results", "/var/lib/cni"} {
			_ = os.Remove(d) // only if empty
		}
	}
}
