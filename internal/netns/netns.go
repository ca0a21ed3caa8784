// Package netns opens network namespaces by path and runs code inside them
// without leaking a namespace switch to other goroutines: the switch happens
// on a locked OS thread that is thrown away if it cannot be switched back.
package netns

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NS is an open network namespace.
type NS struct {
	path   string
	handle netns.NsHandle
}

// Errors of Open, wrapped with the path and the cause; test them with
// errors.Is.
var (
	// ErrNotExist: nothing exists at the path (the container is gone).
	ErrNotExist = errors.New("network namespace does not exist")
	// ErrInvalid: the path is empty, cannot be opened, or is not a
	// network namespace.
	ErrInvalid = errors.New("not a network namespace")
	// ErrOwn: the path is the process's own network namespace.
	ErrOwn = errors.New("the process's own network namespace")
)

// Open opens the network namespace at path. A path that does not exist
// fails with ErrNotExist; one that is not a network namespace with
// ErrInvalid; the process's own namespace (a plugin given the host's
// namespace as the container's would configure, or on DEL delete, the
// host's interfaces) with ErrOwn. As in the CNI library's skel,
// CNI_NETNS_OVERRIDE=1 (or true) allows the own namespace; skel checks only
// after ADD and DEL have run, which is too late.
func Open(path string) (*NS, error) {
	if path == "" {
		return nil, fmt.Errorf("%w: empty path", ErrInvalid)
	}
	// A namespace file (nsfs, or its /proc link) is a regular file: refuse
	// anything else before opening it, since opening a FIFO blocks until a
	// writer comes and opening a device may act on it. O_NONBLOCK covers
	// a FIFO put in the file's place after the stat.
	var pre unix.Stat_t
	if err := unix.Stat(path, &pre); err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: %s", ErrNotExist, path)
		}
		return nil, fmt.Errorf("%w: %s: stat: %w", ErrInvalid, path, err)
	}
	if pre.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("%w: %s: file mode %#o is not a namespace file's", ErrInvalid, path, pre.Mode&unix.S_IFMT)
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, unix.ENOENT) {
			return nil, fmt.Errorf("%w: %s", ErrNotExist, path)
		}
		return nil, fmt.Errorf("%w: %s: open: %w", ErrInvalid, path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %s: statfs: %w", ErrInvalid, path, err)
	}
	if st.Type != unix.NSFS_MAGIC && st.Type != unix.PROC_SUPER_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("%w: %s: file system type %#x", ErrInvalid, path, st.Type)
	}
	h := netns.NsHandle(fd)
	// A file under /proc or nsfs may still be another kind of namespace.
	if err := checkNetType(fd); err != nil {
		h.Close()
		return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, path, err)
	}
	if own, err := isOwn(fd); (err != nil || own) && !ownAllowed() {
		h.Close()
		if err != nil {
			return nil, fmt.Errorf("%w: %s: cannot tell it from the own: %w", ErrOwn, path, err)
		}
		return nil, fmt.Errorf("%w: %s: the container's namespace must be another", ErrOwn, path)
	}
	return &NS{path: path, handle: h}, nil
}

// ownAllowed reports whether the runtime allows the plugin's own namespace
// as the container's (skel's CNI_NETNS_OVERRIDE).
func ownAllowed() bool {
	v := os.Getenv("CNI_NETNS_OVERRIDE")
	return v == "1" || strings.EqualFold(v, "true")
}

// isOwn reports whether fd is the process's own network namespace: that
// of the calling thread, which is not one that Do or Create moved (those
// stay locked to their goroutines). /proc/self would name the main
// thread's, which Create may have left in a namespace it made.
func isOwn(fd int) (bool, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var ns, own unix.Stat_t
	if err := unix.Fstat(fd, &ns); err != nil {
		return false, err
	}
	if err := unix.Stat("/proc/thread-self/ns/net", &own); err != nil {
		return false, err
	}
	return ns.Dev == own.Dev && ns.Ino == own.Ino, nil
}

// checkNetType asks the kernel which kind of namespace fd refers to.
func checkNetType(fd int) error {
	const nsGetNSType = 0xb703 // NS_GET_NSTYPE
	t, err := unix.IoctlRetInt(fd, nsGetNSType)
	if err != nil {
		return err
	}
	if t != unix.CLONE_NEWNET {
		return fmt.Errorf("namespace type %#x", t)
	}
	return nil
}

// Current opens the calling thread's network namespace.
func Current() (*NS, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	h, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("open current netns: %w", err)
	}
	return &NS{path: fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), unix.Gettid()), handle: h}, nil
}

// Path is the path the namespace was opened from.
func (n *NS) Path() string { return n.path }

// Fd is the namespace's file descriptor, valid until Close.
func (n *NS) Fd() int { return int(n.handle) }

// Handle is the namespace handle for netlink.NewHandleAt.
func (n *NS) Handle() netns.NsHandle { return n.handle }

// Close releases the namespace file descriptor.
func (n *NS) Close() error { return n.handle.Close() }

// Do runs f with the current goroutine's work moved onto an OS thread that
// is inside the namespace. Children forked by f inherit the namespace.
func (n *NS) Do(f func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(n.handle); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", n.path, err)
			return
		}
		ferr := f()
		// Only a thread back in its original namespace may be reused; a
		// thread left locked is destroyed when this goroutine exits.
		if err := netns.Set(orig); err == nil {
			runtime.UnlockOSThread()
		}
		errc <- ferr
	}()
	return <-errc
}
