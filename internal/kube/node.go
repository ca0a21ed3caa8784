package kube

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/netns"
)

// NodeConfig describes a Kubernetes node: containerd, kubelet and
// kube-proxy run by a supervisor process (`podnet kube-node`, see
// Supervise) inside the existing network namespace NetNS, a UTS namespace
// made for the node whose hostname is Name (what host-network pods see),
// and a private mount namespace made for the node, where directories under Dir/fs are
// bind-mounted over the standard paths (/etc/cni/net.d, /opt/cni/bin,
// /etc/kubernetes, /var/lib/{kubelet,containerd,cni,podnet},
// /var/log/{pods,containers}, /run/{containerd,netns,podnet}) so that a
// DaemonSet's hostPath volumes see the node's own files and nothing
// collides between nodes; regular files under Dir/sysctl are bound over
// the global sysctls kubelet writes, so the machine's values never change.
type NodeConfig struct {
	Bins Binaries
	// Name is the node's name (a DNS label): kubelet's hostname override
	// and the hostname of the node's UTS namespace.
	Name string
	// NetNS is the path of the network namespace the node runs in.
	NetNS string
	// IP is the node's address (kubelet's --node-ip).
	IP net.IP
	// IP6, in a dual-stack cluster, is the node's IPv6 address: kubelet's
	// --node-ip is then IP,IP6, the Node's InternalIPs both.
	IP6 net.IP
	// Dir holds the node's state: fs/ (its mounted directories), config/,
	// logs/<component>.log, sysctl/, state.json.
	Dir string
	// Kubeconfig is kubelet's client configuration (ControlPlane.Kubeconfig
	// of system:node:<Name>); empty runs kubelet standalone, with only the
	// static pods of StaticPodDir.
	Kubeconfig string
	// ProxyKubeconfig is kube-proxy's; empty runs no kube-proxy (another
	// service proxy, podnet's, serves the node's Services, or none does).
	ProxyKubeconfig string
	// ProxyMode is kube-proxy's mode; empty is ProxyIPTables.
	ProxyMode ProxyMode
	// CAFile is the cluster CA kubelet authenticates clients with (x509);
	// empty authenticates none.
	CAFile string
	// ClusterCIDR is the pods' address range, for kube-proxy;
	// ClusterCIDR6 the IPv6 one of a dual-stack cluster.
	ClusterCIDR  string
	ClusterCIDR6 string
	// ClusterDNS is the cluster DNS Service's address kubelet gives pods
	// (dnsPolicy ClusterFirst) as their name server, with ClusterDomain
	// as search domain; nil: pods get no cluster DNS.
	ClusterDNS net.IP
	// StaticPodDir is kubelet's staticPodPath: pod manifests it runs
	// without an apiserver. Optional.
	StaticPodDir string
	// Images are docker or OCI archives imported into containerd's k8s.io
	// namespace before kubelet starts; the sandbox image, PauseImage, is
	// among them (see PodImages).
	Images []string
	// Supervisor is the argv prefix of the supervisor, e.g.
	// {"/abs/bin/podnet", "kube-node"}; it gets --config <file>
	// --ready-fd <fd>.
	Supervisor []string
	// Detach runs the supervisor in its own session, outliving the caller
	// (the lab); else it is the caller's child (tests).
	Detach bool
}

// dnsLabel is what a node name may be here (it also names the node's
// cgroups).
var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// maxSocketPath is the longest unix socket path (sun_path less its NUL).
const maxSocketPath = 107

