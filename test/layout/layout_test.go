// Package layout tests rules of the repository's layout that the compiler
// does not enforce.
package layout

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/testing/sandbox"
)

const (
	module  = "github.com/podnet/podnet"
	harness = module + "/internal/testing"
)

// TestProductDoesNotDependOnHarness fails when a product package — a
// command under cmd/, or a package under internal/ outside
// internal/testing — depends on the test harness, directly or through
// another package. Test files are not the product: they may use it.
func TestProductDoesNotDependOnHarness(t *testing.T) {
	root, err := sandbox.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sandbox.GoTool(), "list", "-f", `{{.ImportPath}} {{join .Deps " "}}`, "./cmd/...", "./internal/...")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	product := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		pkg, deps, _ := strings.Cut(line, " ")
		if inHarness(pkg) {
			continue
		}
		product++
		for _, d := range strings.Fields(deps) {
			if inHarness(d) {
				t.Errorf("product package %s depends on the test harness: %s", pkg, d)
			}
		}
	}
	if product == 0 {
		t.Fatal("go list found no product package")
	}
}

func inHarness(pkg string) bool {
	return pkg == harness || strings.HasPrefix(pkg, harness+"/")
}

// TestPluginIsLight fails when the podnet-cni binary — one process per
// pod ADD, on the pod's start path — depends on a Kubernetes package
// (client-go, apimachinery, the network-policy API): what it shares with
// the agent (such as the policy gate) must stay on the standard library
// and the CNI, netlink and nftables libraries.
func TestPluginIsLight(t *testing.T) {
	root, err := sandbox.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sandbox.GoTool(), "list", "-deps", "./cmd/podnet-cni")
	cmd.Dir = root
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	deps := strings.Fields(string(out))
	if len(deps) == 0 {
		t.Fatal("go list found no dependency of podnet-cni")
	}
	for _, d := range deps {
		if strings.HasPrefix(d, "k8s.io/") || strings.HasPrefix(d, "sigs.k8s.io/") {
			t.Errorf("podnet-cni depends on %s", d)
		}
	}
}
