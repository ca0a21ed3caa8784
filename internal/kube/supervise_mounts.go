package kube

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// nodeDirs are the standard paths each node gets its own directory on,
// bind-mounted from Dir/fs/<path> in its mount namespace: where kubelet,
// containerd, the CNI plugins and podnet's agent keep their state, and
// what a DaemonSet mounts as hostPath volumes.
var nodeDirs = []string{
	"/etc/cni/net.d",
	"/etc/kubernetes",
	"/opt/cni/bin",
	"/var/lib/cni",
	"/var/lib/containerd",
	"/var/lib/kubelet",
	"/var/lib/podnet",
	"/var/log/containers",
	"/var/log/pods",
	"/run/containerd",
	"/run/netns",
	"/run/podnet",
}

// nodeSysctls are the global sysctls kubelet writes (under /proc/sys):
// each node gets a regular file bound over them that absorbs the writes.
var nodeSysctls = []string{
	"vm/overcommit_memory",
	"vm/panic_on_oom",
	"kernel/panic",
	"kernel/panic_on_oops",
	"kernel/keys/root_maxkeys",
	"kernel/keys/root_maxbytes",
}

// nodeMount is one bind mount of a node: target (the standard path) from
// source (under Dir).
type nodeMount struct{ target, source string }

// nodeMounts lists a node's bind mounts of directories: nodeDirs, and
// /var/run/netns too where /var/run is not a link to /run (the CRI plugin
// binds pods' network namespaces under /var/run/netns).
func (c NodeConfig) nodeMounts() []nodeMount {
	var ms []nodeMount
	for _, d := range nodeDirs {
		ms = append(ms, nodeMount{target: d, source: c.fsPath(d)})
	}
	if r, err := filepath.EvalSymlinks("/var/run"); err == nil && r != "/run" {
		ms = append(ms, nodeMount{target: "/var/run/netns", source: c.fsPath("/run/netns")})
	}
	return ms
}

// mountpointXattr marks a directory a node created on the machine as a
// mountpoint, so that whichever node stops last removes it (a node that
// finds it made by another records nothing).
const mountpointXattr = "trusted.podnet.kube-mountpoint"

// lockMountpoints takes the machine-wide lock serializing the creation
// of mountpoints (and their mounting) with their removal: a flock on /.
func lockMountpoints() (unlock func(), err error) {
	fd, err := unix.Open("/", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("lock mountpoints: %w", err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("lock mountpoints: %w", err)
	}
	return func() { unix.Close(fd) }, nil
}

// mountNodeDirs creates the node's directories and binds them over the
// standard paths, creating (and marking) missing mountpoints on the
// machine. It must run in the node's mount namespace.
func (c NodeConfig) mountNodeDirs() error {
	unlock, err := lockMountpoints()
	if err != nil {
		return err
	}
	defer unlock()
	for _, m := range c.nodeMounts() {
		if err := os.MkdirAll(m.source, 0o755); err != nil {
			return fmt.Errorf("node dir: %w", err)
		}
		if err := makeMountpoint(m.target); err != nil {
			return err
		}
		if err := unix.Mount(m.source, m.target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", m.source, m.target, err)
		}
	}
	return nil
}

// makeMountpoint creates dir and its missing parents, marking each it
// creates.
func makeMountpoint(dir string) error {
	var missing []string
	for d := dir; d != "/"; d = filepath.Dir(d) {
		if _, err := os.Lstat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("mountpoint: %w", err)
		}
		missing = append(missing, d)
	}
	for i := len(missing) - 1; i >= 0; i-- {
		d := missing[i]
		if err := os.Mkdir(d, 0o755); err != nil {
			return fmt.Errorf("create mountpoint: %w", err)
		}
		if err := unix.Setxattr(d, mountpointXattr, []byte("1"), 0); err != nil {
			_ = os.Remove(d)
			return fmt.Errorf("mark mountpoint %s: %w", d, err)
		}
	}
	return nil
}

