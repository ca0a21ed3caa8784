package cri

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// The node's network: its pod subnet, and its address on a LAN where a
// peer namespace plays another machine (the client of host ports).
const (
	podSubnet = "10.97.0.0/24"
	nodeAddr  = "192.168.97.1"
	peerAddr  = "192.168.97.2"
)

// node is one Kubernetes node: a network namespace (a sandbox's host,
// with a peer on its LAN) running a private containerd whose CRI plugin
// attaches pods with podnet's plugins and the cluster conflist, and a
// CRI client of it.
type node struct {
	sb      *sandbox.Sandbox
	peer    *sandbox.Pod
	ipamDir string
	sock    string
	// cgroup is the pods' cgroup parent (kubelet's kubepods).
	cgroup string

	cmd    *exec.Cmd
	exited chan struct{}
	conn   *grpc.ClientConn
	rt     runtimeapi.RuntimeServiceClient
	images runtimeapi.ImageServiceClient
}

// startNode creates a node whose conflist is the agent's with the given
// cniVersion ("" for the default: 1.0.0, offering 1.1.0), starts its
// containerd, imports the sandbox image and waits until the CRI plugin
// reports the runtime and the network ready, as kubelet does. Everything
// is removed when the test ends, whatever its outcome.
func startNode(t *testing.T, cniVersion string) *node {
	t.Helper()
	requireRoot(t)
	tl := requireTools(t)
	ctx := ctxFor(t)
	image, err := pauseArchive(ctx)
	if err != nil {
		t.Fatalf("sandbox image: %v", err)
	}
	bin, err := sandbox.SharedPodnetCNI(ctx)
	if err != nil {
		t.Fatalf("podnet-cni: %v", err)
	}
	links, err := cnibin.Links(bin)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := sandbox.New(sandbox.Options{Plugins: links, Prefix: "pncri"})
	if err != nil {
		t.Fatalf("node namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("node cleanup: %v", err)
		}
	})
	n := &node{
		sb:      sb,
		ipamDir: sb.DataDir("ipam"),
		sock:    filepath.Join(sb.Dir, "containerd.sock"),
		cgroup:  "/podnet-cri-" + cniruntime.RandomID()[:8],
	}
	if n.peer, err = sb.NewPeer([]string{nodeAddr + "/24"}, []string{peerAddr + "/24"}); err != nil {
		t.Fatalf("peer: %v", err)
	}
	conflist, err := cniconf.Cluster{Subnets: []string{podSubnet}, MTU: 1500, IPAMDir: n.ipamDir,
		CNIVersion: cniVersion}.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	confDir := filepath.Join(sb.Dir, "net.d")
	if err := os.MkdirAll(confDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(confDir, cniconf.FileName), conflist, 0o644); err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(sb.Dir, "containerd.toml")
	if err := os.WriteFile(config, []byte(containerdConfig(sb.Dir, n.sock, tl.runc, sb.Path[0], confDir)), 0o644); err != nil {
		t.Fatal(err)
	}
	n.start(t, tl.containerd, config)
	n.connect(t, ctx)
	n.importImage(t, ctx, tl.ctr, image)
	n.waitReady(t, ctx)
	return n
}

// containerdConfig is a containerd 1.6 configuration whose root, state,
// sockets and CNI directories are under dir: the CRI plugin with the
// native snapshotter (no overlay mounts), no AppArmor profile to load,
// the test's sandbox image, runc from runcPath; snapshotters that would
// probe the machine's file systems and the /opt plugin are disabled.
// Sandboxes keep containerd's OOM score (restrict_oom_score_adj) instead
// of -998: lowering it takes CAP_SYS_RESOURCE, which root may lack (it
// does in some VMs and containers), and it has no bearing on networking.
func containerdConfig(dir, sock, runcPath, binDir, confDir string) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = %[3]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[4]q
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %[5]q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %[6]q
    conf_dir = %[7]q
    max_conf_num = 1
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, pauseImage, runcPath, binDir, confDir)
}

// start runs containerd as a child of a thread inside the node namespace
// (so it, its shims and the plugins it runs are there) and in a mount
// namespace of its own with a tmpfs on /run: containerd 1.6 puts its
// shims' sockets under /run/containerd/s whatever its state directory,
// and the CRI plugin binds pod network namespaces under /var/run/netns;
// all of that, and every mount containerd and its shims make, stays out
// of the machine's view and goes with the namespace.
func (n *node) start(t *testing.T, containerd, config string) {
	t.Helper()
	logPath := filepath.Join(n.sb.Dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `mount -t tmpfs -o mode=0755,size=16m podnet-cri /run && exec "$@"`,
		"sh", containerd, "--config", config)
	cmd.Env = []string{"PATH=" + toolPath}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	t.Cleanup(func() {
		n.stop(t)
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log:\n%s", tail(b, 60))
			}
		}
	})
	if err := n.sb.Host.Do(cmd.Start); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	n.cmd, n.exited = cmd, make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
}

