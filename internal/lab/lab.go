// Package lab builds a virtual podnet cluster on one Linux machine out of
// network namespaces: an underlay of one or more L2 segments joined by a
// router, an "outside" network beyond the router, nodes that each run the
// real podnet-agent, and pods attached through the real CNI path (libcni,
// the conflist the agent wrote into the node's CNI conf dir). It is the
// demo, the end-to-end test bed and the benchmark bed.
//
// Nothing of a lab touches the machine's own network namespace: every
// link, address, route and rule is inside namespaces the lab created,
// named pl-<lab>-…, and recorded in the lab's state directory, so Down
// removes everything — also after the process that built the lab was
// killed.
package lab

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// DefaultBaseDir holds the state of every lab: under /run, so it goes with
// the namespaces when the machine reboots.
const DefaultBaseDir = "/run/podnet-lab"

// Spec is the shape of a lab.
type Spec struct {
	Nodes       int             `json:"nodes"`
	PodsPerNode int             `json:"podsPerNode"`
	Segments    int             `json:"segments"`
	Backend     cluster.Backend `json:"backend"`
	// IPv6 makes the lab dual-stack: IPv6 underlay and pods; with
	// Kubernetes a dual-stack cluster (IPv6 pod CIDRs, node addresses
	// and Service range beside the IPv4 ones, IPv4 the primary family).
	IPv6 bool `json:"ipv6"`
	// LeaseTTL is the agents' grace period for dead nodes.
	LeaseTTL time.Duration `json:"leaseTTL"`
	// Kubernetes makes the lab a real Kubernetes cluster: a control plane
	// in a namespace of its own, containerd, kubelet and (KubeProxy)
	// kube-proxy on every node, podnet installed from deploy/podnet.yaml and its image,
	// and the pods a Deployment's (see kube.go).
	Kubernetes bool `json:"kubernetes"`
	// KubeProxy is the Kubernetes lab's upstream kube-proxy on every
	// node: kube.ProxyIPTables or kube.ProxyNFTables (its modes), or
	// KubeProxyNone, podnet's service proxy serving the Services. Empty:
	// New picks none when deploy/podnet.yaml turns podnet's service proxy
	// on, else iptables.
	KubeProxy kube.ProxyMode `json:"kubeProxy,omitempty"`
}

// Defaults fills unset fields: 3 nodes, 2 pods each, one segment, auto.
func (s *Spec) Defaults() {
	if s.Nodes == 0 {
		s.Nodes = 3
	}
	if s.Segments == 0 {
		s.Segments = 1
	}
	if s.Backend == "" {
		s.Backend = cluster.Auto
	}
	if s.LeaseTTL == 0 {
		s.LeaseTTL = 20 * time.Second
	}
}

// Validate reports a spec the lab cannot build.
func (s Spec) Validate() error {
	switch {
	case s.Nodes < 1 || s.Nodes > maxNodes:
		return fmt.Errorf("nodes must be 1..%d, not %d", maxNodes, s.Nodes)
	case s.PodsPerNode < 0 || s.PodsPerNode > 100:
		return fmt.Errorf("pods per node must be 0..100, not %d", s.PodsPerNode)
	case s.Segments < 1 || s.Segments > 16:
		return fmt.Errorf("segments must be 1..16, not %d", s.Segments)
	}
	if !s.Backend.Known() {
		return fmt.Errorf("unknown backend %q (auto, host-gw or vxlan)", s.Backend)
	}
	if s.Backend == cluster.HostGW && s.Segments > 1 {
		return errors.New("host-gw needs every node on one segment (use auto or vxlan with --segments > 1)")
	}
	return s.validKubeProxy()
}

// Binaries are the programs a lab runs.
type Binaries struct {
	Agent string `json:"agent"` // podnet-agent
	CNI   string `json:"cni"`   // podnet-cni
	// CLI is the podnet CLI: the Kubernetes lab's node supervisor
	// (`podnet kube-node`), API forwarder (`podnet lab forward`) and, with
	// the others, the podnet image.
	CLI string `json:"cli,omitempty"`
}

// required lists the binaries a lab of spec runs, by program name.
func (b Binaries) required(s Spec) map[string]string {
	m := map[string]string{"podnet-agent": b.Agent, "podnet-cni": b.CNI}
	if s.Kubernetes {
		m["podnet"] = b.CLI
	}
	return m
}

// Node is one node of the lab.
type Node struct {
	Name    string `json:"name"`
	NS      string `json:"ns"`
	Index   int    `json:"index"`
	Segment int    `json:"segment"`
	IP      string `json:"ip"`
	IP6     string `json:"ip6,omitempty"`
	Dir     string `json:"dir"`
	PID     int    `json:"pid,omitempty"`
	// Embedded tells whether this node's agent embeds the etcd server.
	Embedded bool `json:"embedded,omitempty"`
}

// Pod is one pod of the lab: one the lab attached itself (NS, the
// lab's namespace, and ContainerID), or one of the Kubernetes mode
// (KubePods: NetNS).
type Pod struct {
	Name        string   `json:"name"`
	Node        string   `json:"node"`
	NS          string   `json:"ns,omitempty"`
	ContainerID string   `json:"containerID,omitempty"`
	IPs         []string `json:"ips"`
	// NetNS is the path of a Kubernetes pod's network namespace
	// (/proc/<pid>/ns/net of its sandbox).
	NetNS string `json:"netns,omitempty"`
}

