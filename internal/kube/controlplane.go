package kube

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/podnet/podnet/internal/atomicfile"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/pki"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// The control plane's components, as StopComponent and StartComponent
// name them.
const (
	ComponentEtcd              = "etcd"
	ComponentAPIServer         = "kube-apiserver"
	ComponentControllerManager = "kube-controller-manager"
	ComponentScheduler         = "kube-scheduler"
)

// APIServerPort is the API server's secure port on ControlPlaneConfig.IP.
const APIServerPort = 6443

// Ports on the control plane namespace's loopback.
const (
	etcdClientPort        = 2379
	etcdPeerPort          = 2380
	controllerManagerPort = 10257
	schedulerPort         = 10259
)

// Waits of the control plane.
const (
	// cpStartTimeout bounds the wait for a component to become healthy
	// when the caller's context has no deadline.
	cpStartTimeout = 2 * time.Minute
	// cpStopGrace is how long a component has to exit after SIGTERM before
	// it is killed.
	cpStopGrace = 10 * time.Second
	// cpPollInterval is how often health and exits are polled.
	cpPollInterval = 100 * time.Millisecond
)

// ControlPlaneConfig configures a control plane.
type ControlPlaneConfig struct {
	// Bins are the binaries of Build.
	Bins Binaries
	// Dir keeps the state: pki/, etcd/, logs/, kubeconfigs/, state.json.
	Dir string
	// NetNS is the path of the network namespace the components run in
	// (e.g. /run/netns/<name>); never the caller's own.
	NetNS string
	// IP is the address, configured in NetNS, the API server binds and
	// advertises; the nodes reach the API through it. Not a loopback
	// address: the API server refuses to advertise one.
	IP net.IP
	// ClusterCIDR is the pod network kube-controller-manager cuts node
	// pod CIDRs of NodeCIDRMaskSize bits from (e.g. 10.244.0.0/16, 24).
	ClusterCIDR      string
	NodeCIDRMaskSize int
	// ServiceCIDR is the Service cluster IP range (e.g. 10.96.0.0/16).
	ServiceCIDR string
	// ClusterCIDR6, NodeCIDRMaskSize6 and ServiceCIDR6, all set or none,
	// make the cluster dual-stack as kubeadm does: an IPv6 pod CIDR of
	// NodeCIDRMaskSize6 bits for every node beside its IPv4 one, and an
	// IPv6 Service range beside ServiceCIDR (e.g. fd00:10:244::/56, 64,
	// fd00:10:96::/112: the API server takes an IPv6 range of /108 or
	// longer). IPv4 stays the primary family: IP is the API server's
	// address.
	ClusterCIDR6      string
	NodeCIDRMaskSize6 int
	ServiceCIDR6      string
	// Detach puts the processes in their own session so that they outlive
	// the caller (the lab); else they are the caller's children and die
	// with it (tests).
	Detach bool
}

// ControlPlane is a running (or stopped) control plane: etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler in one
// network namespace.
type ControlPlane struct {
	cfg ControlPlaneConfig

	mu    sync.Mutex            // guards procs and state.json
	procs map[string]*cpProcess // by component name; absent: not started
	pkiMu sync.Mutex            // serializes certificate issuing
}

// cpProcess is a component's process. Start tells it from a later process
// that reuses the PID.
type cpProcess struct {
	PID   int
	Start uint64 // start time, in clock ticks after boot (/proc/PID/stat)
	// done is closed once the process has exited and been reaped; nil
	// when it is not this process's child (the control plane was
	// opened from state.json).
	done chan struct{}
}

// cpState is the content of Dir/state.json.
type cpState struct {
	Config    ControlPlaneConfig
	Processes map[string]*cpProcess
}

// cpStateFile is the name of the state file in Dir.
const cpStateFile = "state.json"

// componentOrder is the start order: etcd first.
var componentOrder = []string{ComponentEtcd, ComponentAPIServer, ComponentControllerManager, ComponentScheduler}

