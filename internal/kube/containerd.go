package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// ToolPath is the PATH the node's daemons run with: containerd finds its
// shim and runc there, kubelet mount and iptables.
const ToolPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Snapshotters containerd unpacks images with: overlayfs where the kernel
// lets the node mount overlays on its directories, else native (copies).
const (
	SnapshotterOverlay = "overlayfs"
	SnapshotterNative  = "native"
)

// ContainerdTools are the absolute paths of containerd and the programs
// it runs or is driven with.
type ContainerdTools struct{ Containerd, Shim, Runc, Ctr string }

// FindContainerdTools finds containerd, its runc shim, runc and ctr in
// PATH or the sbin directories (Debian's runc is in /usr/sbin).
func FindContainerdTools() (ContainerdTools, error) {
	var errs []error
	find := func(name string) string {
		for _, dir := range []string{"", "/usr/sbin", "/usr/local/sbin", "/sbin"} {
			p := name
			if dir != "" {
				p = filepath.Join(dir, name)
			}
			if abs, err := exec.LookPath(p); err == nil {
				return abs
			}
		}
		errs = append(errs, fmt.Errorf("%s not found (apt-get install containerd runc; .ci/deps installs them)", name))
		return ""
	}
	t := ContainerdTools{Containerd: find("containerd"), Shim: find("containerd-shim-runc-v2"), Runc: find("runc"), Ctr: find("ctr")}
	return t, errors.Join(errs...)
}

// ContainerdConfig is a containerd 1.6 configuration for one node: its
// own root, state and socket, the CRI plugin with one CNI bin and conf
// dir (containerd 1.6 takes a single bin_dir, and with max_conf_num 1 the
// lexically first conflist), the sandbox image, runc, no AppArmor
// profile to load. Snapshotters that would probe the machine's file
// systems and the /opt plugin (it makes /opt/containerd) are disabled.
// Sandboxes keep containerd's OOM score (restrict_oom_score_adj) instead
// of -998: lowering it takes CAP_SYS_RESOURCE, which root may lack (it
// does in some VMs and containers).
type ContainerdConfig struct {
	Root, State, Socket string
	SandboxImage        string
	Snapshotter         string // SnapshotterOverlay or SnapshotterNative
	Runc                string // runc binary
	CNIBinDir           string
	CNIConfDir          string
	// MetricsAddress, when set, is where containerd serves Prometheus
	// metrics (/v1/metrics: the CRI plugin's sandbox, container and CNI
	// operation latencies, e.g. containerd_cri_network_plugin_operations_duration_seconds).
	MetricsAddress string
}

// TOML renders the configuration file.
func (c ContainerdConfig) TOML() (string, error) {
	if c.Root == "" || c.State == "" || c.Socket == "" || c.SandboxImage == "" || c.Runc == "" || c.CNIBinDir == "" || c.CNIConfDir == "" {
		return "", fmt.Errorf("containerd config: root, state, socket, sandbox image, runc and CNI dirs are required: %+v", c)
	}
	disabled := []string{
		"io.containerd.internal.v1.opt",
		"io.containerd.snapshotter.v1.aufs",
		"io.containerd.snapshotter.v1.btrfs",
		"io.containerd.snapshotter.v1.devmapper",
		"io.containerd.snapshotter.v1.zfs",
	}
	switch c.Snapshotter {
	case SnapshotterNative:
		disabled = append(disabled, "io.containerd.snapshotter.v1.overlayfs")
	case SnapshotterOverlay:
	default:
		return "", fmt.Errorf("containerd config: snapshotter %q: want %s or %s", c.Snapshotter, SnapshotterOverlay, SnapshotterNative)
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [%s]

[grpc]
  address = %q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = %q
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = %q
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = %q
    conf_dir = %q
    max_conf_num = 1
%s`, c.Root, c.State, quoteList(disabled), c.Socket, c.SandboxImage, c.Snapshotter, c.Runc, c.CNIBinDir, c.CNIConfDir, c.metrics()), nil
}

// metrics is the [metrics] table, when MetricsAddress is set.
func (c ContainerdConfig) metrics() string {
	if c.MetricsAddress == "" {
		return ""
	}
	return fmt.Sprintf("\n[metrics]\n  address = %q\n", c.MetricsAddress)
}

func quoteList(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// DialCRI opens a CRI client connection to a containerd socket.
func DialCRI(socket string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("CRI client of %s: %w", socket, err)
	}
	return conn, nil
}

// WaitCRI polls the containerd at socket until its CRI plugin answers a
// Version request, until ctx ends or alive returns an error (the daemon
// exited).
func WaitCRI(ctx context.Context, socket string, alive func() error) error {
	var last error
	for {
		if err := alive(); err != nil {
			return err
		}
		last = criVersion(ctx, socket)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("containerd at %s: %w (last: %w)", socket, ctx.Err(), last)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// criVersion asks the CRI plugin at socket for its version.
func criVersion(ctx context.Context, socket string) error {
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err != nil {
		return err
	}
	c.Close()
	conn, err := DialCRI(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	_, err = runtimeapi.NewRuntimeServiceClient(conn).Version(cctx, &runtimeapi.VersionRequest{})
	return err
}

// CtrImport imports image archives (docker or OCI) with ctr into the
// containerd at socket, in the CRI plugin's namespace (k8s.io), unpacked
// for snapshotter and this machine's platform; it returns the image
// references imported.
func CtrImport(ctx context.Context, ctr, socket, snapshotter string, archives ...string) ([]string, error) {
	var refs []string
	for _, a := range archives {
		cmd := exec.CommandContext(ctx, ctr, "--address", socket, "--namespace", "k8s.io", "images", "import",
			"--snapshotter", snapshotter, "--platform", "linux/"+runtime.GOARCH, a)
		cmd.Env = []string{"PATH=" + ToolPath}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("ctr images import %s: %w\n%s", a, err, Tail(out.Bytes(), 20))
		}
		// "unpacking <ref> (sha256:…)...done", one line per image.
		for _, line := range strings.Split(out.String(), "\n") {
			if ref, _, ok := strings.Cut(strings.TrimPrefix(line, "unpacking "), " ("); ok && strings.HasPrefix(line, "unpacking ") {
				refs = append(refs, ref)
			}
		}
	}
	return refs, nil
}

// WaitImages polls the CRI plugin at socket until it lists every image
// of refs (it learns of an import asynchronously; kubelet would try to
// pull an image it does not list).
func WaitImages(ctx context.Context, socket string, refs ...string) error {
	conn, err := DialCRI(socket)
	if err != nil {
		return err
	}
	defer conn.Close()
	images := runtimeapi.NewImageServiceClient(conn)
	for _, ref := range refs {
		for {
			st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
			if err == nil && st.Image != nil {
				break
			}
			if err == nil {
				err = errors.New("not listed")
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("image %s in the CRI plugin: %w (last: %w)", ref, ctx.Err(), err)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	return nil
}

// importImages imports archives and waits until the CRI plugin lists
// them.
func importImages(ctx context.Context, ctr, socket, snapshotter string, archives ...string) error {
	refs, err := CtrImport(ctx, ctr, socket, snapshotter, archives...)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return WaitImages(wctx, socket, refs...)
}
