package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/netns"
)

// readyTimeout bounds the wait for an agent's readiness.
const readyTimeout = 60 * time.Second

// Up builds the lab: underlay, nodes with their agents (the first embeds
// etcd, the others join it), then the pods.
func (l *Lab) Up(ctx context.Context) error {
	start := time.Now()
	s := l.Spec
	l.progress("underlay: %d segment(s) joined by a router, an outside network beyond it", s.Segments)
	if err := l.buildUnderlay(); err != nil {
		return err
	}
	nodes, err := l.buildNodes(s.Nodes)
	if err != nil {
		return err
	}
	l.progress("nodes: %d namespaces on the underlay", len(nodes))
	if s.Kubernetes {
		return l.upKube(ctx, start, nodes)
	}
	if err := l.startAgent(nodes[0]); err != nil {
		return err
	}
	if err := l.waitReady(ctx, nodes[0], readyTimeout); err != nil {
		return err
	}
	l.progress("agent %s ready (embeds etcd) after %s", nodes[0].Name, since(start))
	err = parallel(nodes[1:], func(n *Node) error {
		if err := l.startAgent(n); err != nil {
			return err
		}
		if err := l.waitReady(ctx, n, readyTimeout); err != nil {
			return err
		}
		l.progress("agent %s ready after %s", n.Name, since(start))
		return nil
	})
	if err != nil {
		return err
	}
	if err := l.recordJoins(ctx, nodes); err != nil {
		return err
	}
	if err := parallel(nodes, func(n *Node) error { return l.addPods(ctx, n, s.PodsPerNode) }); err != nil {
		return err
	}
	l.progress("lab %s up in %s", l.Name, since(start))
	return nil
}