// StartControlPlane creates (or reuses, when Dir holds them from an
// earlier start) the PKI, the kubeconfigs and the etcd data, starts the
// components inside cfg.NetNS and returns once the API server is ready,
// the controller manager and the scheduler are healthy and the default
// ServiceAccount and the kubernetes Service exist. On failure whatever was
// started is stopped. A control plane still running from Dir is an error.
func StartControlPlane(ctx context.Context, cfg ControlPlaneConfig) (*ControlPlane, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if prev, err := OpenControlPlane(cfg.Dir); err == nil {
		for name, p := range prev.procs {
			if p.alive() {
				return nil, fmt.Errorf("kube: control plane: %s (pid %d) of %s still runs: stop that control plane first", name, p.PID, cfg.Dir)
			}
		}
	}
	cp := &ControlPlane{cfg: cfg, procs: map[string]*cpProcess{}}
	if err := cp.prepare(); err != nil {
		return nil, err
	}
	if err := cp.save(); err != nil {
		return nil, err
	}
	for _, name := range componentOrder {
		if err := cp.StartComponent(ctx, name); err != nil {
			return nil, errors.Join(err, cp.Stop())
		}
	}
	if err := cp.waitServing(ctx); err != nil {
		return nil, errors.Join(err, cp.Stop())
	}
	return cp, nil
}

// OpenControlPlane opens the control plane whose state is in dir (as
// StartControlPlane left it, maybe in another process).
func OpenControlPlane(dir string) (*ControlPlane, error) {
	b, err := os.ReadFile(filepath.Join(dir, cpStateFile))
	if err != nil {
		return nil, fmt.Errorf("kube: open control plane: %w", err)
	}
	var st cpState
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("kube: open control plane: %s: %w", filepath.Join(dir, cpStateFile), err)
	}
	if st.Processes == nil {
		st.Processes = map[string]*cpProcess{}
	}
	return &ControlPlane{cfg: st.Config, procs: st.Processes}, nil
}

// Config is the control plane's configuration.
func (cp *ControlPlane) Config() ControlPlaneConfig { return cp.cfg }

// StartComponent starts a stopped component (one of the Component*
// names) and waits until it is healthy. A running one is left alone.
func (cp *ControlPlane) StartComponent(ctx context.Context, name string) error {
	if _, ok := cp.args(name); !ok {
		return fmt.Errorf("kube: unknown control plane component %q", name)
	}
	cp.mu.Lock()
	p := cp.procs[name]
	cp.mu.Unlock()
	if p != nil && p.alive() {
		return nil
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cpStartTimeout)
		defer cancel()
	}
	p, err := cp.spawn(name)
	if err != nil {
		return err
	}
	cp.mu.Lock()
	cp.procs[name] = p
	err = cp.saveLocked()
	cp.mu.Unlock()
	if err != nil {
		return err
	}
	if err := cp.waitHealthy(ctx, name, p); err != nil {
		return errors.Join(err, cp.StopComponent(name))
	}
	return nil
}

// StopComponent stops a component (SIGTERM, then SIGKILL after a grace
// period) and returns once its process is gone. A stopped one is no
// error.
func (cp *ControlPlane) StopComponent(name string) error {
	if _, ok := cp.args(name); !ok {
		return fmt.Errorf("kube: unknown control plane component %q", name)
	}
	return cp.stop(name)
}

// Stop stops every component and returns once their processes are gone
// (reaped, when they are this process's children). The files stay in
// Dir. etcd goes last: the API server shutting down still writes to it.
func (cp *ControlPlane) Stop() error {
	var wg sync.WaitGroup
	errs := make([]error, len(componentOrder))
	for i, name := range componentOrder[1:] {
		wg.Go(func() { errs[i+1] = cp.stop(name) })
	}
	wg.Wait()
	errs[0] = cp.stop(componentOrder[0])
	return errors.Join(errs...)
}

// stop ends name's process, if any, and forgets it.
func (cp *ControlPlane) stop(name string) error {
	cp.mu.Lock()
	p := cp.procs[name]
	cp.mu.Unlock()
	if p != nil {
		if err := p.terminate(); err != nil {
			return fmt.Errorf("kube: stop %s: %w", name, err)
		}
	}
	cp.mu.Lock()
	defer cp.mu.Unlock()
	if cp.procs[name] != p {
		return nil // started again meanwhile
	}
	delete(cp.procs, name)
	return cp.saveLocked()
}

