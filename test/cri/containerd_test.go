package cri

import (
	"context"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
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
	"github.com/podnet/podnet/internal/kube"
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
	images, err := podImages(ctx)
	if err != nil {
		t.Fatalf("pod images: %v", err)
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
	// The native snapshotter: no overlay mounts.
	toml, err := kube.ContainerdConfig{
		Root: filepath.Join(sb.Dir, "root"), State: filepath.Join(sb.Dir, "state"), Socket: n.sock,
		SandboxImage: kube.PauseImage, Snapshotter: kube.SnapshotterNative, Runc: tl.Runc,
		CNIBinDir: sb.Path[0], CNIConfDir: confDir,
	}.TOML()
	if err != nil {
		t.Fatal(err)
	}
	config := filepath.Join(sb.Dir, "containerd.toml")
	if err := os.WriteFile(config, []byte(toml), 0o644); err != nil {
		t.Fatal(err)
	}
	n.start(t, tl.Containerd, config)
	n.connect(t, ctx)
	n.importImages(t, ctx, tl.Ctr, images)
	n.waitReady(t, ctx)
	return n
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
	cmd.Env = []string{"PATH=" + kube.ToolPath}
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS}
	t.Cleanup(func() {
		n.stop(t)
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log:\n%s", kube.Tail(b, 60))
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

// importImages imports the pod images with ctr into the CRI plugin's
// namespace, unpacked for the native snapshotter, and waits until the CRI
// image service lists them (kubelet would pull them otherwise).
func (n *node) importImages(t *testing.T, ctx context.Context, ctr string, archives []string) {
	t.Helper()
	refs, err := kube.CtrImport(ctx, ctr, n.sock, kube.SnapshotterNative, archives...)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := kube.WaitImages(wctx, n.sock, refs...); err != nil {
		t.Fatal(err)
	}
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
	if killed := kube.KillLeft(5*time.Second, func() []int { return kube.ProcsWithArg(n.sock) }); len(killed) > 0 {
		t.Errorf("containerd shims left running, killed: %v", killed)
	}
	if killed, err := kube.RemoveCgroups(n.cgroup); len(killed) > 0 || err != nil {
		t.Errorf("pod cgroups: processes left running, killed: %v; %v", killed, err)
	}
	if found, err := kube.UnmountUnder(n.sb.Dir); len(found) > 0 || err != nil {
		t.Errorf("mounts left under %s: %v; %v", n.sb.Dir, found, err)
	}
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}