// connect waits for containerd's socket and opens a CRI client on it.
func (n *node) connect(t *testing.T, ctx context.Context) {
	t.Helper()
	n.poll(t, ctx, 20*time.Second, "containerd's socket", func() error {
		c, err := net.Dial("unix", n.sock)
		if err == nil {
			c.Close()
		}
		return err
	})
	conn, err := grpc.NewClient("unix://"+n.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("CRI client: %v", err)
	}
	n.conn = conn
	n.rt = runtimeapi.NewRuntimeServiceClient(conn)
	n.images = runtimeapi.NewImageServiceClient(conn)
}

// importImage imports the sandbox image archive with ctr into the CRI
// plugin's namespace, unpacked for the native snapshotter, and waits
// until the CRI image service lists it (kubelet would pull it otherwise).
func (n *node) importImage(t *testing.T, ctx context.Context, ctr, archive string) {
	t.Helper()
	cmd := exec.CommandContext(ctx, ctr, "--address", n.sock, "--namespace", "k8s.io", "images", "import",
		"--snapshotter", "native", "--platform", "linux/"+runtime.GOARCH, archive)
	cmd.Env = []string{"PATH=" + toolPath}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := n.sb.Host.Do(cmd.Run); err != nil {
		t.Fatalf("ctr images import: %v\n%s", err, out.Bytes())
	}
	n.poll(t, ctx, 10*time.Second, "the CRI plugin to list "+pauseImage, func() error {
		st, err := n.images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: pauseImage}})
		if err == nil && st.Image == nil {
			err = errors.New("not listed")
		}
		return err
	})
}

// waitReady waits until the CRI status reports RuntimeReady and
// NetworkReady (the CNI configuration loaded), as kubelet waits before it
// creates pods.
func (n *node) waitReady(t *testing.T, ctx context.Context) {
	t.Helper()
	n.poll(t, ctx, 10*time.Second, "CRI RuntimeReady and NetworkReady", func() error {
		st, err := n.rt.Status(ctx, &runtimeapi.StatusRequest{})
		if err != nil {
			return err
		}
		var notReady []string
		for _, c := range st.GetStatus().GetConditions() {
			if !c.Status {
				notReady = append(notReady, fmt.Sprintf("%s: %s %s", c.Type, c.Reason, c.Message))
			}
		}
		if len(st.GetStatus().GetConditions()) < 2 || len(notReady) > 0 {
			return fmt.Errorf("conditions %v", notReady)
		}
		return nil
	})
}

// poll calls f until it succeeds, failing the test after timeout or when
// containerd exits.
func (n *node) poll(t *testing.T, ctx context.Context, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		select {
		case <-n.exited:
			t.Fatalf("containerd exited while waiting for %s (%v)", what, n.cmd.ProcessState)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// open opens a file as containerd sees it: in its mount namespace, with
// symlinks (such as /var/run) resolved in its root.
func (n *node) open(path string) (*os.File, error) {
	root, err := os.OpenFile(fmt.Sprintf("/proc/%d/root", n.cmd.Process.Pid), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		return nil, fmt.Errorf("containerd's root: %w", err)
	}
	defer root.Close()
	fd, err := unix.Openat2(int(root.Fd()), path, &unix.OpenHow{
		Flags: unix.O_RDONLY | unix.O_CLOEXEC, Resolve: unix.RESOLVE_IN_ROOT,
	})
	if err != nil {
		return nil, &fs.PathError{Op: "open in containerd's root", Path: path, Err: err}
	}
	return os.NewFile(uintptr(fd), path), nil
}

// stop removes what the node's containerd ran and made: pods a failed
// test left (stopped and removed through CRI, as kubelet would, so that
// the CNI DEL runs), containerd (SIGTERM to its process group, then
// SIGKILL), its shims (they exit when their pod is removed; any left is
// killed and reported), the pods' processes and cgroups, and any mount
// under the node's directory (there should be none outside containerd's
// mount namespace).
func (n *node) stop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n.rt != nil {
		if l, err := n.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, p := range l.Items {
				t.Logf("removing pod %s left by the test", p.Id)
				if _, err := n.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("StopPodSandbox %s: %v", p.Id, err)
				}
				if _, err := n.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.Id}); err != nil {
					t.Errorf("RemovePodSandbox %s: %v", p.Id, err)
				}
			}
		}
	}
	if n.conn != nil {
		n.conn.Close()
	}
	if n.cmd != nil {
		pgid := n.cmd.Process.Pid
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		select {
		case <-n.exited:
		case <-time.After(10 * time.Second):
			t.Errorf("containerd did not stop on SIGTERM: killed")
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-n.exited
		}
	}
	if killed := reap(5*time.Second, func() []int { return procsWithArg(n.sock) }); len(killed) > 0 {
		t.Errorf("containerd shims left running, killed: %v", killed)
	}
	if err := removeCgroups(n.cgroup); err != nil {
		t.Errorf("pod cgroups: %v", err)
	}
	if err := unmountUnder(n.sb.Dir); err != nil {
		t.Errorf("mounts: %v", err)
	}
}

