package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/netns"
)

// newNode allocates the next node's name, segment and addresses.
func (l *Lab) newNode() *Node {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := l.NextNode
	l.NextNode++
	seg := (i-1)%l.Spec.Segments + 1
	n := &Node{
		Name: fmt.Sprintf("n%d", i), Index: i, Segment: seg,
		IP:  segmentIP(seg, i).String(),
		Dir: filepath.Join(l.Dir, "nodes", fmt.Sprintf("n%d", i)),
	}
	n.NS = l.nsName(n.Name)
	if l.Spec.IPv6 {
		n.IP6 = segmentIP6(seg, i).String()
	}
	return n
}

// etcdNode is the node whose agent embeds the datastore: the first one.
func (l *Lab) etcdNode() *Node {
	for _, n := range l.Nodes {
		if n.Embedded {
			return n
		}
	}
	return nil
}

// agentArgs are a node's podnet-agent flags.
func (l *Lab) agentArgs(n *Node) []string {
	args := []string{
		"--node-name", n.Name,
		"--iface", "eth0",
		"--node-ip", n.IP,
		"--data-dir", filepath.Join(n.Dir, "data"),
		"--cni-bin-dir", filepath.Join(n.Dir, "bin"),
		"--cni-conf-dir", filepath.Join(n.Dir, "net.d"),
		"--ipam-dir", filepath.Join(n.Dir, "ipam"),
		"--cni-binary", l.Bins.CNI,
		"--listen", net.JoinHostPort(n.IP, strconv.Itoa(agentPort)),
		"--cluster-cidr", clusterCIDR,
		"--backend", string(l.Spec.Backend),
		"--lease-ttl", l.Spec.LeaseTTL.String(),
		"--etcd-prefix", "/podnet-lab/",
	}
	if n.IP6 != "" {
		args = append(args, "--node-ip6", n.IP6, "--cluster-cidr6", clusterCIDR6, "--node-subnet-size6", strconv.Itoa(subnetSize6))
	}
	// The embedding agent secures the datastore on its own (mutual TLS,
	// its CA made on first start); the others join with its token.
	if n.Embedded {
		args = append(args, "--datastore", "embedded")
	} else {
		e := l.etcdNode()
		args = append(args, "--datastore", "etcd",
			"--etcd-endpoints", "https://"+net.JoinHostPort(e.IP, "2379"),
			"--join-token-file", JoinTokenFile(e))
	}
	return args
}

// JoinTokenFile is where the embedding node's agent writes the join token.
func JoinTokenFile(n *Node) string { return filepath.Join(n.Dir, "data", "join-token") }

// startAgent starts the node's agent inside its namespace, detached (it
// outlives the command that started it), logging to the node's dir.
func (l *Lab) startAgent(n *Node) error {
	if err := os.MkdirAll(n.Dir, 0o755); err != nil {
		return err
	}
	logf, err := os.OpenFile(filepath.Join(n.Dir, "agent.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	ns, err := netns.OpenNamed(n.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	cmd := exec.Command(l.Bins.Agent, l.agentArgs(n)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("start agent of %s: %w", n.Name, err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it dies while we run
	l.mu.Lock()
	n.PID = cmd.Process.Pid
	err = l.save()
	l.mu.Unlock()
	return err
}

// stopAgent ends the node's agent with sig and waits until it is gone.
func (l *Lab) stopAgent(n *Node, sig syscall.Signal) error {
	if n.PID == 0 {
		return nil
	}
	if isAgent(n.PID) {
		if err := syscall.Kill(n.PID, sig); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("signal agent of %s: %w", n.Name, err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for isAgent(n.PID) {
			if time.Now().After(deadline) {
				_ = syscall.Kill(n.PID, syscall.SIGKILL)
				deadline = time.Now().Add(5 * time.Second)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	l.mu.Lock()
	n.PID = 0
	err := l.save()
	l.mu.Unlock()
	return err
}

// isAgent tells whether pid is a live podnet-agent (not a zombie, not a
// recycled pid of another program).
func isAgent(pid int) bool {
	comm, state, ok := procStat(pid)
	return ok && comm == "podnet-agent" && state != 'Z'
}

// alive tells whether pid runs (a zombie does not).
func alive(pid int) bool {
	_, state, ok := procStat(pid)
	return ok && state != 'Z'
}

// procStat reads a process's command name and state from /proc.
func procStat(pid int) (comm string, state byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", 0, false
	}
	s := string(b) // pid (comm) state …
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open || end+2 >= len(s) {
		return "", 0, false
	}
	return s[open+1 : end], s[end+2], true
}

// client returns an HTTP client whose connections are made inside the
// node's namespace (a socket stays in the namespace it was created in).
func client(nsName string) *http.Client {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		ns, err := netns.OpenNamed(nsName)
		if err != nil {
			return nil, err
		}
		defer ns.Close()
		var c net.Conn
		err = ns.Do(func() error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	return &http.Client{Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true}, Timeout: 5 * time.Second}
}

// agentAddr is where the node's agent serves /status: its node address,
// or in Kubernetes mode the node's loopback (deploy/podnet.yaml's listen).
func (l *Lab) agentAddr(n *Node) string {
	host := n.IP
	if l.Spec.Kubernetes {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, strconv.Itoa(agentPort))
}

// AgentGet fetches path (/healthz, /readyz, /status, /metrics) from the
// node's agent.
func (l *Lab) AgentGet(ctx context.Context, n *Node, path string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+l.agentAddr(n)+path, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := client(n.NS).Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}

// AgentStatus returns what the node's agent reports it built.
func (l *Lab) AgentStatus(ctx context.Context, n *Node) (cluster.NodeStatus, error) {
	var st cluster.NodeStatus
	code, b, err := l.AgentGet(ctx, n, "/status")
	if err != nil {
		return st, err
	}
	if code != http.StatusOK {
		return st, fmt.Errorf("agent of %s: /status answered %d", n.Name, code)
	}
	return st, json.Unmarshal(b, &st)
}

// waitReady waits for the node's agent to answer /readyz with 200.
func (l *Lab) waitReady(ctx context.Context, n *Node, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "no answer"
	for {
		if n.PID != 0 && !isAgent(n.PID) {
			return fmt.Errorf("agent of %s exited; its log: %s\n%s", n.Name, filepath.Join(n.Dir, "agent.log"), tail(filepath.Join(n.Dir, "agent.log"), 10))
		}
		code, b, err := l.AgentGet(ctx, n, "/readyz")
		if err == nil && code == http.StatusOK {
			return nil
		}
		if err == nil {
			last = strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("agent of %s not ready after %s: %s (log: %s)", n.Name, timeout, last, filepath.Join(n.Dir, "agent.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(25 * time.Millisecond):
		}
	}
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