func (c NodeConfig) validate() error {
	var errs []error
	if !dnsLabel.MatchString(c.Name) {
		errs = append(errs, fmt.Errorf("name %q: not a DNS label", c.Name))
	}
	if c.NetNS == "" {
		errs = append(errs, errors.New("no network namespace"))
	}
	if c.IP == nil || c.IP.IsUnspecified() || c.IP.IsLoopback() {
		errs = append(errs, fmt.Errorf("node IP %v: need a routable address", c.IP))
	}
	if c.IP6 != nil && (c.IP6.To4() != nil || !c.IP6.IsGlobalUnicast()) {
		errs = append(errs, fmt.Errorf("node IPv6 address %v: need a routable IPv6 address", c.IP6))
	}
	if !filepath.IsAbs(c.Dir) || filepath.Clean(c.Dir) != c.Dir || c.Dir == "/" {
		errs = append(errs, fmt.Errorf("dir %q: need a clean absolute path", c.Dir))
	} else if s := c.socketPath(); len(s) > maxSocketPath {
		errs = append(errs, fmt.Errorf("dir %q: too long for containerd's socket %s (max %d bytes)", c.Dir, s, maxSocketPath))
	}
	if c.Bins.Kubelet == "" {
		errs = append(errs, errors.New("no kubelet binary"))
	}
	if c.ProxyKubeconfig != "" && c.Bins.Proxy == "" {
		errs = append(errs, errors.New("no kube-proxy binary"))
	}
	if !c.ProxyMode.known() {
		errs = append(errs, fmt.Errorf("kube-proxy mode %q: not %s or %s", c.ProxyMode, ProxyIPTables, ProxyNFTables))
	}
	if len(c.Supervisor) == 0 {
		errs = append(errs, errors.New("no supervisor command"))
	}
	if c.ClusterCIDR != "" {
		if _, _, err := net.ParseCIDR(c.ClusterCIDR); err != nil {
			errs = append(errs, fmt.Errorf("cluster CIDR: %w", err))
		}
	}
	if c.ClusterCIDR6 != "" {
		if ip, _, err := net.ParseCIDR(c.ClusterCIDR6); err != nil || ip.To4() != nil {
			errs = append(errs, fmt.Errorf("IPv6 cluster CIDR %q: not an IPv6 prefix (%v)", c.ClusterCIDR6, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("node config: %w", err)
	}
	return nil
}

// path is a file of the node's directory.
func (c NodeConfig) path(elem ...string) string {
	return filepath.Join(append([]string{c.Dir}, elem...)...)
}

// fsPath is where the node's view of a bind-mounted standard path p
// lives on the machine.
func (c NodeConfig) fsPath(p string) string { return c.path("fs", p) }

// socketPath is containerd's socket as the machine sees it.
func (c NodeConfig) socketPath() string { return c.fsPath(containerdSocket) }

// cgroupRoot is kubelet's cgroupRoot for the node: distinct per node name
// and directory, so two nodes of the same name (two labs, two tests)
// never share cgroups.
func (c NodeConfig) cgroupRoot() string {
	sum := sha256.Sum256([]byte(c.Dir))
	return "/podnet-" + c.Name + "-" + hex.EncodeToString(sum[:4])
}

// containerdSocket is containerd's socket in the node's view.
const containerdSocket = "/run/containerd/containerd.sock"

// Node is a running (or stopped) node.
type Node struct {
	st nodeState
	// exited is closed once the supervisor has been waited for, when this
	// process started it; nil otherwise.
	exited chan struct{}
}

// nodeState is what Dir/state.json records: enough to find and stop
// everything of the node from another process.
type nodeState struct {
	Config NodeConfig
	// PID and Start (its start time) name the supervisor; PID 0 once
	// stopped.
	PID   int
	Start uint64
	// MountNS is the node's mount namespace ("mnt:[…]").
	MountNS string
	// Snapshotter is the one containerd unpacks images with.
	Snapshotter string
}

// readyReport is what the supervisor writes to its ready pipe.
type readyReport struct {
	Snapshotter string `json:"snapshotter,omitempty"`
	Error       string `json:"error,omitempty"`
}

// StartNode starts the node's supervisor in cfg.NetNS and new mount and
// UTS namespaces and returns once containerd answers, cfg.Images are imported
// and kubelet (and kube-proxy) are started. On failure everything started
// is stopped again.
func StartNode(ctx context.Context, cfg NodeConfig) (*Node, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if cfg.ProxyKubeconfig != "" && cfg.ProxyMode == ProxyNFTables {
		if err := CheckNFT(); err != nil {
			return nil, fmt.Errorf("node %s: kube-proxy in nftables mode: %w", cfg.Name, err)
		}
	}
	if err := os.MkdirAll(cfg.path("logs"), 0o755); err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("node %s: encode config: %w", cfg.Name, err)
	}
	configPath := cfg.path("node.json")
	if _, err := atomicfile.Write(configPath, b, 0o600); err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	ns, err := netns.Open(cfg.NetNS)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	defer ns.Close()
	logPath := cfg.path("logs", "supervisor.log")
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("node %s: %w", cfg.Name, err)
	}
	defer logf.Close()
	r, w, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("node %s: ready pipe: %w", cfg.Name, err)
	}
	defer r.Close()
	args := append(append([]string{}, cfg.Supervisor[1:]...), "--config", configPath, "--ready-fd", "3")
	cmd := exec.Command(cfg.Supervisor[0], args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{w}
	// A new mount namespace (Go makes / recursively private in it, so
	// nothing the node mounts reaches the machine's view) and a new UTS
	// namespace (the node's hostname), entered only by the forked child.
	cmd.SysProcAttr = &syscall.SysProcAttr{Unshareflags: syscall.CLONE_NEWNS | syscall.CLONE_NEWUTS, Setsid: cfg.Detach, Setpgid: !cfg.Detach}
	err = ns.Do(cmd.Start)
	w.Close()
	if err != nil {
		return nil, fmt.Errorf("node %s: start supervisor: %w", cfg.Name, err)
	}
	n := &Node{st: nodeState{Config: cfg, PID: cmd.Process.Pid}, exited: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(n.exited)
	}()
	fail := func(err error) (*Node, error) {
		if serr := n.Stop(); serr != nil {
			err = errors.Join(err, serr)
		}
		log, _ := os.ReadFile(logPath)
		return nil, fmt.Errorf("node %s: %w\nsupervisor log:\n%s", cfg.Name, err, Tail(log, 30))
	}
	if p, ok := readProcInfo(n.st.PID); ok {
		n.st.Start = p.start
	}
	if n.st.MountNS, err = nsOf(n.st.PID, "mnt"); err != nil {
		return fail(err)
	}
	if err := n.save(); err != nil {
		return fail(err)
	}
	rep, err := n.waitReady(ctx, r)
	if err != nil {
		return fail(err)
	}
	n.st.Snapshotter = rep.Snapshotter
	if err := n.save(); err != nil {
		return fail(err)
	}
	return n, nil
}

// waitReady reads the supervisor's report from its ready pipe.
func (n *Node) waitReady(ctx context.Context, r io.Reader) (readyReport, error) {
	type result struct {
		rep readyReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		var rep readyReport
		line, err := bufio.NewReader(r).ReadBytes('\n')
		if err == nil || (errors.Is(err, io.EOF) && len(line) > 0) {
			err = json.Unmarshal(line, &rep)
		} else if errors.Is(err, io.EOF) {
			err = errors.New("the supervisor exited before it was ready")
		}
		done <- result{rep, err}
	}()
	select {
	case res := <-done:
		if res.err != nil {
			return readyReport{}, res.err
		}
		if res.rep.Error != "" {
			return readyReport{}, errors.New(res.rep.Error)
		}
		return res.rep, nil
	case <-ctx.Done():
		return readyReport{}, fmt.Errorf("waiting for the supervisor: %w", ctx.Err())
	}
}

// OpenNode opens the node whose state is in dir (it may be stopped).
func OpenNode(dir string) (*Node, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state.json"))
	if err != nil {
		return nil, fmt.Errorf("open node: %w", err)
	}
	var st nodeState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("open node %s: %w", dir, err)
	}
	return &Node{st: st}, nil
}

