// Package cri runs podnet's cluster network under a real container
// runtime: a private containerd (with its CRI plugin and runc) inside a
// throwaway node network namespace, running pod sandboxes on the conflist
// podnet-agent writes, driven through the CRI gRPC API as kubelet drives
// it.
//
// The tests need root (network namespaces, mounts, cgroups); without it
// they skip. Without containerd or runc they fail: .ci/deps installs them.
// Set PODNET_CNI_BIN to a built podnet-cni (make build does it) to avoid
// a rebuild.
package cri

import (
	"fmt"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

func TestMain(m *testing.M) {
	// containerd's shims daemonize, and a pod's processes outlive a shim
	// that is killed: as a child subreaper, this process becomes their
	// parent, so it reaps them when the tests end (each test has already
	// made sure that its own are dead) rather than leave zombies to the
	// machine's init.
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "PR_SET_CHILD_SUBREAPER: %v\n", err)
		os.Exit(1)
	}
	code := m.Run()
	if left := kube.ReapOrphans(5*time.Second, kube.RuntimeOrphan); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "shims or pod processes still running after the tests: %v\n", left)
		code = 1
	}
	cleanupImages()
	sandbox.CleanupShared()
	os.Exit(code)
}

// requireRoot skips tests that create namespaces and run containerd.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs containerd in network namespaces it creates (run as root, e.g. make test under sudo)")
	}
}

// requireTools finds containerd, its runc shim, runc and ctr, and fails
// (not skips: a runtime test that silently skips proves nothing) when one
// is missing.
func requireTools(t testing.TB) kube.ContainerdTools {
	t.Helper()
	tl, err := kube.FindContainerdTools()
	if err != nil {
		t.Fatal(err)
	}
	return tl
}
