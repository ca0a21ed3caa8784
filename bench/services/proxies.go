package main

import (
	"bufio"
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

	"github.com/podnet/podnet/internal/netns"
)

// The compared proxies.
const (
	proxyPodnet   = "podnet"
	proxyNFTables = "kube-proxy nftables"
	proxyIPTables = "kube-proxy iptables"
)

// metricsAddr is where every proxy serves its metrics, inside its node.
const metricsAddr = "127.0.0.1:10249"

// proxyKind is how one proxy is started and observed.
type proxyKind struct {
	name string
	// syncMetric is the proxy's histogram of sync durations.
	syncMetric string
	// command is the proxy's command line for node n.
	command func(b *bench, n *node) (*exec.Cmd, error)
	// observer reads what the proxy programmed in n's kernel.
	observer func(n *node) observer
}

func proxyKinds(o options) []proxyKind {
	kubeProxy := func(mode string) func(b *bench, n *node) (*exec.Cmd, error) {
		return func(b *bench, n *node) (*exec.Cmd, error) {
			cfg, err := json.MarshalIndent(map[string]any{
				"apiVersion":       "kubeproxy.config.k8s.io/v1alpha1",
				"kind":             "KubeProxyConfiguration",
				"mode":             mode,
				"hostnameOverride": n.name,
				"clusterCIDR":      clusterCIDR,
				"clientConnection": map[string]any{"kubeconfig": b.api.kubeconfig},
				// Zero conntrack sizes and timeouts leave the global
				// conntrack sysctls alone (as internal/kube's nodes do).
				"conntrack": map[string]any{
					"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s",
					"udpTimeout": "0s", "udpStreamTimeout": "0s",
				},
				"oomScoreAdj":        0,
				"metricsBindAddress": metricsAddr,
				"healthzBindAddress": "127.0.0.1:10256",
			}, "", "  ")
			if err != nil {
				return nil, fmt.Errorf("kube-proxy config: %w", err)
			}
			path := filepath.Join(b.dir, n.name+"-kube-proxy.json")
			if err := os.WriteFile(path, cfg, 0o644); err != nil {
				return nil, fmt.Errorf("kube-proxy config: %w", err)
			}
			return exec.Command(b.api.bins.Proxy, "--config="+path), nil
		}
	}
	return []proxyKind{
		{
			name: proxyPodnet, syncMetric: "podnet_services_sync_duration_seconds",
			command: func(b *bench, n *node) (*exec.Cmd, error) {
				return exec.Command(o.proxyBin, "-kubeconfig", b.api.kubeconfig, "-node", n.name,
					"-underlay", "eth0", "-underlay-ip", n.ip.String(), "-cluster-cidr", clusterCIDR, "-metrics", metricsAddr), nil
			},
			observer: func(n *node) observer { return podnetObserver(n.ns.NS) },
		},
		{
			name: proxyNFTables, syncMetric: "kubeproxy_sync_proxy_rules_duration_seconds",
			command:  kubeProxy("nftables"),
			observer: func(n *node) observer { return kubeProxyNFTObserver(n.ns.NS) },
		},
		{
			name: proxyIPTables, syncMetric: "kubeproxy_sync_proxy_rules_duration_seconds",
			command:  kubeProxy("iptables"),
			observer: func(n *node) observer { return iptablesObserver{ns: n.ns.NS} },
		},
	}
}

// process is a running proxy, in its node's namespace.
type process struct {
	kind    proxyKind
	cmd     *exec.Cmd
	started time.Time
	ns      *netns.NS
	logPath string
	done    chan error
}

// start runs the proxy of kind on node n, its output in a log file.
func (b *bench) start(kind proxyKind, n *node) (*process, error) {
	cmd, err := kind.command(b, n)
	if err != nil {
		return nil, err
	}
	logPath := filepath.Join(b.dir, n.name+"-"+strings.ReplaceAll(kind.name, " ", "-")+".log")
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{kind: kind, cmd: cmd, ns: n.ns.NS, logPath: logPath, done: make(chan error, 1)}
	p.started = time.Now()
	if err := n.ns.Do(cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s: %w", kind.name, err)
	}
	go func() { p.done <- cmd.Wait() }()
	return p, nil
}

// exited is the proxy's exit, if it exited, with the end of its log.
func (p *process) exited() error {
	select {
	case err := <-p.done:
		p.done <- err
		return fmt.Errorf("%s exited (%v); its log ends:\n%s", p.kind.name, err, tail(p.logPath))
	default:
		return nil
	}
}

// stop ends the proxy (SIGTERM, then SIGKILL) and its children.
func (p *process) stop() error {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		<-p.done
	}
	return nil
}

// usage is a process's CPU time (its own and its waited-for children's:
// kube-proxy execs nft and iptables-restore) and memory.
type usage struct {
	CPU    time.Duration `json:"cpu"`
	RSS    int64         `json:"rssBytes"`
	MaxRSS int64         `json:"maxRSSBytes"`
}

// usage reads the proxy's /proc entries.
func (p *process) usage() (usage, error) {
	var u usage
	pid := p.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("%s: %w", p.kind.name, err)
	}
	// The fields after the command's closing parenthesis: utime, stime,
	// cutime, cstime are the 14th to 17th of the line.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 15 {
		return u, fmt.Errorf("%s: short /proc/%d/stat", p.kind.name, pid)
	}
	var ticks int64
	for _, v := range f[11:15] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return u, fmt.Errorf("%s: /proc/%d/stat: %w", p.kind.name, pid, err)
		}
		ticks += n
	}
	u.CPU = time.Duration(ticks) * time.Second / 100 // USER_HZ
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, fmt.Errorf("%s: %w", p.kind.name, err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		for key, dst := range map[string]*int64{"VmRSS:": &u.RSS, "VmHWM:": &u.MaxRSS} {
			if v, ok := strings.CutPrefix(line, key); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
				*dst = kb << 10
			}
		}
	}
	return u, nil
}

// syncs reads the proxy's sync histogram: the number of syncs and their
// total time.
func (p *process) syncs(ctx context.Context) (count int, total time.Duration, err error) {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return p.ns.DialContext(ctx, nil, network, addr)
		},
		DisableKeepAlives: true,
	}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+metricsAddr+"/metrics", nil)
	if err != nil {
		return 0, 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, 0, fmt.Errorf("%s metrics: %w", p.kind.name, err)
	}
	defer resp.Body.Close()
	return parseHistogram(resp.Body, p.kind.syncMetric)
}

// parseHistogram finds the _count and _sum of the histogram name in a
// Prometheus text exposition.
func parseHistogram(r io.Reader, name string) (count int, total time.Duration, err error) {
	found := false
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		v, perr := strconv.ParseFloat(f[1], 64)
		switch f[0] {
		case name + "_count":
			if perr == nil {
				count, found = int(v), true
			}
		case name + "_sum":
			if perr == nil {
				total = time.Duration(v * float64(time.Second))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return 0, 0, err
	}
	if !found {
		return 0, 0, errors.New("no " + name + " in the metrics")
	}
	return count, total, nil
}

// tail is the last lines of a log file.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