// reapOrphans reaps the shims and pod processes re-parented to this
// process (a child subreaper, see TestMain) once they exit, waiting up to
// timeout for those still running; it returns the ones that did not
// exit. It waits for those processes only, never for any child, so that
// an exec.Cmd keeps its own.
func reapOrphans(timeout time.Duration) []int {
	deadline := time.Now().Add(timeout)
	for {
		var running []int
		for _, c := range orphans() {
			if c.zombie {
				var ws unix.WaitStatus
				_, _ = unix.Wait4(c.pid, &ws, unix.WNOHANG, nil)
			} else {
				running = append(running, c.pid)
			}
		}
		if len(running) == 0 || time.Now().After(deadline) {
			return running
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// orphan is a child of this process that it did not start.
type orphan struct {
	pid    int
	zombie bool
}

// orphans lists this process's children named containerd-shim… or
// pause: processes it never starts itself, so re-parented ones.
func orphans() []orphan {
	var out []orphan
	for pid, b := range procFiles("stat") {
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		s := string(b)
		open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || end < open {
			continue
		}
		comm, rest := s[open+1:end], strings.Fields(s[end+1:])
		if len(rest) < 2 || rest[1] != strconv.Itoa(os.Getpid()) ||
			!strings.HasPrefix(comm, "containerd-shim") && comm != "pause" {
			continue
		}
		out = append(out, orphan{pid: pid, zombie: rest[0] == "Z"})
	}
	return out
}

// reap waits up to grace for list to come back empty, then SIGKILLs what
// it lists and waits for that to go; it returns the processes killed.
func reap(grace time.Duration, list func() []int) []int {
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) && len(list()) > 0 {
		time.Sleep(20 * time.Millisecond)
	}
	killed := list()
	for _, pid := range killed {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	for deadline = time.Now().Add(10 * time.Second); time.Now().Before(deadline) && len(list()) > 0; {
		time.Sleep(20 * time.Millisecond)
	}
	return killed
}

// procsWithArg lists the processes one of whose arguments is arg (the
// shims of a containerd are started with -address <its socket>).
func procsWithArg(arg string) []int {
	var pids []int
	for pid, b := range procFiles("cmdline") {
		if slices.Contains(strings.Split(string(b), "\x00"), arg) {
			pids = append(pids, pid)
		}
	}
	return pids
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

// removeCgroups kills the processes left in the cgroup parent (in every
// hierarchy: cgroup v1 controllers or v2) and removes it with its
// children; processes that had to be killed are an error.
func removeCgroups(parent string) error {
	roots, err := filepath.Glob("/sys/fs/cgroup/*" + parent)
	if err != nil {
		return err
	}
	if _, err := os.Stat("/sys/fs/cgroup" + parent); err == nil {
		roots = append(roots, "/sys/fs/cgroup"+parent)
	}
	var dirs []string
	for _, r := range roots {
		_ = filepath.WalkDir(r, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
	}
	procs := func() []int {
		var pids []int
		for _, d := range dirs {
			b, _ := os.ReadFile(filepath.Join(d, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
		}
		return pids
	}
	var errs []error
	if killed := reap(0, procs); len(killed) > 0 {
		errs = append(errs, fmt.Errorf("pod processes left running in %s, killed: %v", parent, killed))
	}
	// Children first.
	for i := len(dirs) - 1; i >= 0; i-- {
		if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// unmountUnder detaches every mount at or below dir in this mount
// namespace; any found is an error (containerd's stay in its own).
func unmountUnder(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read mountinfo: %w", err)
	}
	if len(mounts) == 0 {
		return nil
	}
	// Deepest first.
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	errs := []error{fmt.Errorf("mounts left under %s: %v", dir, mounts)}
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
		}
	}
	return errors.Join(errs...)
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

// tail returns the last n lines of b.
func tail(b []byte, n int) []byte {
	lines := bytes.SplitAfter(b, []byte("\n"))
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return bytes.Join(lines, nil)
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