// validate checks the configuration.
func (cfg *ControlPlaneConfig) validate() error {
	if !binariesComplete(cfg.Bins) {
		return errors.New("kube: control plane: binaries missing (use Build)")
	}
	if cfg.Dir == "" || !filepath.IsAbs(cfg.Dir) {
		return fmt.Errorf("kube: control plane: directory %q is not an absolute path", cfg.Dir)
	}
	ns, err := netns.Open(cfg.NetNS)
	if err != nil {
		return fmt.Errorf("kube: control plane: %w", err)
	}
	ns.Close()
	if cfg.IP == nil || cfg.IP.IsLoopback() || cfg.IP.IsUnspecified() {
		return fmt.Errorf("kube: control plane: API server address %v is not a routable address", cfg.IP)
	}
	if err := validFamily(cfg.ClusterCIDR, cfg.NodeCIDRMaskSize, cfg.ServiceCIDR, false); err != nil {
		return err
	}
	if cfg.dualStack() {
		return validFamily(cfg.ClusterCIDR6, cfg.NodeCIDRMaskSize6, cfg.ServiceCIDR6, true)
	}
	if cfg.NodeCIDRMaskSize6 != 0 || cfg.ServiceCIDR6 != "" {
		return errors.New("kube: control plane: IPv6 node CIDR mask size or Service CIDR without an IPv6 cluster CIDR")
	}
	return nil
}

// dualStack tells whether the cluster has IPv6 beside IPv4.
func (cfg *ControlPlaneConfig) dualStack() bool { return cfg.ClusterCIDR6 != "" }

// validFamily checks one family's cluster CIDR, node CIDR mask size and
// Service range: of that family (v6 or IPv4), the mask within the
// cluster CIDR, the Service range holding an address.
func validFamily(clusterCIDR string, maskSize int, serviceCIDR string, v6 bool) error {
	family := "IPv4"
	if v6 {
		family = "IPv6"
	}
	cluster, err := netip.ParsePrefix(clusterCIDR)
	if err != nil {
		return fmt.Errorf("kube: control plane: %s cluster CIDR: %w", family, err)
	}
	service, err := netip.ParsePrefix(serviceCIDR)
	if err != nil {
		return fmt.Errorf("kube: control plane: %s service CIDR: %w", family, err)
	}
	for _, p := range []netip.Prefix{cluster, service} {
		if p.Addr().Is6() != v6 || p.Addr().Is4In6() {
			return fmt.Errorf("kube: control plane: %s is not an %s prefix", p, family)
		}
	}
	if maskSize < cluster.Bits() || maskSize > cluster.Addr().BitLen() {
		return fmt.Errorf("kube: control plane: node CIDR mask size %d does not fit cluster CIDR %s", maskSize, cluster)
	}
	_, err = firstServiceIP(serviceCIDR)
	return err
}

// clusterCIDRs is kube-controller-manager's --cluster-cidr: IPv4, then
// IPv6 in a dual-stack cluster.
func (cfg *ControlPlaneConfig) clusterCIDRs() string {
	if cfg.dualStack() {
		return cfg.ClusterCIDR + "," + cfg.ClusterCIDR6
	}
	return cfg.ClusterCIDR
}

// serviceRanges is the --service-cluster-ip-range of the API server and
// kube-controller-manager: IPv4 (the kubernetes Service's family), then
// IPv6 in a dual-stack cluster.
func (cfg *ControlPlaneConfig) serviceRanges() string {
	if cfg.dualStack() {
		return cfg.ServiceCIDR + "," + cfg.ServiceCIDR6
	}
	return cfg.ServiceCIDR
}

// firstServiceIP is the first address of the Service range: the
// kubernetes Service's cluster IP.
func firstServiceIP(cidr string) (net.IP, error) {
	p, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("kube: control plane: service CIDR: %w", err)
	}
	first := p.Masked().Addr().Next()
	if !p.Contains(first) {
		return nil, fmt.Errorf("kube: control plane: service CIDR %s holds no address", cidr)
	}
	return first.AsSlice(), nil
}