// removeMountpoints removes the mountpoint directories nodes created on
// the machine (those marked, with their marked parents) that are empty
// and a mountpoint in no mount namespace: no node uses them any more.
func removeMountpoints() error {
	unlock, err := lockMountpoints()
	if err != nil {
		return err
	}
	defer unlock()
	var dirs []string
	for _, d := range append(slices.Clone(nodeDirs), "/var/run/netns") {
		for ; d != "/"; d = filepath.Dir(d) {
			if !slices.Contains(dirs, d) {
				dirs = append(dirs, d)
			}
		}
	}
	// Deepest first: a parent is empty only once its children are gone.
	slices.SortStableFunc(dirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	var marked []string
	for _, d := range dirs {
		if _, err := unix.Lgetxattr(d, mountpointXattr, nil); err == nil {
			marked = append(marked, d)
		}
	}
	if len(marked) == 0 {
		return nil
	}
	inUse, err := mountpointsInUse()
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range marked {
		if inUse[d] {
			continue
		}
		if err := unix.Rmdir(d); err != nil && !errors.Is(err, unix.ENOTEMPTY) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("remove mountpoint %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

// mountpointsInUse lists the mount points of every mount namespace on the
// machine (one process's mountinfo each).
func mountpointsInUse() (map[string]bool, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, fmt.Errorf("list processes: %w", err)
	}
	seen := map[string]bool{}
	inUse := map[string]bool{}
	for _, e := range entries {
		if e.Name()[0] < '0' || e.Name()[0] > '9' {
			continue
		}
		ns, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt"))
		if err != nil || seen[ns] {
			continue
		}
		mounts, err := readMountinfo(filepath.Join("/proc", e.Name(), "mountinfo"))
		if err != nil {
			continue // the process is gone
		}
		seen[ns] = true
		for _, m := range mounts {
			inUse[m.point] = true
		}
	}
	return inUse, nil
}

// bindSysctls binds a regular file, holding the current value, over each
// global sysctl kubelet writes. It must run in the node's mount namespace.
func (c NodeConfig) bindSysctls() error {
	for _, s := range nodeSysctls {
		target := filepath.Join("/proc/sys", s)
		v, err := os.ReadFile(target)
		if err != nil {
			return fmt.Errorf("sysctl: %w", err)
		}
		file := c.path("sysctl", s)
		if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
			return fmt.Errorf("sysctl: %w", err)
		}
		if err := os.WriteFile(file, v, 0o644); err != nil {
			return fmt.Errorf("sysctl: %w", err)
		}
		if err := unix.Mount(file, target, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind %s over %s: %w", file, target, err)
		}
	}
	return nil
}

// detachNamespaceMounts detaches the network namespace files bound in
// the mount namespace the node inherited (other namespaces' /run/netns
// entries): a private copy would keep those namespaces alive after their
// owners delete them, with their links, until the node stops.
func detachNamespaceMounts() error {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var errs []error
	for _, m := range mounts {
		if m.fstype != "nsfs" {
			continue
		}
		if err := unix.Unmount(m.point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("detach %s: %w", m.point, err))
		}
	}
	return errors.Join(errs...)
}

// probeOverlay tells whether overlay mounts work on the node's
// directory (containerd's overlayfs snapshotter needs them); it must run
// in the node's mount namespace.
func (c NodeConfig) probeOverlay() bool {
	dir := c.path("overlay-probe")
	defer os.RemoveAll(dir)
	for _, d := range []string{"lower", "upper", "work", "merged"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return false
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s,workdir=%s",
		filepath.Join(dir, "lower"), filepath.Join(dir, "upper"), filepath.Join(dir, "work"))
	merged := filepath.Join(dir, "merged")
	if err := unix.Mount("overlay", merged, "overlay", 0, opts); err != nil {
		return false
	}
	return unix.Unmount(merged, unix.MNT_DETACH) == nil
}

// supervisorCgroup is the cgroup of the supervisor, and so of all its
// descendants but pods, below the node's cgroupRoot.
const supervisorCgroup = "supervisor"

// makeCgroups creates the node's cgroupRoot in every hierarchy (kubelet
// refuses a cgroupRoot that does not exist) and moves the supervisor into
// cgroupRoot/supervisor: every process the node forks is then in the
// node's cgroups from its birth, and Stop finds (and in cgroup v2 kills
// at once) them all there.
func (c NodeConfig) makeCgroups() error {
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	for _, r := range roots {
		root := filepath.Join(r, c.cgroupRoot())
		own := filepath.Join(root, supervisorCgroup)
		for _, dir := range []string{root, own} {
			if err := makeCgroup(dir); err != nil {
				return err
			}
		}
		if err := os.WriteFile(filepath.Join(own, "cgroup.procs"), pid, 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", own, err)
		}
	}
	return nil
}

// makeCgroup creates a cgroup; in the cpuset hierarchy it gets its
// parent's CPUs and memory nodes, without which no process could join it.
func makeCgroup(dir string) error {
	if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create cgroup: %w", err)
	}
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		v, err := os.ReadFile(filepath.Join(filepath.Dir(dir), f))
		if err != nil {
			continue // not the cpuset hierarchy
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
			return fmt.Errorf("cgroup %s: %w", filepath.Join(dir, f), err)
		}
	}
	return nil
}
