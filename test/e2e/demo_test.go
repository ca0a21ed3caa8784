package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/podnet/podnet/internal/netns"
)

// TestDemo runs `podnet demo`, the single-node plugin demo, and checks it
// succeeds and removes the namespaces it names.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	out, err := exec.Command(cli, "demo", "--cni-bin", bins.CNI).CombinedOutput()
	if err != nil || !regexp.MustCompile(`all \d+ steps ok`).Match(out) {
		t.Fatalf("podnet demo: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`node netns (\S+), pod netns (\S+),`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("podnet demo does not name its namespaces:\n%s", out)
	}
	for _, name := range m[1:] {
		if _, err := os.Stat(filepath.Join(netns.RunDir, string(name))); !os.IsNotExist(err) {
			t.Errorf("namespace %s left by podnet demo (%v)", name, err)
		}
	}
}