// buildNodes makes count nodes' namespaces on the underlay, recording
// each; the first embeds the datastore (outside Kubernetes mode).
func (l *Lab) buildNodes(count int) ([]*Node, error) {
	var nodes []*Node
	for i := 0; i < count; i++ {
		n := l.newNode()
		n.Embedded = i == 0 && !l.Spec.Kubernetes
		if err := l.buildNode(n); err != nil {
			return nil, err
		}
		l.mu.Lock()
		l.Nodes = append(l.Nodes, n)
		err := l.save()
		l.mu.Unlock()
		if err != nil {
			return nil, err
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

// parallel runs f for every node at once and joins the errors.
func parallel(nodes []*Node, f func(*Node) error) error {
	var wg sync.WaitGroup
	errs := make([]error, len(nodes))
	for i, n := range nodes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = f(n)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (l *Lab) addPods(ctx context.Context, n *Node, count int) error {
	for j := 0; j < count; j++ {
		p, err := l.AddPod(ctx, n.Name)
		if err != nil {
			return err
		}
		l.progress("pod %s on %s: %s", p.Name, n.Name, strings.Join(p.IPs, ", "))
	}
	return nil
}

// joinTimeout bounds the wait for every node to route to a new node.
const joinTimeout = 30 * time.Second

// recordJoins waits until every node routes to each of nodes and records,
// per node, the time from its lease to the last peer's routes (as the
// agents report them).
func (l *Lab) recordJoins(ctx context.Context, nodes []*Node) error {
	deadline := time.Now().Add(joinTimeout)
	for {
		joins, missing, err := l.joinTimes(ctx, nodes)
		if err != nil {
			return err
		}
		if missing == "" {
			l.mu.Lock()
			for k, v := range joins {
				l.Joins[k] = v
			}
			err := l.save()
			l.mu.Unlock()
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes not connected after %s: %s", joinTimeout, missing)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// joinTimes computes each node's join time, or names a node pair whose
// routes are not in place yet.
func (l *Lab) joinTimes(ctx context.Context, nodes []*Node) (map[string]time.Duration, string, error) {
	l.mu.Lock()
	all := append([]*Node(nil), l.Nodes...)
	l.mu.Unlock()
	status := map[string]agentView{}
	for _, n := range all {
		st, err := l.AgentStatus(ctx, n)
		if err != nil {
			return nil, "", err
		}
		status[n.Name] = agentView{joined: st.Joined, since: st.PeersSince}
	}
	joins := map[string]time.Duration{}
	for _, n := range nodes {
		var worst time.Duration
		for _, p := range all {
			if p.Name == n.Name {
				continue
			}
			t, ok := status[p.Name].since[n.Name]
			if !ok {
				return nil, fmt.Sprintf("%s has no routes to %s yet", p.Name, n.Name), nil
			}
			// A peer that joined later could not route to n before it
			// existed: the pair's clock starts at the later join.
			from := status[n.Name].joined
			if j := status[p.Name].joined; j.After(from) {
				from = j
			}
			if d := t.Sub(from); d > worst {
				worst = d
			}
		}
		joins[n.Name] = worst
	}
	return joins, "", nil
}

type agentView struct {
	joined time.Time
	since  map[string]time.Time
}

// AddNode adds a node (with the spec's pods) to a running lab and returns
// how long its join took: from its lease to routes on every other node.
func (l *Lab) AddNode(ctx context.Context) (*Node, time.Duration, error) {
	if err := l.notKube("node add"); err != nil {
		return nil, 0, err
	}
	if len(l.Nodes) >= maxNodes || l.NextNode > 250 {
		return nil, 0, fmt.Errorf("lab %s is full", l.Name)
	}
	if l.etcdNode() == nil {
		return nil, 0, errors.New("the lab has no datastore node")
	}
	n := l.newNode()
	if err := l.buildNode(n); err != nil {
		return nil, 0, err
	}
	l.mu.Lock()
	l.Nodes = append(l.Nodes, n)
	err := l.save()
	l.mu.Unlock()
	if err != nil {
		return nil, 0, err
	}
	if err := l.startAgent(n); err != nil {
		return nil, 0, err
	}
	if err := l.waitReady(ctx, n, readyTimeout); err != nil {
		return nil, 0, err
	}
	if err := l.recordJoins(ctx, []*Node{n}); err != nil {
		return nil, 0, err
	}
	if err := l.addPods(ctx, n, l.Spec.PodsPerNode); err != nil {
		return nil, 0, err
	}
	return n, l.Joins[n.Name], nil
}

// DelNode takes a node out for good: its pods are deleted, its agent
// stopped, the node leaves the cluster (its lease revoked, so the others
// drop its routes at once) and its namespace goes.
func (l *Lab) DelNode(ctx context.Context, name string) error {
	if err := l.notKube("node del"); err != nil {
		return err
	}
	n, err := l.node(name)
	if err != nil {
		return err
	}
	if n.Embedded {
		return fmt.Errorf("%s holds the lab's datastore (embedded etcd); it can be killed and restarted, not deleted", name)
	}
	for _, p := range l.podsOf(name) {
		if err := l.DelPod(ctx, p.Name); err != nil {
			return err
		}
	}
	if err := l.stopAgent(n, syscall.SIGTERM); err != nil {
		return err
	}
	if err := l.runAgent(ctx, n, "leave"); err != nil {
		return err
	}
	if err := netns.DeleteNamed(n.NS); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, m := range l.Nodes {
		if m == n {
			l.Nodes = append(l.Nodes[:i], l.Nodes[i+1:]...)
			break
		}
	}
	delete(l.Joins, name)
	l.forgetNS(n.NS)
	if err := os.RemoveAll(n.Dir); err != nil {
		return err
	}
	return l.save()
}

// runAgent runs a podnet-agent subcommand with the node's flags inside its
// namespace and waits for it.
func (l *Lab) runAgent(ctx context.Context, n *Node, sub string) error {
	ns, err := netns.OpenNamed(n.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	cmd := exec.CommandContext(ctx, l.Bins.Agent, append([]string{sub}, l.agentArgs(n)...)...)
	cmd.Args = append(cmd.Args, "--listen", "")
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := ns.Do(cmd.Run); err != nil {
		return fmt.Errorf("podnet-agent %s on %s: %w\n%s", sub, n.Name, err, out.String())
	}
	return nil
}

// KillNode kills the node's agent with SIGKILL, as a crash would; the
// node's routes and pods stay as they are.
func (l *Lab) KillNode(name string) error {
	if err := l.notKube("node kill"); err != nil {
		return err
	}
	n, err := l.node(name)
	if err != nil {
		return err
	}
	return l.stopAgent(n, syscall.SIGKILL)
}

// RestartNode starts the node's agent again (stopping it first if it
// runs) and waits until it is ready.
func (l *Lab) RestartNode(ctx context.Context, name string) error {
	if err := l.notKube("node restart"); err != nil {
		return err
	}
	n, err := l.node(name)
	if err != nil {
		return err
	}
	if err := l.stopAgent(n, syscall.SIGTERM); err != nil {
		return err
	}
	if err := l.startAgent(n); err != nil {
		return err
	}
	return l.waitReady(ctx, n, readyTimeout)
}

// Down removes the lab named name under base: every agent, namespace and
// file — in Kubernetes mode first the nodes (containerd, kubelet,
// kube-proxy, pods, mounts, cgroups), the control plane and the
// forwarder — from its state when there is one and from the namespace
// names and the files of its parts otherwise, so it also cleans up after
// a lab whose builder was killed.
func Down(base, name string) error {
	if err := validName(name); err != nil {
		return err
	}
	if base == "" {
		base = DefaultBaseDir
	}
	var names []string
	if l, err := Open(base, name, nil); err == nil {
		names = append(names, l.Namespaces...)
		for _, n := range l.Nodes {
			if n.PID != 0 && isAgent(n.PID) {
				_ = syscall.Kill(n.PID, syscall.SIGKILL)
			}
		}
	}
	// Kubernetes first: its pods live in namespaces of their own, found
	// through the nodes' cgroups.
	errs := []error{downKube(name, filepath.Join(base, name))}
	prefix := "pl-" + name + "-"
	if entries, err := os.ReadDir(netns.RunDir); err == nil {
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), prefix) {
				names = append(names, e.Name())
			}
		}
	}
	seen := map[string]bool{}
	for i := len(names) - 1; i >= 0; i-- {
		ns := names[i]
		if seen[ns] {
			continue
		}
		seen[ns] = true
		errs = append(errs, killIn(ns))
		errs = append(errs, netns.DeleteNamed(ns))
	}
	if err := os.RemoveAll(filepath.Join(base, name)); err != nil {
		errs = append(errs, err)
	}
	// The base dir goes with the last lab: os.Remove fails, harmlessly,
	// while another lab still keeps its state there.
	_ = os.Remove(base)
	return errors.Join(errs...)
}

// killIn kills every process inside the named namespace and waits until
// they are gone, so the namespace dies with its binding.
func killIn(name string) error {
	pids, err := procsIn(name)
	if err != nil {
		return err
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, pid := range pids {
		for alive(pid) && time.Now().Before(deadline) {
			time.Sleep(5 * time.Millisecond)
		}
	}
	return nil
}

// procsIn lists the processes (but this one) inside the named namespace;
// none when it does not exist.
func procsIn(name string) ([]int, error) {
	var target syscall.Stat_t
	if err := syscall.Stat(filepath.Join(netns.RunDir, name), &target); err != nil {
		return nil, nil
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, p := range procs {
		pid, err := strconv.Atoi(p.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		var st syscall.Stat_t
		if syscall.Stat(fmt.Sprintf("/proc/%d/ns/net", pid), &st) == nil && st.Dev == target.Dev && st.Ino == target.Ino {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}