func (n *Node) save() error {
	b, err := json.MarshalIndent(n.st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode node state: %w", err)
	}
	_, err = atomicfile.Write(n.st.Config.path("state.json"), b, 0o644)
	return err
}

// Config is the node's configuration.
func (n *Node) Config() NodeConfig { return n.st.Config }

// ContainerdSocket is the node's containerd socket as the machine sees
// it (CRI and containerd clients dial it from any namespace).
func (n *Node) ContainerdSocket() string { return n.st.Config.socketPath() }

// FS is where the node's bind-mounted directories live on the machine:
// the node's /etc/cni/net.d is FS()+"/etc/cni/net.d", and so on.
func (n *Node) FS() string { return n.st.Config.path("fs") }

// CgroupRoot is kubelet's cgroupRoot for the node (pods' cgroups are
// below it in every hierarchy).
func (n *Node) CgroupRoot() string { return n.st.Config.cgroupRoot() }

// LogPath is the log file of a component: "supervisor", "containerd",
// "kubelet" or "kube-proxy".
func (n *Node) LogPath(component string) string {
	return n.st.Config.path("logs", component+".log")
}

// Running tells whether the node's supervisor runs.
func (n *Node) Running() bool { return n.supervisorAlive() }

func (n *Node) supervisorAlive() bool {
	if n.st.PID == 0 {
		return false
	}
	p, ok := readProcInfo(n.st.PID)
	return ok && p.state != 'Z' && p.start == n.st.Start
}

