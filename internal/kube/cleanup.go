package kube

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// This file is the teardown plumbing of a node (and of test/cri's
// containerd): finding the processes a runtime left (by parent, argument,
// mount namespace or cgroup), killing and reaping them, removing cgroups
// and mounts.

// procInfo is a process as /proc/<pid>/stat shows it.
type procInfo struct {
	pid, ppid int
	comm      string
	state     byte
	// start is the process's start time in clock ticks since boot: with
	// the pid, it names a process even once its pid may be reused.
	start uint64
}

// procTable lists every process there is.
func procTable() []procInfo {
	var out []procInfo
	for pid, b := range procFiles("stat") {
		if p, ok := parseProcStat(pid, string(b)); ok {
			out = append(out, p)
		}
	}
	return out
}

// parseProcStat parses "pid (comm) state ppid …"; comm may hold spaces
// and parentheses.
func parseProcStat(pid int, s string) (procInfo, bool) {
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return procInfo{}, false
	}
	// rest[0] is field 3 (state), rest[19] field 22 (starttime).
	rest := strings.Fields(s[end+1:])
	if len(rest) < 20 || len(rest[0]) != 1 {
		return procInfo{}, false
	}
	ppid, err := strconv.Atoi(rest[1])
	if err != nil {
		return procInfo{}, false
	}
	start, err := strconv.ParseUint(rest[19], 10, 64)
	if err != nil {
		return procInfo{}, false
	}
	return procInfo{pid: pid, ppid: ppid, comm: s[open+1 : end], state: rest[0][0], start: start}, true
}

// readProcInfo reads one process's stat; ok is false when it is gone.
func readProcInfo(pid int) (procInfo, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procInfo{}, false
	}
	return parseProcStat(pid, string(b))
}

// procFiles reads /proc/<pid>/<name> of every process there is.
func procFiles(name string) map[int][]byte {
	entries, _ := os.ReadDir("/proc")
	out := map[int][]byte{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if b, err := os.ReadFile(filepath.Join("/proc", e.Name(), name)); err == nil {
			out[pid] = b
		}
	}
	return out
}

// RuntimeOrphan tells whether a process named comm is one a container
// runtime leaves to the nearest child subreaper: a containerd shim (they
// daemonize) or a pod's pause process (it outlives a killed shim).
func RuntimeOrphan(comm string) bool {
	return strings.HasPrefix(comm, "containerd-shim") || comm == "pause"
}

