// Package chaos kills a CNI runtime and its plugins with SIGKILL in the
// middle of ADD and DEL, as a node's crashes do, then garbage-collects as
// a recovering runtime does and audits what the node is left with:
// duplicate addresses among the pods that are still valid, and the
// addresses, host links, nftables rules and state files that belong to
// no valid pod.
//
// A run works on one network (a chain of plugins) in a throwaway node
// namespace of internal/testing/sandbox: it creates pod namespaces and runs N
// operations, a few at a time — ADD of a new pod or DEL of a live one —
// each through a process of the official cnitool (libcni) started in a
// process group of its own; a share of them get SIGKILL sent to the whole
// group (cnitool and every plugin it runs) after a random delay within
// the operation's typical duration. It keeps a journal as a runtime does:
// a pod is valid only if its last completed operation is a successful
// ADD; a killed or failed ADD, and a DEL that began, make it invalid.
// Half of the pods a kill (or a failure) made invalid are DELed again
// later, as a runtime that tears a failed sandbox down does; the runtime
// loses track of the other half. Then libcni's GC with the valid
// attachments (what a runtime that comes back calls), the audit, and a
// teardown of every valid pod compared with the node as it was before the
// run.
//
// It is shared by the crash-chaos test (test/cni) and the benchmark
// (bench/chaos), and needs root.
package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// Chain is a network the chaos runs: a conflist whose pods get the
// portMappings and bandwidth capabilities (sandbox.ChainCaps), so every
// pod has a host port, rules and an ifb.
type Chain struct {
	// Label names the chain in reports.
	Label string
	// CNIVersion is the conflist's version (GC reaches the plugins from
	// 1.1.0 on; before, libcni's GC only DELs its cached attachments).
	CNIVersion string
	// conflist returns the conflist named name, its state under dataDir.
	conflist func(name, dataDir string) ([]byte, error)
}

// FullChain is bridge+host-local, portmap, bandwidth and tuning (with a
// sysctl) at the given cniVersion: sandbox.FullChain.
func FullChain(version string) Chain {
	return Chain{Label: "full chain", CNIVersion: version, conflist: func(name, dataDir string) ([]byte, error) {
		return sandbox.FullChain(name, version, "cni0", "10.89.0.0/16", dataDir).JSON(), nil
	}}
}

// ClusterChain is podnet's cluster conflist as the node agent writes it
// (internal/cniconf: the interface plugin typ over a node subnet with
// host-local; podnet's own plugin alone, honouring the portMappings and
// bandwidth capabilities, another type chained with portmap and
// bandwidth). typ "" is podnet's own plugin and version "" the conflist's
// cniVersions (runtimes pick 1.1.0); the reference counterpart is typ
// "ptp" at version "1.0.0".
func ClusterChain(typ, version string) Chain {
	v := version
	if v == "" {
		v = cniconf.Version
	}
	var chain []string
	if typ != "" && typ != "podnet" {
		chain = []string{"portmap", "bandwidth"}
	}
	return Chain{Label: "cluster conflist", CNIVersion: v, conflist: func(name, dataDir string) ([]byte, error) {
		c := cniconf.Cluster{Subnets: []string{"10.245.0.0/16"}, MTU: 1500, IPAMDir: filepath.Join(dataDir, "ipam"),
			Chain: chain, Type: typ, CNIVersion: version, Name: name}
		b, err := c.Conflist()
		if err != nil {
			return nil, fmt.Errorf("cluster conflist: %w", err)
		}
		return b, nil
	}}
}

// Config is one chaos run.
type Config struct {
	// Chain is the network.
	Chain Chain
	// BinDir is the CNI_PATH the plugins are found in.
	BinDir string
	// CNITool is the cnitool binary (sandbox.BuildCNITool).
	CNITool string
	// Runner runs cnitool inside the node namespace; nil starts one for
	// the run.
	Runner *sandbox.Runner
	// Ops is the number of ADD and DEL operations.
	Ops int
	// InFlight is how many operations run at once (default 6).
	InFlight int
	// KillShare is the share of operations sent SIGKILL (default 0.3;
	// negative: none).
	KillShare float64
	// Pods is the number of live pods the mix of ADD and DEL hovers
	// around (default 32).
	Pods int
	// Seed seeds the choices (0: random); the report gives it.
	Seed uint64
	// Progress receives a line now and then (nil: none).
	Progress io.Writer
}

func (c *Config) defaults() error {
	if c.Ops <= 0 {
		return errors.New("chaos: Ops must be positive")
	}
	if c.BinDir == "" || c.CNITool == "" {
		return errors.New("chaos: BinDir and CNITool are required")
	}
	if c.InFlight <= 0 {
		c.InFlight = 6
	}
	if c.KillShare == 0 {
		c.KillShare = 0.3
	}
	if c.Pods <= 0 {
		c.Pods = 32
	}
	if c.Seed == 0 {
		c.Seed = mrand.Uint64()
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	return nil
}

// Run runs the chaos on a fresh node and returns what the audit found.
// The error is for a run that could not be carried out (no namespace, no
// binary); what the plugins get wrong is in the Report. Everything the run
// creates is removed before it returns.
func Run(ctx context.Context, cfg Config) (rep *Report, err error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	start := time.Now()
	sb, err := sandbox.New(sandbox.Options{Prefix: "pnchaos"})
	if err != nil {
		return nil, fmt.Errorf("chaos node: %w", err)
	}
	defer func() {
		if cerr := sb.Close(); cerr != nil {
			err = errors.Join(err, fmt.Errorf("remove chaos node: %w", cerr))
		}
	}()
	if cfg.Runner == nil {
		if cfg.Runner, err = sandbox.NewRunner(); err != nil {
			return nil, fmt.Errorf("cnitool runner: %w", err)
		}
		defer cfg.Runner.Close()
	}
	var suffix [3]byte
	if _, err := rand.Read(suffix[:]); err != nil {
		return nil, err
	}
	d := &driver{
		cfg:     cfg,
		sb:      sb,
		name:    "chaos-" + hex.EncodeToString(suffix[:]),
		netDir:  filepath.Join(sb.Dir, "net.d"),
		dataDir: sb.DataDir("chaos"),
		rng:     mrand.New(mrand.NewPCG(cfg.Seed, cfg.Seed>>1|1)),
	}
	conf, err := cfg.Chain.conflist(d.name, d.dataDir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(d.netDir, 0o755); err != nil {
		return nil, fmt.Errorf("conf dir: %w", err)
	}
	if err := os.WriteFile(filepath.Join(d.netDir, d.name+".conflist"), conf, 0o644); err != nil {
		return nil, fmt.Errorf("write conflist: %w", err)
	}
	rep = &Report{Chain: cfg.Chain.Label, CNIVersion: cfg.Chain.CNIVersion, Ops: cfg.Ops, InFlight: cfg.InFlight,
		KillShare: max(cfg.KillShare, 0), Seed: cfg.Seed}
	if err := d.warmUp(ctx); err != nil {
		return rep, err
	}
	if err := d.run(ctx, rep); err != nil {
		return rep, err
	}
	if err := d.recover(ctx, rep); err != nil {
		return rep, err
	}
	if err := d.audit(rep); err != nil {
		return rep, err
	}
	if err := d.teardown(ctx, rep); err != nil {
		return rep, err
	}
	rep.Took = time.Since(start)
	return rep, nil
}
