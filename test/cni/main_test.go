// Package cni tests podnet's CNI plugins from the runtime's side: the
// built podnet-cni binary, installed as hard links named after the plugin
// types, driven through libcni exactly as containerd or CRI-O drive it,
// in throwaway network namespaces, and compared with the reference plugins.
//
// The tests need root (network namespaces); without it they skip. Set
// PODNET_CNI_BIN to a built podnet-cni (make build does it) to avoid a
// rebuild; otherwise the binary is built once into a temporary directory.
package cni

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

func TestMain(m *testing.M) {
	code := m.Run()
	cleanupBins()
	sandbox.CleanupShared()
	os.Exit(code)
}

var (
	binsMu  sync.Mutex
	binsDir string
	binsMap = map[string]string{}
)

// requireRoot skips tests that create network namespaces.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces (run as root, e.g. make test under sudo)")
	}
}

// podnetCNI returns the podnet-cni binary, built once per test binary.
func podnetCNI(t testing.TB) string {
	t.Helper()
	p, err := sandbox.SharedPodnetCNI(context.Background())
	if err != nil {
		t.Fatalf("podnet-cni: %v", err)
	}
	return p
}

// binDir returns a CNI_PATH directory where each type resolves as mix
// says: "podnet" (a hard link of podnet-cni) or "ref" (the reference
// plugin in /usr/lib/cni). Types not in mix resolve to podnet. The same
// mix gives the same directory.
func binDir(t testing.TB, mix map[string]string) string {
	t.Helper()
	key := fmt.Sprint(mix)
	binsMu.Lock()
	defer binsMu.Unlock()
	if d, ok := binsMap[key]; ok {
		return d
	}
	if binsDir == "" {
		d, err := os.MkdirTemp("", "podnet-cni-bins-")
		if err != nil {
			t.Fatal(err)
		}
		binsDir = d
	}
	links, err := cnibin.Links(podnetCNI(t))
	if err != nil {
		t.Fatal(err)
	}
	for typ, who := range mix {
		switch who {
		case "ref":
			if err := sandbox.HaveReference(typ); err != nil {
				t.Fatal(err)
			}
			links[typ] = filepath.Join(sandbox.ReferenceDir, typ)
		case "podnet":
		default:
			t.Fatalf("binDir: %s resolves to %q, want podnet or ref", typ, who)
		}
	}
	d := filepath.Join(binsDir, fmt.Sprintf("bin%d", len(binsMap)))
	if err := cniruntime.LinkDir(d, links); err != nil {
		t.Fatal(err)
	}
	binsMap[key] = d
	return d
}

// EnvTestCNIPath, when set, replaces podnet's bin dir in every test that
// would use it: the suite then checks another implementation (such as the
// reference plugins in /usr/lib/cni) — a check of the tests themselves.
const EnvTestCNIPath = "PODNET_TEST_CNI_PATH"

// podnetBin is the CNI_PATH with every type resolving to podnet.
func podnetBin(t testing.TB) string {
	if p := os.Getenv(EnvTestCNIPath); p != "" {
		return p
	}
	return binDir(t, nil)
}

func cleanupBins() {
	if binsDir != "" {
		os.RemoveAll(binsDir)
	}
}

// requirePlugins fails clearly when a plugin type does not answer from
// the bin dir (for podnet: not registered in cmd/podnet-cni yet).
func requirePlugins(t testing.TB, dir string, types ...string) {
	t.Helper()
	for _, typ := range types {
		if err := sandbox.Supports(dir, typ); err != nil {
			t.Fatal(err)
		}
	}
}

// skipWithoutReference skips interop tests when the reference plugins are
// not installed.
func skipWithoutReference(t testing.TB, types ...string) {
	t.Helper()
	if err := sandbox.HaveReference(types...); err != nil {
		t.Skipf("interop with the reference plugins skipped: %v", err)
	}
}

// newSandbox creates a sandbox whose plugins come from cniPath, removed
// (with every namespace in it) when the test ends. Plugin stderr goes to
// the test log.
func newSandbox(t testing.TB, cniPath ...string) *sandbox.Sandbox {
	t.Helper()
	requireRoot(t)
	sb, err := sandbox.New(sandbox.Options{CNIPath: cniPath, Stderr: testWriter{t}})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() {
		if err := sb.Close(); err != nil {
			t.Errorf("sandbox cleanup: %v", err)
		}
	})
	return sb
}

// newPod creates a pod namespace in the sandbox.
func newPod(t testing.TB, sb *sandbox.Sandbox) *sandbox.Pod {
	t.Helper()
	p, err := sb.NewPod()
	if err != nil {
		t.Fatalf("pod: %v", err)
	}
	return p
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Logf("plugin stderr: %s", b)
	return len(b), nil
}