// prepare makes the directories, certificates, keys and kubeconfigs the
// components need, keeping those an earlier start left.
func (cp *ControlPlane) prepare() error {
	for _, d := range []string{cp.cfg.Dir, cp.logDir(), cp.etcdDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("kube: control plane: %w", err)
		}
	}
	ca, err := loadOrCreateCA(cp.pkiDir())
	if err != nil {
		return err
	}
	svcIP, err := firstServiceIP(cp.cfg.ServiceCIDR)
	if err != nil {
		return err
	}
	loopback := net.IPv4(127, 0, 0, 1)
	for _, l := range []pki.Leaf{
		{Name: ComponentAPIServer, CommonName: ComponentAPIServer, Server: true,
			IPs:      []net.IP{cp.cfg.IP, loopback, svcIP},
			DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}},
		// The API server's identity towards kubelets (logs, exec).
		{Name: "kube-apiserver-kubelet-client", CommonName: "kube-apiserver-kubelet-client", Organizations: []string{"system:masters"}, Client: true},
		{Name: ComponentControllerManager, CommonName: ComponentControllerManager, Server: true, IPs: []net.IP{loopback}, DNSNames: []string{"localhost"}},
		{Name: ComponentScheduler, CommonName: ComponentScheduler, Server: true, IPs: []net.IP{loopback}, DNSNames: []string{"localhost"}},
	} {
		if _, _, err := ca.EnsureLeaf(cp.pkiDir(), l); err != nil {
			return err
		}
	}
	if _, _, err := ensureServiceAccountKey(cp.pkiDir()); err != nil {
		return err
	}
	for _, u := range []struct {
		user   string
		groups []string
	}{
		{adminUser, []string{"system:masters"}},
		{"system:kube-controller-manager", nil},
		{"system:kube-scheduler", nil},
	} {
		if _, err := cp.Kubeconfig(u.user, u.groups...); err != nil {
			return err
		}
	}
	return nil
}

// args is the command line of a component; false for an unknown name.
func (cp *ControlPlane) args(name string) ([]string, bool) {
	pkiFile := func(f string) string { return filepath.Join(cp.pkiDir(), f) }
	kubeconfig := func(user string) []string {
		k := cp.kubeconfigPath(user)
		return []string{"--kubeconfig=" + k, "--authentication-kubeconfig=" + k, "--authorization-kubeconfig=" + k}
	}
	serving := func(name string) []string {
		return []string{"--tls-cert-file=" + pkiFile(name+".crt"), "--tls-private-key-file=" + pkiFile(name+".key")}
	}
	c := cp.cfg
	switch name {
	case ComponentEtcd:
		client := fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort)
		peer := fmt.Sprintf("http://127.0.0.1:%d", etcdPeerPort)
		return []string{c.Bins.Etcd,
			"--name=default",
			"--data-dir=" + cp.etcdDir(),
			"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
			"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
			"--initial-cluster=default=" + peer,
			// A throwaway cluster's store: the page cache is durable
			// enough, and fsyncs slow a shared machine's disk down.
			"--unsafe-no-fsync=true",
		}, true
	case ComponentAPIServer:
		return append([]string{c.Bins.APIServer,
			"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort),
			"--bind-address=" + c.IP.String(), "--advertise-address=" + c.IP.String(),
			"--secure-port=" + strconv.Itoa(APIServerPort),
			"--client-ca-file=" + cp.CAFile(),
			"--kubelet-client-certificate=" + pkiFile("kube-apiserver-kubelet-client.crt"),
			"--kubelet-client-key=" + pkiFile("kube-apiserver-kubelet-client.key"),
			"--kubelet-preferred-address-types=InternalIP,Hostname",
			"--authorization-mode=Node,RBAC",
			"--enable-admission-plugins=NodeRestriction",
			"--service-cluster-ip-range=" + c.serviceRanges(),
			"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
			"--service-account-key-file=" + pkiFile(saPubFile),
			"--service-account-signing-key-file=" + pkiFile(saKeyFile),
			"--allow-privileged=true",
			"--profiling=false",
			// Without a grace period for watches, SIGTERM leaves the
			// API server waiting ~25 s on its clients' open watches.
			"--shutdown-watch-termination-grace-period=2s",
		}, serving(ComponentAPIServer)...), true
	case ComponentControllerManager:
		args := []string{c.Bins.ControllerManager,
			"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(controllerManagerPort),
			"--allocate-node-cidrs=true",
			"--cluster-cidr=" + c.clusterCIDRs(),
			"--node-cidr-mask-size-ipv4=" + strconv.Itoa(c.NodeCIDRMaskSize),
			"--service-cluster-ip-range=" + c.serviceRanges(),
			"--use-service-account-credentials=true",
			"--root-ca-file=" + cp.CAFile(),
			"--service-account-private-key-file=" + pkiFile(saKeyFile),
			"--cluster-signing-cert-file=" + cp.CAFile(),
			"--cluster-signing-key-file=" + pkiFile(pki.CAKeyFile),
			"--controllers=*,bootstrapsigner,tokencleaner",
			"--leader-elect=false",
			"--profiling=false",
		}
		if c.dualStack() {
			args = append(args, "--node-cidr-mask-size-ipv6="+strconv.Itoa(c.NodeCIDRMaskSize6))
		}
		args = append(args, kubeconfig("system:kube-controller-manager")...)
		return append(args, serving(ComponentControllerManager)...), true
	case ComponentScheduler:
		args := []string{c.Bins.Scheduler,
			"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(schedulerPort),
			"--leader-elect=false",
			"--profiling=false",
		}
		args = append(args, kubeconfig("system:kube-scheduler")...)
		return append(args, serving(ComponentScheduler)...), true
	}
	return nil, false
}