// ReapOrphans reaps this process's children that match selects by command
// name (processes it never starts itself, so re-parented ones: this
// process is a child subreaper) once they exit, waiting up to timeout for
// those still running; it returns the ones that did not exit. It waits
// for those processes only, never for any child, so that an exec.Cmd
// keeps its own.
func ReapOrphans(timeout time.Duration, match func(comm string) bool) []int {
	deadline := time.Now().Add(timeout)
	self := os.Getpid()
	for {
		var running []int
		for _, p := range procTable() {
			if p.ppid != self || !match(p.comm) {
				continue
			}
			if p.state == 'Z' {
				var ws unix.WaitStatus
				_, _ = unix.Wait4(p.pid, &ws, unix.WNOHANG, nil)
			} else {
				running = append(running, p.pid)
			}
		}
		if len(running) == 0 || time.Now().After(deadline) {
			return running
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// KillLeft waits up to grace for list to come back empty, then SIGKILLs
// what it lists until it is empty (or 10 s passed: a process stuck in
// the kernel); it returns the processes it killed.
func KillLeft(grace time.Duration, list func() []int) []int {
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(list()) > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	var killed []int
	for deadline = time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		left := list()
		if len(left) == 0 {
			break
		}
		for _, pid := range left {
			if !slices.Contains(killed, pid) {
				killed = append(killed, pid)
			}
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return killed
}

// ProcsWithArg lists the live processes one of whose arguments is arg
// (the shims of a containerd are started with -address <its socket>).
func ProcsWithArg(arg string) []int {
	var pids []int
	for pid, b := range procFiles("cmdline") {
		if slices.Contains(strings.Split(string(b), "\x00"), arg) && procAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// ProcsInMountNS lists the live processes in the mount namespace ns (as
// the /proc/<pid>/ns/mnt link reads, "mnt:[4026531841]").
func ProcsInMountNS(ns string) []int {
	if ns == "" {
		return nil
	}
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(filepath.Join("/proc", e.Name(), "ns", "mnt")); err == nil && l == ns && procAlive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsOf reads a process's namespace link of a kind ("mnt", "uts", …),
// e.g. "mnt:[4026531841]".
func nsOf(pid int, kind string) (string, error) {
	l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/%s", pid, kind))
	if err != nil {
		return "", fmt.Errorf("%s namespace of %d: %w", kind, pid, err)
	}
	return l, nil
}

// procAlive tells whether pid runs (a zombie does not).
func procAlive(pid int) bool {
	p, ok := readProcInfo(pid)
	return ok && p.state != 'Z'
}

// cgroupHierarchies lists the mount points of the cgroup file systems
// (every cgroup v1 hierarchy, and the unified v2 one) this process sees.
func cgroupHierarchies() ([]string, error) {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if m.fstype == "cgroup" || m.fstype == "cgroup2" {
			out = append(out, m.point)
		}
	}
	return out, nil
}

// cgroupDirs lists the directories of the cgroup parent (an absolute
// cgroup path such as /podnet-n1) and all its descendants, in every
// hierarchy, parents before children.
func cgroupDirs(parent string) ([]string, error) {
	if !strings.HasPrefix(parent, "/") || parent == "/" || strings.Contains(parent, "..") {
		return nil, fmt.Errorf("cgroup %q: not an absolute cgroup below the root", parent)
	}
	roots, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, r := range roots {
		_ = filepath.WalkDir(filepath.Join(r, parent), func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	return dirs, nil
}

// CgroupProcs lists the live processes in the cgroup parent or below, in
// any hierarchy.
func CgroupProcs(parent string) []int {
	dirs, err := cgroupDirs(parent)
	if err != nil {
		return nil
	}
	var pids []int
	for _, d := range dirs {
		b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) && procAlive(pid) {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// KillCgroups kills every process in the cgroup parent or below, in any
// hierarchy, and returns those it found. Where the kernel has cgroup.kill
// (cgroup v2, Linux 5.14+) the tree is killed at once, processes being
// forked included; the others get SIGKILL until none is left.
func KillCgroups(parent string) []int {
	dirs, err := cgroupDirs(parent)
	if err != nil {
		return nil
	}
	found := CgroupProcs(parent)
	for _, d := range dirs {
		// No such file in a v1 hierarchy, or on an old kernel.
		if f, err := os.OpenFile(filepath.Join(d, "cgroup.kill"), os.O_WRONLY, 0); err == nil {
			_, _ = f.WriteString("1")
			f.Close()
		}
	}
	for _, pid := range KillLeft(0, func() []int { return CgroupProcs(parent) }) {
		if !slices.Contains(found, pid) {
			found = append(found, pid)
		}
	}
	return found
}

// RemoveCgroups kills the processes left in the cgroup parent (in every
// hierarchy: cgroup v1 controllers and v2) and removes it with its
// descendants, children first; it returns the processes it had to kill.
func RemoveCgroups(parent string) (killed []int, err error) {
	dirs, err := cgroupDirs(parent)
	if err != nil {
		return nil, err
	}
	killed = KillCgroups(parent)
	var errs []error
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := removeCgroupDir(dirs[i]); err != nil {
			errs = append(errs, err)
		}
	}
	return killed, errors.Join(errs...)
}

// removeCgroupDir removes one empty cgroup, retrying a while on EBUSY: a
// killed process leaves its cgroup only once the kernel has finished its
// exit.
func removeCgroupDir(dir string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup: %w", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mountEntry is one line of a mountinfo file.
type mountEntry struct {
	point, fstype string
}

// readMountinfo parses a /proc/<pid>/mountinfo file.
func readMountinfo(path string) ([]mountEntry, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	var out []mountEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent major:minor root point options [optional…] - fstype source super
		fields := strings.Fields(sc.Text())
		sep := slices.Index(fields, "-")
		if len(fields) < 5 || sep < 0 || sep+1 >= len(fields) {
			continue
		}
		out = append(out, mountEntry{point: unescapeMount(fields[4]), fstype: fields[sep+1]})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mountinfo: %w", err)
	}
	return out, nil
}

// MountsUnder lists the mount points at or below dir in a mountinfo file
// (/proc/self/mountinfo for this process's mount namespace), deepest
// first.
func MountsUnder(mountinfo, dir string) ([]string, error) {
	mounts, err := readMountinfo(mountinfo)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, m := range mounts {
		if within(m.point, dir) {
			out = append(out, m.point)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return len(b) - len(a) })
	return out, nil
}

// within tells whether path is dir or below it.
func within(path, dir string) bool {
	return path == dir || strings.HasPrefix(path, strings.TrimSuffix(dir, "/")+"/")
}

// UnmountUnder detaches every mount at or below dir in this process's
// mount namespace; it returns those it found (a runtime confined to a
// mount namespace of its own should have left none here).
func UnmountUnder(dir string) ([]string, error) {
	mounts, err := MountsUnder("/proc/self/mountinfo", dir)
	if err != nil {
		return nil, err
	}
	var errs []error
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return mounts, errors.Join(errs...)
}

// unescapeMount decodes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Tail returns the last n lines of b.
func Tail(b []byte, n int) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, nil)
}
