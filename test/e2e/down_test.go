package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/lab"
)

// TestDownAfterLabKilled kills `podnet lab up` with SIGKILL while it builds
// (agents already running, pods being added) and checks that `podnet lab
// down` still removes everything.
func TestDownAfterLabKilled(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds network namespaces")
	}
	name, base := labName(), t.TempDir()
	up := exec.Command(cli, "lab", "up", "--name", name, "--state-dir", base, "--nodes", "3", "--pods-per-node", "5",
		"--agent-bin", bins.Agent, "--cni-bin", bins.CNI)
	out, err := up.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	up.Stderr = up.Stdout
	if err := up.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lab.Down(base, name) })
	sc := bufio.NewScanner(out)
	killed := false
	for sc.Scan() {
		t.Log(sc.Text())
		if strings.HasPrefix(sc.Text(), "pod ") {
			if err := up.Process.Kill(); err != nil {
				t.Fatal(err)
			}
			killed = true
			break
		}
	}
	_ = up.Wait()
	if !killed {
		t.Fatal("podnet lab up ended before it added a pod")
	}
	// The agents outlive the killed builder; down must find them.
	if running := agentsOf(base + "/" + name); running == 0 {
		t.Fatal("no agent of the killed lab runs: the test proves nothing")
	}
	down := exec.Command(cli, "lab", "down", "--name", name, "--state-dir", base)
	if o, err := down.CombinedOutput(); err != nil {
		t.Fatalf("podnet lab down: %v\n%s", err, o)
	}
	assertGone(t, base, name)
}

// agentsOf counts running processes whose command line mentions dir.
func agentsOf(dir string) int {
	n := 0
	procs, _ := os.ReadDir("/proc")
	for _, p := range procs {
		b, err := os.ReadFile("/proc/" + p.Name() + "/cmdline")
		if err == nil && strings.Contains(string(b), dir) && strings.Contains(string(b), "podnet-agent") {
			n++
		}
	}
	return n
}