// Stop stops the node and removes what it made outside Dir: the
// supervisor (which stops kubelet and kube-proxy, then containerd, then
// what is left in its mount namespace and cgroups), then any process left
// in the node's cgroups (where every process of the node is from its
// birth: the supervisor runs in cgroupRoot/supervisor) or mount namespace,
// as a killed supervisor leaves them, the node's cgroups in every hierarchy, and the
// mountpoint directories it created on the machine, once no node uses
// them. Mounts die with the node's mount namespace; one found under Dir
// in this process's namespace is removed and reported. Files in Dir stay
// until the caller removes Dir. Stopping a stopped node is no error.
func (n *Node) Stop() error {
	var errs []error
	// A supervisor that stops on SIGTERM leaves nothing; one that is
	// gone already (killed, the machine rebooted) leaves its processes
	// to Stop.
	graceful := n.supervisorAlive()
	if graceful {
		if err := syscall.Kill(n.st.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			errs = append(errs, fmt.Errorf("signal supervisor: %w", err))
		}
		if !n.waitSupervisor(60 * time.Second) {
			errs = append(errs, errors.New("the supervisor did not stop on SIGTERM: killed"))
			graceful = false
			_ = syscall.Kill(n.st.PID, syscall.SIGKILL)
			n.waitSupervisor(10 * time.Second)
		}
	}
	if n.exited != nil {
		<-n.exited
	}
	cgroup := n.st.Config.cgroupRoot()
	killed := KillCgroups(cgroup)
	killed = append(killed, KillLeft(0, func() []int { return ProcsInMountNS(n.st.MountNS) })...)
	if len(killed) > 0 && graceful {
		errs = append(errs, fmt.Errorf("processes left by the supervisor, killed: %v", killed))
	}
	if _, err := RemoveCgroups(cgroup); err != nil {
		errs = append(errs, err)
	}
	if found, err := UnmountUnder(n.st.Config.Dir); len(found) > 0 || err != nil {
		errs = append(errs, fmt.Errorf("mounts under %s outside the node's namespace: %v", n.st.Config.Dir, found), err)
	}
	if err := removeMountpoints(); err != nil {
		errs = append(errs, err)
	}
	n.st.PID, n.st.Start = 0, 0
	if err := n.save(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("stop node %s: %w", n.st.Config.Name, err)
	}
	return nil
}

// waitSupervisor waits up to timeout for the supervisor to exit.
func (n *Node) waitSupervisor(timeout time.Duration) bool {
	deadline := time.After(timeout)
	for n.supervisorAlive() {
		select {
		case <-n.exited: // nil (blocks) unless this process started it
			return true
		case <-deadline:
			return false
		case <-time.After(20 * time.Millisecond):
		}
	}
	return true
}

// ImportImages imports image archives (docker or OCI) into the node's
// containerd, for kubelet (the CRI plugin's k8s.io namespace), and waits
// until the CRI plugin lists them.
func (n *Node) ImportImages(ctx context.Context, archives ...string) error {
	tools, err := FindContainerdTools()
	if tools.Ctr == "" {
		return err
	}
	if !n.supervisorAlive() {
		return fmt.Errorf("import images into node %s: not running", n.st.Config.Name)
	}
	return importImages(ctx, tools.Ctr, n.ContainerdSocket(), n.st.Snapshotter, archives...)
}
