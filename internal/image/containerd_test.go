package image

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestContainerdImport imports an archive Write made into a throwaway
// containerd 1.6 with `ctr -n k8s.io images import`, as a node does, and
// checks containerd lists every image under its ref and unpacked it.
func TestContainerdImport(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (containerd)")
	}
	var bins []string
	for _, b := range []string{"containerd", "ctr"} {
		p, err := exec.LookPath(b)
		if err != nil {
			t.Skipf("%s not installed: %v", b, err)
		}
		bins = append(bins, p)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	archive := filepath.Join(dir, "images.tar")
	if err := Write(archive, testSpecs()...); err != nil {
		t.Fatal(err)
	}
	sock := startContainerd(t, ctx, bins[0], bins[1], dir)
	ctr := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, bins[1], append([]string{"--address", sock, "-n", "k8s.io"}, args...)...).CombinedOutput()
		if err != nil {
			t.Fatalf("ctr %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	ctr("images", "import", "--snapshotter", "native", archive)
	refs := strings.Fields(ctr("images", "ls", "-q"))
	slices.Sort(refs)
	if want := []string{"docker.io/library/pause:3.10", "ghcr.io/podnet/podnet:test"}; !slices.Equal(refs, want) {
		t.Fatalf("containerd lists %q, want %q", refs, want)
	}
	// One snapshot per image: each layer was unpacked.
	if snaps := strings.Split(strings.TrimSpace(ctr("snapshots", "--snapshotter", "native", "ls")), "\n"); len(snaps) != 3 {
		t.Errorf("snapshots:\n%s\nwant a header and 2 snapshots", strings.Join(snaps, "\n"))
	}
}

// startContainerd runs containerd with its root, state and socket under
// dir, only the native snapshotter and no CRI plugin, in network and mount
// namespaces of its own (a tmpfs over /run), so nothing of it reaches the
// machine; it returns the socket once containerd answers ctr, and stops
// containerd when the test ends.
func startContainerd(t *testing.T, ctx context.Context, containerd, ctr, dir string) string {
	t.Helper()
	sock := filepath.Join(dir, "containerd.sock")
	config := filepath.Join(dir, "containerd.toml")
	if err := os.WriteFile(config, []byte(fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs",
  "io.containerd.snapshotter.v1.zfs",
]
[grpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock)), 0o644); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "containerd.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("/bin/sh", "-c", `mount -t tmpfs -o mode=0755,size=16m podnet-image-test /run && exec "$@"`,
		"sh", containerd, "--config", config)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start containerd: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		logf.Close()
		if t.Failed() {
			if b, err := os.ReadFile(logPath); err == nil {
				t.Logf("containerd log:\n%s", b)
			}
		}
	})
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if out, err := exec.CommandContext(ctx, ctr, "--address", sock, "version").CombinedOutput(); err == nil {
			return sock
		} else if ctx.Err() != nil {
			t.Fatalf("containerd did not answer: %v\n%s", err, out)
		}
		select {
		case <-exited:
			t.Fatalf("containerd exited: %v", cmd.ProcessState)
		case <-ctx.Done():
		case <-tick.C:
		}
	}
}