// spawn starts a component inside the namespace, its output appended to
// its log.
func (cp *ControlPlane) spawn(name string) (*cpProcess, error) {
	argv, _ := cp.args(name)
	logf, err := os.OpenFile(cp.logFile(name), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kube: start %s: %w", name, err)
	}
	defer logf.Close()
	fmt.Fprintf(logf, "--- %s podnet: starting %s\n", time.Now().Format(time.RFC3339), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = cp.cfg.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := startInNetNS(cp.cfg.NetNS, cmd, cp.cfg.Detach); err != nil {
		return nil, fmt.Errorf("kube: start %s: %w", name, err)
	}
	p := &cpProcess{PID: cmd.Process.Pid, done: make(chan struct{})}
	p.Start, _, _ = procStat(p.PID)
	go func() {
		_ = cmd.Wait() // reap it whenever it ends
		close(p.done)
	}()
	return p, nil
}

// waitHealthy waits until the component answers its health check, failing
// early when its process ends.
func (cp *ControlPlane) waitHealthy(ctx context.Context, name string, p *cpProcess) error {
	client, url, err := cp.healthCheck(name)
	if err != nil {
		return err
	}
	defer client.CloseIdleConnections()
	var last error
	for {
		if !p.alive() {
			return fmt.Errorf("kube: %s exited while starting; log %s:\n%s", name, cp.logFile(name), cp.logTail(name))
		}
		if last = probe(ctx, client, url); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube: %s not healthy (%v): %w; log %s:\n%s", name, last, ctx.Err(), cp.logFile(name), cp.logTail(name))
		case <-time.After(cpPollInterval):
		}
	}
}

// healthCheck is the client and URL of a component's health check, the
// connection made inside the namespace.
func (cp *ControlPlane) healthCheck(name string) (*http.Client, string, error) {
	tr := &http.Transport{DialContext: cp.dial, DisableKeepAlives: true}
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	if name == ComponentEtcd {
		return client, fmt.Sprintf("http://127.0.0.1:%d/health", etcdClientPort), nil
	}
	caPEM, err := os.ReadFile(cp.CAFile())
	if err != nil {
		return nil, "", fmt.Errorf("kube: %w", err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	tr.TLSClientConfig = &tls.Config{RootCAs: roots}
	switch name {
	case ComponentAPIServer:
		rc := cp.RESTConfig()
		cert, err := tls.LoadX509KeyPair(rc.CertFile, rc.KeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("kube: admin client certificate: %w", err)
		}
		tr.TLSClientConfig.Certificates = []tls.Certificate{cert}
		return client, cp.server() + "/readyz", nil
	case ComponentControllerManager:
		return client, fmt.Sprintf("https://127.0.0.1:%d/healthz", controllerManagerPort), nil
	default:
		return client, fmt.Sprintf("https://127.0.0.1:%d/healthz", schedulerPort), nil
	}
}

// probe GETs url: nil when it answers 200.
func probe(ctx context.Context, client *http.Client, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// waitServing waits until the cluster serves workloads: the kubernetes
// Service, and the default ServiceAccount and root CA ConfigMap the
// controller manager makes in every namespace.
func (cp *ControlPlane) waitServing(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cpStartTimeout)
		defer cancel()
	}
	client, err := cp.Client()
	if err != nil {
		return err
	}
	checks := []struct {
		what string
		get  func() error
	}{
		{"Service default/kubernetes", func() error {
			_, err := client.CoreV1().Services(metav1.NamespaceDefault).Get(ctx, "kubernetes", metav1.GetOptions{})
			return err
		}},
		{"ServiceAccount default/default", func() error {
			_, err := client.CoreV1().ServiceAccounts(metav1.NamespaceDefault).Get(ctx, "default", metav1.GetOptions{})
			return err
		}},
		{"ConfigMap kube-system/kube-root-ca.crt", func() error {
			_, err := client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "kube-root-ca.crt", metav1.GetOptions{})
			return err
		}},
	}
	for _, c := range checks {
		for err := c.get(); err != nil; err = c.get() {
			select {
			case <-ctx.Done():
				return fmt.Errorf("kube: control plane: waiting for %s (%v): %w", c.what, err, ctx.Err())
			case <-time.After(cpPollInterval):
			}
		}
	}
	return nil
}

