// Command agent measures podnet-agent on a lab of nodes made of network
// namespaces, each running the real agent (the first one embeds etcd):
//
//   - node join → routes on every other node: the lab's join times for
//     the nodes brought up together, then for nodes added one by one to
//     the running lab (bar: < 1 s in a 10-node lab);
//
//   - reconcile time: every agent's podnet_agent_reconcile_seconds
//     histogram (/metrics), merged;
//
//   - resident memory of every agent, the etcd-embedding n1 apart (bar:
//     < 50 MB on a 10-node lab).
//
//     go run ./bench/agent [-nodes 10] [-add 5] [-md docs/performance.md] [-json FILE]
//
// It needs root and the built binaries (make build). The lab has a random
// name and is taken down also on failure.
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
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/lab"
)

type options struct {
	nodes, add, pods int
	backend          cluster.Backend
	agentBin, cniBin string
	out              benchdoc.Output
}

func main() {
	var o options
	flag.IntVar(&o.nodes, "nodes", 10, "nodes the lab comes up with")
	flag.IntVar(&o.add, "add", 5, "nodes then added one by one to the running lab")
	flag.IntVar(&o.pods, "pods-per-node", 1, "pods on every node")
	flag.StringVar((*string)(&o.backend), "backend", string(cluster.Auto), "fabric backend: auto, host-gw or vxlan")
	flag.StringVar(&o.agentBin, "agent-bin", "bin/podnet-agent", "podnet-agent binary")
	flag.StringVar(&o.cniBin, "cni-bin", "bin/podnet-cni", "podnet-cni binary")
	o.out.Flags()
	flag.Parse()
	benchdoc.Main("agent", func(ctx context.Context) error { return run(ctx, o) })
}

// Bars from VISION.md.
const (
	joinBar = time.Second
	rssBar  = 50 << 10 // KiB
)

// join is one node's join time.
type join struct {
	Node    string        `json:"node"`
	Nodes   int           `json:"labNodes"` // nodes in the lab once it had joined
	Time    time.Duration `json:"ns"`
	Started string        `json:"how"` // "up" (together) or "added" (one by one)
}

// memory is one agent's resident memory.
type memory struct {
	Node     string `json:"node"`
	Embedded bool   `json:"embedsEtcd"`
	RSSKiB   int    `json:"rssKiB"`
}

type result struct {
	Machine   benchdoc.Machine `json:"machine"`
	Backend   cluster.Backend  `json:"backend"`
	Pods      int              `json:"podsPerNode"`
	Joins     []join           `json:"joins"`
	Reconcile histogram        `json:"reconcile"`
	// MemoryUp is taken once the initial lab is up, MemoryEnd after
	// the additions.
	MemoryUp  []memory      `json:"memoryUp"`
	MemoryEnd []memory      `json:"memoryEnd"`
	UpTook    time.Duration `json:"upTook"`
	Took      time.Duration `json:"took"`
}

func run(ctx context.Context, o options) (err error) {
	if os.Geteuid() != 0 {
		return errors.New("needs root: creates network namespaces")
	}
	if o.nodes < 2 || o.add < 0 {
		return errors.New("needs -nodes ≥ 2 and -add ≥ 0")
	}
	start := time.Now()
	bins, err := benchlab.Binaries(lab.Binaries{Agent: o.agentBin, CNI: o.cniBin})
	if err != nil {
		return err
	}
	name := benchlab.Name("bag")
	l, err := lab.New("", name, lab.Spec{Nodes: o.nodes, PodsPerNode: o.pods, Backend: o.backend}, bins, os.Stderr)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(os.Stderr, "taking the lab down …")
		if derr := lab.Down("", name); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	res := &result{Machine: benchdoc.ThisMachine(), Backend: o.backend, Pods: o.pods}
	if err := l.Up(ctx); err != nil {
		return err
	}
	res.UpTook = time.Since(start).Round(time.Millisecond)
	for _, n := range l.Nodes {
		res.Joins = append(res.Joins, join{Node: n.Name, Nodes: o.nodes, Time: l.Joins[n.Name], Started: "up"})
	}
	res.MemoryUp = memoryOf(l)
	for i := 0; i < o.add; i++ {
		n, d, err := l.AddNode(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(os.Stderr, "node %s joined a %d-node lab in %s\n", n.Name, len(l.Nodes), d)
		res.Joins = append(res.Joins, join{Node: n.Name, Nodes: len(l.Nodes), Time: d, Started: "added"})
	}
	res.MemoryEnd = memoryOf(l)
	for _, n := range l.Nodes {
		code, body, err := l.AgentGet(ctx, n, "/metrics")
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", n.Name, err)
		}
		if code != 200 {
			return fmt.Errorf("metrics of %s: HTTP %d", n.Name, code)
		}
		h, err := parseHistogram(body, "podnet_agent_reconcile_seconds")
		if err != nil {
			return fmt.Errorf("metrics of %s: %w", n.Name, err)
		}
		res.Reconcile.merge(h)
	}
	res.Took = time.Since(start).Round(time.Second)
	text := report(res)
	fmt.Print(text)
	return o.out.Publish("bench/agent", markdown(res, text), res)
}

func memoryOf(l *lab.Lab) []memory {
	var out []memory
	for _, n := range l.Nodes {
		out = append(out, memory{Node: n.Name, Embedded: n.Embedded, RSSKiB: lab.AgentRSS(n)})
	}
	return out
}
