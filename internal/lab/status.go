package lab

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/kube"
)

// PrintStatus writes what the lab is: its nodes (underlay addresses,
// subnets, agent state, the backend used to each peer, join time) and its
// pods with their addresses.
func (l *Lab) PrintStatus(ctx context.Context, w io.Writer) {
	s := l.Spec
	fam := "IPv4"
	if s.IPv6 {
		fam = "dual-stack"
	}
	mode := ""
	if s.Kubernetes {
		mode = ", Kubernetes " + kube.Version + ", " + l.serviceProxy()
	}
	fmt.Fprintf(w, "lab %s: %d nodes on %d segment(s), backend %s, %s%s, state in %s\n", l.Name, len(l.Nodes), s.Segments, s.Backend, fam, mode, l.Dir)
	fmt.Fprintf(w, "%-5s %-4s %-16s %-22s %-26s %-9s %-8s %-10s %s\n", "node", "seg", "underlay", "subnet", "subnet6", "agent", "rss", "join", "peers")
	var joins []time.Duration
	for _, n := range l.Nodes {
		st, err := l.AgentStatus(ctx, n)
		pid := l.agentPID(n)
		agentState := "ready"
		switch {
		case pid == 0:
			agentState = "down"
		case err != nil:
			agentState = "no answer"
		case !st.Ready:
			agentState = "not ready"
		}
		subnet, subnet6 := "-", "-"
		if st.Node.Subnet != nil {
			subnet = st.Node.Subnet.String()
		}
		if st.Node.Subnet6 != nil {
			subnet6 = st.Node.Subnet6.String()
		}
		var peers []string
		for p, m := range st.Backends {
			peers = append(peers, p+":"+string(m))
		}
		sort.Strings(peers)
		join := "-"
		if d, ok := l.Joins[n.Name]; ok {
			join = d.Round(time.Millisecond / 10).String()
			joins = append(joins, d)
		}
		etcd := ""
		if n.Embedded {
			etcd = " (etcd)"
		}
		rss := "-"
		if kb := rssOf(pid); kb > 0 {
			rss = fmt.Sprintf("%.1fMB", float64(kb)/1024)
		}
		fmt.Fprintf(w, "%-5s %-4d %-16s %-22s %-26s %-9s %-8s %-10s %s\n", n.Name, n.Segment, n.IP, subnet, subnet6, agentState, rss, join, strings.Join(peers, " ")+etcd)
	}
	if len(joins) > 0 {
		sort.Slice(joins, func(i, j int) bool { return joins[i] < joins[j] })
		max := joins[len(joins)-1]
		verdict := "meets"
		if max >= time.Second {
			verdict = "misses"
		}
		fmt.Fprintf(w, "node join → routes on every other node: median %s, max %s (bar < 1s: %s)\n",
			joins[len(joins)/2].Round(time.Millisecond/10), max.Round(time.Millisecond/10), verdict)
	}
	pods := l.Pods
	if s.Kubernetes {
		var err error
		if pods, err = l.KubePods(ctx, PodsNamespace, PodsSelector); err != nil {
			fmt.Fprintf(w, "pods: %v\n", err)
		}
	}
	width := 10
	for _, p := range pods {
		width = max(width, len(p.Name))
	}
	fmt.Fprintf(w, "%-*s %-5s %s\n", width, "pod", "node", "addresses")
	for _, p := range pods {
		fmt.Fprintf(w, "%-*s %-5s %s\n", width, p.Name, p.Node, strings.Join(p.IPs, ", "))
	}
}

// agentPID is the process of the node's agent, 0 when none runs: the one
// the lab started, or in Kubernetes mode the podnet pod's (host network:
// in the node's namespace).
func (l *Lab) agentPID(n *Node) int {
	if !l.Spec.Kubernetes {
		if n.PID != 0 && isAgent(n.PID) {
			return n.PID
		}
		return 0
	}
	pids, _ := procsIn(n.NS)
	for _, pid := range pids {
		if isAgent(pid) {
			return pid
		}
	}
	return 0
}

// RoutesTo lists the node's routes whose destination is subnet.
func (l *Lab) RoutesTo(node string, subnet *net.IPNet) ([]netlink.Route, error) {
	n, err := l.node(node)
	if err != nil {
		return nil, err
	}
	s, err := openNS(n.NS)
	if err != nil {
		return nil, err
	}
	defer s.close()
	routes, err := s.h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Dst: subnet}, netlink.RT_FILTER_DST)
	if err != nil {
		return nil, fmt.Errorf("routes of %s: %w", node, err)
	}
	return routes, nil
}

// AgentRSS is the resident memory of the node's agent in KiB (0 when it
// does not run).
func AgentRSS(n *Node) int {
	if n.PID == 0 || !isAgent(n.PID) {
		return 0
	}
	return rssOf(n.PID)
}

// rssOf is a process's resident memory in KiB (0 when pid is 0 or gone).
func rssOf(pid int) int {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb int
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb
		}
	}
	return 0
}