// dial connects from inside the control plane's network namespace.
func (cp *ControlPlane) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	return netns.Dialer(cp.cfg.NetNS, nil)(ctx, network, addr)
}

// server is the API server's URL.
func (cp *ControlPlane) server() string {
	return "https://" + net.JoinHostPort(cp.cfg.IP.String(), strconv.Itoa(APIServerPort))
}

func (cp *ControlPlane) pkiDir() string  { return filepath.Join(cp.cfg.Dir, "pki") }
func (cp *ControlPlane) etcdDir() string { return filepath.Join(cp.cfg.Dir, "etcd") }
func (cp *ControlPlane) logDir() string  { return filepath.Join(cp.cfg.Dir, "logs") }

func (cp *ControlPlane) logFile(name string) string {
	return filepath.Join(cp.logDir(), name+".log")
}

// logTail is the end of a component's log, for errors.
func (cp *ControlPlane) logTail(name string) string {
	b, err := os.ReadFile(cp.logFile(name))
	if err != nil {
		return err.Error()
	}
	return lastLines(b, 15)
}

// save writes state.json.
func (cp *ControlPlane) save() error {
	cp.mu.Lock()
	defer cp.mu.Unlock()
	return cp.saveLocked()
}

func (cp *ControlPlane) saveLocked() error {
	b, err := json.MarshalIndent(cpState{Config: cp.cfg, Processes: cp.procs}, "", "  ")
	if err != nil {
		return fmt.Errorf("kube: control plane state: %w", err)
	}
	if _, err := atomicfile.Write(filepath.Join(cp.cfg.Dir, cpStateFile), append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("kube: control plane state: %w", err)
	}
	return nil
}

// alive tells whether the process runs: not exited, not a zombie, and its
// PID not reused by another process.
func (p *cpProcess) alive() bool {
	if p.done != nil {
		select {
		case <-p.done:
			return false
		default:
		}
	}
	start, st, ok := procStat(p.PID)
	return ok && st != 'Z' && start == p.Start
}

// terminate sends SIGTERM, then SIGKILL after cpStopGrace, and waits until
// the process is gone (reaped, when it is a child).
func (p *cpProcess) terminate() error {
	if !p.alive() {
		return p.reaped(cpStopGrace)
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if p.gone(cpStopGrace) {
		return p.reaped(cpStopGrace)
	}
	if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
		return err
	}
	if !p.gone(cpStopGrace) {
		return fmt.Errorf("process %d still runs after SIGKILL", p.PID)
	}
	return p.reaped(cpStopGrace)
}

// gone waits up to d for the process to end.
func (p *cpProcess) gone(d time.Duration) bool {
	deadline := time.Now().Add(d)
	for p.alive() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(cpPollInterval / 5)
	}
	return true
}

// reaped waits up to d for a child that ended to be reaped.
func (p *cpProcess) reaped(d time.Duration) error {
	if p.done == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(d):
		return fmt.Errorf("process %d ended but was not reaped", p.PID)
	}
}

// procStat reads a process's start time and state from /proc; false when
// there is no such process.
func procStat(pid int) (start uint64, cpState byte, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, 0, false
	}
	// pid (comm) state ppid … with starttime the 22nd field; comm may
	// hold spaces and parentheses, so count after its last ')'.
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return 0, 0, false
	}
	fields := strings.Fields(s[end+1:])
	if len(fields) < 20 {
		return 0, 0, false
	}
	start, err = strconv.ParseUint(fields[19], 10, 64)
	if err != nil {
		return 0, 0, false
	}
	return start, fields[0][0], true
}
