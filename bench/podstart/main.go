// Command podstart measures pod start latency on Kubernetes: create →
// Running of a burst of pods on a node running podnet against a node of
// the same cluster running the reference plugins, side by side in one run.
//
// One lab in Kubernetes mode (internal/lab) with two nodes: podnet is
// installed as shipped (deploy/podnet.yaml, the DaemonSet), then its
// DaemonSet is kept off the second node by a nodeAffinity, and that node
// gets the reference conflist instead — containerd's usual one, bridge
// (cni0, gateway, ipMasq, hairpin) with host-local over the node's
// podCIDR and portmap for the portMappings capability, cniVersion 1.0.0
// (containerd 1.6) — with the reference plugins (containernetworking-
// plugins, -ref-cni-dir) as the node's whole CNI bin dir. After an
// unmeasured warm-up round per side, rounds alternate between the sides
// (podnet, reference, podnet, …; or with -together, both sides of a
// round at once): a
// Deployment of -pods busybox pods pinned to the side's node, every pod
// timed from its creation to its Running phase as a watch of the API
// sees them (the moment `kubectl get pods -w` shows Running), then the
// Deployment deleted and every pod timed to its removal.
//
// Where the time goes comes from the nodes themselves: containerd's log
// (RunPodSandbox, CreateContainer, StartContainer of every pod) and its
// CRI metrics (CNI ADD and DEL, sandbox network and runtime), and
// kubelet's metrics through the API server, each diffed around every
// round.
//
//	go run ./bench/podstart [-rounds 3] [-pods 30] [-warmup 5] [-together] [-keep] [-md docs/performance.md] [-json FILE]
//
// It needs root and the built binaries (make build); the Kubernetes
// binaries are built (or taken from kube.Build's cache). The lab has a
// random name and is taken down also on failure or interrupt.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/podnet/podnet/bench/internal/benchdoc"
	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
)

type options struct {
	rounds, pods int
	warmup       int
	agentBin     string
	cniBin       string
	cliBin       string
	refCNIDir    string
	roundTimeout time.Duration
	keep         bool
	together     bool
	out          benchdoc.Output
}

func main() {
	var o options
	flag.IntVar(&o.rounds, "rounds", 3, "rounds per side (the sides alternate)")
	flag.BoolVar(&o.together, "together", false, "run each round's sides at once instead of alternating (both under the same load; they compete for the machine)")
	flag.IntVar(&o.pods, "pods", 30, "pods created at once per round")
	flag.IntVar(&o.warmup, "warmup", 5, "pods of an unmeasured first round per side (0: none)")
	flag.StringVar(&o.agentBin, "agent-bin", "bin/podnet-agent", "podnet-agent binary")
	flag.StringVar(&o.cniBin, "cni-bin", "bin/podnet-cni", "podnet-cni binary")
	flag.StringVar(&o.cliBin, "cli-bin", "bin/podnet", "podnet CLI binary (node supervisor, image)")
	flag.StringVar(&o.refCNIDir, "ref-cni-dir", "/usr/lib/cni", "the reference plugins (containernetworking-plugins)")
	flag.DurationVar(&o.roundTimeout, "round-timeout", 5*time.Minute, "longest a round's pods may take to run, and to go")
	flag.BoolVar(&o.keep, "keep", false, "leave the lab up at the end, for inspection (podnet lab down --name NAME removes it)")
	o.out.Flags()
	flag.Parse()
	benchdoc.Main("podstart", func(ctx context.Context) error { return run(ctx, o) })
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces and runs Kubernetes nodes")
	}
	if o.rounds < 1 || o.pods < 1 {
		return errors.New("needs -rounds ≥ 1 and -pods ≥ 1")
	}
	start := time.Now()
	bins, err := benchlab.Binaries(lab.Binaries{Agent: o.agentBin, CNI: o.cniBin, CLI: o.cliBin})
	if err != nil {
		return err
	}
	ref, err := referencePlugins(o.refCNIDir)
	if err != nil {
		return err
	}
	name := benchlab.Name("bps")
	// kube-proxy on both nodes: the reference node has no podnet agent to
	// serve Services, and the sides differ only in their CNI plugins.
	l, err := lab.New("", name, lab.Spec{Nodes: 2, Kubernetes: true, KubeProxy: kube.ProxyIPTables}, bins, os.Stderr)
	if err != nil {
		return err
	}
	defer func() {
		if o.keep && ctx.Err() == nil {
			fmt.Fprintf(os.Stderr, "lab %s left up (-keep): podnet lab down --name %s removes it\n", name, name)
			return
		}
		fmt.Fprintln(os.Stderr, "taking the lab down …")
		if derr := lab.Down("", name); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	if err := l.Up(ctx); err != nil {
		return err
	}
	res := &result{Machine: benchdoc.ThisMachine("containerd", "runc"), Pods: o.pods, Warmup: o.warmup, Rounds: o.rounds, Together: o.together, UpTook: time.Since(start).Round(time.Second)}
	b2, err := newBench(l, o)
	if err != nil {
		return err
	}
	podnetNode, refNode := l.Nodes[0].Name, l.Nodes[1].Name
	res.Sides = []*side{
		{Name: podnetSide, Node: podnetNode, CNI: "podnet (deploy/podnet.yaml: the podnet plugin, host-local)"},
		{Name: referenceSide, Node: refNode, CNI: ref.describe()},
	}
	if err := b2.useReference(ctx, refNode, ref); err != nil {
		return err
	}
	if o.warmup > 0 {
		for _, s := range res.Sides {
			r, err := b2.round(ctx, s, "podstart-"+s.Name+"-warmup", o.warmup)
			if err != nil {
				return err
			}
			fmt.Fprintln(os.Stderr, r.summary(s), "(warm-up, not counted)")
		}
	}
	for i := 0; i < o.rounds; i++ {
		if err := b2.rounds(ctx, res.Sides, i, o.together); err != nil {
			return err
		}
	}
	for _, s := range res.Sides {
		if err := b2.breakdown(ctx, s); err != nil {
			return err
		}
	}
	res.Took = time.Since(start).Round(time.Second)
	text := report(res)
	fmt.Print(text)
	return o.out.Publish("bench/podstart", markdown(res, text), res)
}
