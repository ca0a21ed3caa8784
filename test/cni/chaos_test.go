package cni

import (
	"flag"
	"path/filepath"
	"testing"

	"github.com/podnet/podnet/internal/testing/chaos"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

var chaosOps = flag.Int("chaos-ops", 150, "operations per chain of TestCrashChaos")

// TestCrashChaos is VISION's crash chaos, smaller: on each chain that
// matters (the full chain and podnet's cluster conflist), ADD and DEL
// through cnitool, six at a time, 30 % of them killed with SIGKILL (cnitool
// and its plugins) at a random point; then GC with the attachments the
// journal still holds valid. No address may be given twice, nothing may
// belong to no valid pod (addresses, links, rules, state files), every
// valid pod must keep its interface, address, veth, ifb and rules, and
// deleting them all must leave the node as it was. bench/chaos runs the
// same with 1,000 operations.
func TestCrashChaos(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "portmap", "bandwidth", "tuning", "podnet")
	cnitool := filepath.Join(t.TempDir(), "cnitool")
	if err := sandbox.BuildCNITool(ctxFor(t), cnitool); err != nil {
		t.Fatal(err)
	}
	runner, err := sandbox.NewRunner()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(runner.Close)
	for _, chain := range []chaos.Chain{chaos.FullChain("1.1.0"), chaos.ClusterChain("", "")} {
		t.Run(chain.Label, func(t *testing.T) {
			// Each chain has its own deadline: one chain's run under a
			// loaded machine must not eat the next one's time.
			rep, err := chaos.Run(ctxFor(t), chaos.Config{Chain: chain, BinDir: bin, CNITool: cnitool, Runner: runner, Ops: *chaosOps})
			if err != nil {
				t.Fatalf("chaos run: %v", err)
			}
			t.Log(rep.Summary())
			if rep.Killed == 0 {
				t.Error("no kill landed: the run proves nothing")
			}
			if !rep.Clean() {
				t.Errorf("the node did not recover from the kills:\n%s", rep.Summary())
			}
		})
	}
}
