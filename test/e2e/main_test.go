// Package e2e tests podnet end to end on labs: virtual clusters of network
// namespaces on this machine, each node running the real podnet-agent and
// pods attached through the real CNI path (see internal/lab). The tests
// need root; without it they skip.
//
// Set PODNET_BIN_DIR to a directory holding podnet-agent and podnet-cni
// (make build writes bin/) to skip building them.
package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

var (
	bins lab.Binaries
	// cli is the podnet command.
	cli string
)

func TestMain(m *testing.M) {
	code := func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips
		}
		dir := os.Getenv("PODNET_BIN_DIR")
		if dir == "" {
			tmp, err := os.MkdirTemp("", "podnet-e2e-bin-")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer os.RemoveAll(tmp)
			for _, pkg := range []string{"podnet-agent", "podnet-cni", "podnet"} {
				if err := sandbox.Build(context.Background(), filepath.Join(tmp, pkg), "./cmd/"+pkg); err != nil {
					fmt.Fprintln(os.Stderr, err)
					return 1
				}
			}
			dir = tmp
		}
		abs, err := filepath.Abs(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		bins = lab.Binaries{Agent: filepath.Join(abs, "podnet-agent"), CNI: filepath.Join(abs, "podnet-cni")}
		cli = filepath.Join(abs, "podnet")
		return m.Run()
	}()
	os.Exit(code)
}

// labName is a fresh random lab name.
func labName() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "t" + hex.EncodeToString(b[:])
}

// newLab builds a lab with a random name under a temporary state dir and
// removes it (and checks that nothing is left) when the test ends.
func newLab(t *testing.T, spec lab.Spec) *lab.Lab {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces")
	}
	name := labName()
	base := t.TempDir()
	l, err := lab.New(base, name, spec, bins, testWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes {
				t.Logf("agent log of %s:\n%s", n.Name, tailFile(filepath.Join(n.Dir, "agent.log"), 30))
			}
		}
		if err := lab.Down(base, name); err != nil {
			t.Errorf("lab down: %v", err)
		}
		assertGone(t, base, name)
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := l.Up(ctx); err != nil {
		t.Fatalf("lab up: %v", err)
	}
	return l
}

// assertGone checks that nothing of the lab is left: no namespace, no
// agent process, no state.
func assertGone(t *testing.T, base, name string) {
	t.Helper()
	entries, _ := os.ReadDir("/var/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "pl-"+name+"-") {
			t.Errorf("namespace %s left after lab down", e.Name())
		}
	}
	if _, err := os.Stat(filepath.Join(base, name)); !os.IsNotExist(err) {
		t.Errorf("state dir of lab %s left after lab down (%v)", name, err)
	}
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		cmdline, err := os.ReadFile(filepath.Join("/proc", p.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), filepath.Join(base, name)) {
			t.Errorf("process %s of lab %s left after lab down: %q", p.Name(), name, strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// testWriter sends the lab's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