// openNetNS opens the pod's network namespace.
func (p *Pod) openNetNS() (*netns.NS, error) {
	if p.NetNS != "" {
		return netns.Open(p.NetNS)
	}
	return openNamed(p.NS)
}

// openNamed opens one of the lab's named namespaces.
func openNamed(name string) (*netns.NS, error) {
	t, err := netns.OpenNamed(name)
	if err != nil {
		return nil, err
	}
	return t.NS, nil
}

// State is what a lab has built, kept in its state dir as it is built.
type State struct {
	Name string   `json:"name"`
	Spec Spec     `json:"spec"`
	Bins Binaries `json:"binaries"`
	// Namespaces lists every namespace the lab made, in creation order.
	Namespaces []string `json:"namespaces"`
	Nodes      []*Node  `json:"nodes"`
	Pods       []*Pod   `json:"pods"`
	// Joins records how long each node took from its lease to routes on
	// every other node.
	Joins map[string]time.Duration `json:"joins,omitempty"`
	// NextNode numbers the next node added.
	NextNode int `json:"nextNode"`
	// Kube is what the Kubernetes mode runs besides the nodes.
	Kube *KubeState `json:"kube,omitempty"`
}

// Lab is a lab being built or operated.
type Lab struct {
	// Dir is the lab's state directory.
	Dir string
	// Out receives progress lines (nil: discarded).
	Out io.Writer

	mu sync.Mutex
	State
}

// maxNodes bounds a lab by its addressing (one /24 per segment).
const maxNodes = 200

// New records a new lab named name under base (DefaultBaseDir when
// empty); nothing is built until Up.
func New(base, name string, spec Spec, bins Binaries, out io.Writer) (*Lab, error) {
	spec.Defaults()
	if err := spec.Validate(); err != nil {
		return nil, err
	}
	if err := spec.resolveKubeProxy(); err != nil {
		return nil, err
	}
	if err := validName(name); err != nil {
		return nil, err
	}
	for name, b := range bins.required(spec) {
		if b == "" {
			return nil, fmt.Errorf("lab binary: no %s given", name)
		}
		if _, err := os.Stat(b); err != nil {
			return nil, fmt.Errorf("lab binary %s: %w", name, err)
		}
	}
	if base == "" {
		base = DefaultBaseDir
	}
	dir := filepath.Join(base, name)
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, err
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("lab %q exists (podnet lab down --name %s removes it)", name, name)
		}
		return nil, err
	}
	l := &Lab{Dir: dir, Out: out, State: State{Name: name, Spec: spec, Bins: bins, NextNode: 1, Joins: map[string]time.Duration{}}}
	return l, l.save()
}

// Open loads an existing lab's state.
func Open(base, name string, out io.Writer) (*Lab, error) {
	if base == "" {
		base = DefaultBaseDir
	}
	dir := filepath.Join(base, name)
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no lab %q (podnet lab up creates one)", name)
		}
		return nil, err
	}
	l := &Lab{Dir: dir, Out: out}
	if err := json.Unmarshal(b, &l.State); err != nil {
		return nil, fmt.Errorf("lab state %s: %w", dir, err)
	}
	if l.Joins == nil {
		l.Joins = map[string]time.Duration{}
	}
	return l, nil
}

func validName(name string) error {
	if name == "" || len(name) > 20 {
		return fmt.Errorf("lab name %q must be 1 to 20 characters", name)
	}
	for _, r := range name {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-') {
			return fmt.Errorf("lab name %q may hold only a-z, 0-9 and -", name)
		}
	}
	return nil
}

// save writes the state (temp file + rename); the caller holds mu or is
// the only user.
func (l *Lab) save() error {
	b, err := json.MarshalIndent(&l.State, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(l.Dir, ".state.json.tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(l.Dir, "state.json")); err != nil {
		return fmt.Errorf("save lab state: %w", err)
	}
	return nil
}

// progress prints one line of progress.
func (l *Lab) progress(format string, a ...any) {
	if l.Out != nil {
		fmt.Fprintf(l.Out, format+"\n", a...)
	}
}

// nsName is the name of one of the lab's namespaces.
func (l *Lab) nsName(role string) string { return "pl-" + l.Name + "-" + role }

// node returns the named node.
func (l *Lab) node(name string) (*Node, error) {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n, nil
		}
	}
	return nil, fmt.Errorf("lab %s has no node %q", l.Name, name)
}

// pod returns the named pod.
func (l *Lab) pod(name string) (*Pod, error) {
	for _, p := range l.Pods {
		if p.Name == name {
			return p, nil
		}
	}
	return nil, fmt.Errorf("lab %s has no pod %q", l.Name, name)
}

// Outside names the outside host beyond the router in Namespace and
// OpenNetNS.
const Outside = "outside"

// Namespace returns the namespace name of a pod or a node of the lab, or
// of the outside host (Outside).
func (l *Lab) Namespace(name string) (string, error) {
	if name == Outside {
		return l.nsName(Outside), nil
	}
	if p, err := l.pod(name); err == nil {
		return p.NS, nil
	}
	if n, err := l.node(name); err == nil {
		return n.NS, nil
	}
	return "", fmt.Errorf("lab %s has no pod or node %q (nor is it %q)", l.Name, name, Outside)
}
