package kube

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/netns"
	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

// TestControlPlane starts a control plane in a throwaway namespace and
// checks what the lab and the nodes rely on: readiness, the admin's and a
// node's identities and NodeRestriction, pod CIDR allocation, a component
// stopped and started again, and a stop that leaves no process.
func TestControlPlane(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a control plane in a network namespace of its own")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins := cpTestBinaries(ctx, t)
	ns, ip := cpTestNamespace(t)
	dir := t.TempDir()

	start := time.Now()
	cp, err := StartControlPlane(ctx, ControlPlaneConfig{
		Bins: bins, Dir: dir, NetNS: ns.Path(), IP: ip,
		ClusterCIDR: "10.244.0.0/16", NodeCIDRMaskSize: 24, ServiceCIDR: "10.96.0.0/16",
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	t.Logf("control plane started in %s", time.Since(start).Round(time.Millisecond))
	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("admin", func(t *testing.T) {
		if _, err := admin.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
		fromFile := cpTestClient(t, cp, cp.AdminKubeconfig())
		if _, err := fromFile.CoreV1().Namespaces().Get(ctx, metav1.NamespaceSystem, metav1.GetOptions{}); err != nil {
			t.Fatalf("admin kubeconfig: %v", err)
		}
		v, err := admin.Discovery().ServerVersion()
		if err != nil || v.GitVersion != Version {
			t.Errorf("server version %v, %v; want %s", v, err, Version)
		}
	})

	t.Run("node identity", func(t *testing.T) {
		path, err := cp.Kubeconfig("system:node:n1", "system:nodes")
		if err != nil {
			t.Fatal(err)
		}
		assertFileMode(t, path, 0o600)
		node := cpTestClient(t, cp, path)
		if _, err := node.CoreV1().Nodes().Create(ctx, cpTestNode("n1"), metav1.CreateOptions{}); err != nil {
			t.Fatalf("node n1 creating itself: %v", err)
		}
		if _, err := admin.CoreV1().Nodes().Create(ctx, cpTestNode("n2"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		patch := []byte(`{"metadata":{"labels":{"podnet.test/touched":"yes"}}}`)
		for _, tc := range []struct {
			what string
			err  error
		}{
			{"patch n1", cpTestPatchNode(ctx, node, "n1", patch)},
			{"patch n2", cpTestPatchNode(ctx, node, "n2", patch)},
			{"create n3", func() error {
				_, err := node.CoreV1().Nodes().Create(ctx, cpTestNode("n3"), metav1.CreateOptions{})
				return err
			}()},
		} {
			if want := tc.what == "patch n1"; (tc.err == nil) != want {
				t.Errorf("node n1: %s: %v, want allowed %v", tc.what, tc.err, want)
			} else if tc.err != nil && !apierrors.IsForbidden(tc.err) {
				t.Errorf("node n1: %s: %v, want Forbidden", tc.what, tc.err)
			}
		}
	})

	t.Run("pod CIDRs", func(t *testing.T) {
		if _, err := admin.CoreV1().Nodes().Create(ctx, cpTestNode("n4"), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		_, cluster, _ := net.ParseCIDR("10.244.0.0/16")
		var cidrs []string
		cpTestPoll(ctx, t, "pod CIDR of n4", func() error {
			n, err := admin.CoreV1().Nodes().Get(ctx, "n4", metav1.GetOptions{})
			if err != nil {
				return err
			}
			if cidrs = n.Spec.PodCIDRs; len(cidrs) == 0 {
				return errors.New("no spec.podCIDRs yet")
			}
			return nil
		})
		ip, subnet, err := net.ParseCIDR(cidrs[0])
		if ones, _ := subnet.Mask.Size(); err != nil || ones != 24 || !cluster.Contains(ip) {
			t.Errorf("n4's pod CIDRs %v: want a /24 of %s", cidrs, cluster)
		}
	})

	t.Run("apiserver restart", func(t *testing.T) {
		start := time.Now()
		if err := cp.StopComponent(ComponentAPIServer); err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver stopped in %s", time.Since(start).Round(time.Millisecond))
		if _, err := admin.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err == nil {
			t.Fatal("the API answers with kube-apiserver stopped")
		}
		start = time.Now()
		if err := cp.StartComponent(ctx, ComponentAPIServer); err != nil {
			t.Fatal(err)
		}
		t.Logf("kube-apiserver ready again in %s", time.Since(start).Round(time.Millisecond))
		if _, err := admin.CoreV1().Namespaces().List(ctx, metav1.ListOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	var reopened *ControlPlane
	t.Run("reopen", func(t *testing.T) {
		opened, err := OpenControlPlane(dir)
		if err != nil {
			t.Fatal(err)
		}
		if opened.Config().IP.String() != ip.String() || opened.AdminKubeconfig() != cp.AdminKubeconfig() {
			t.Errorf("reopened %+v, want the started one's config", opened.Config())
		}
		if _, err := StartControlPlane(ctx, opened.Config()); err == nil || !strings.Contains(err.Error(), "still runs") {
			t.Errorf("a second start in the running control plane's directory: %v, want an error", err)
		}
		// Stopping through the reopened state, which knows the processes
		// by PID only, as the lab does in a later command.
		if err := opened.StopComponent(ComponentScheduler); err != nil {
			t.Fatal(err)
		}
		if err := opened.StartComponent(ctx, ComponentScheduler); err != nil {
			t.Fatal(err)
		}
		// The scheduler now is the reopened state's to stop.
		reopened = opened
	})
	if reopened != nil {
		t.Cleanup(func() { reopened.Stop() })
	}

	pids := cpTestPIDs(t, dir)
	start = time.Now()
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	t.Logf("control plane stopped in %s", time.Since(start).Round(time.Millisecond))
	if reopened != nil {
		if err := reopened.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	for name, pid := range pids {
		if _, state, ok := procStat(pid); ok && state != 'Z' {
			t.Errorf("%s (pid %d) still runs after Stop", name, pid)
		}
	}
}

// cpTestBinaries builds (or finds in the cache) the binaries.
func cpTestBinaries(ctx context.Context, t *testing.T) Binaries {
	t.Helper()
	start := time.Now()
	bins, err := Build(ctx, BuildConfig{Out: cpTestWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("binaries ready in %s", time.Since(start).Round(time.Millisecond))
	return bins
}

// cpTestNamespace creates a network namespace, removed when the test
// ends, with an address for the API server on a veth pair inside it (the
// kernel may lack the dummy link type).
func cpTestNamespace(t *testing.T) (*netns.Temp, net.IP) {
	t.Helper()
	ns, err := netns.NewTemp("kcp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	link := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "cp0"}, PeerName: "cp1"}
	if err := h.LinkAdd(link); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := h.AddrAdd(link, addr); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"cp0", "cp1"} {
		if err := h.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			t.Fatal(err)
		}
	}
	return ns, addr.IP
}

// cpTestClient is a clientset of a kubeconfig file, dialing inside the
// control plane's namespace.
func cpTestClient(t *testing.T, cp *ControlPlane, kubeconfig string) kubernetes.Interface {
	t.Helper()
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dial = cp.dial
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func cpTestNode(name string) *corev1.Node {
	return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func cpTestPatchNode(ctx context.Context, c kubernetes.Interface, name string, patch []byte) error {
	_, err := c.CoreV1().Nodes().Patch(ctx, name, types.StrategicMergePatchType, patch, metav1.PatchOptions{})
	return err
}

// cpTestPoll calls f until it succeeds, failing the test at ctx's end.
func cpTestPoll(ctx context.Context, t *testing.T, what string, f func() error) {
	t.Helper()
	for {
		err := f()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: %v", what, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// cpTestPIDs are the PIDs state.json records, by component.
func cpTestPIDs(t *testing.T, dir string) map[string]int {
	t.Helper()
	opened, err := OpenControlPlane(dir)
	if err != nil {
		t.Fatal(err)
	}
	pids := map[string]int{}
	for name, p := range opened.procs {
		pids[name] = p.PID
	}
	if want := slices.Sorted(slices.Values(componentOrder)); len(pids) != len(want) {
		t.Errorf("state.json records %v, want %v", pids, want)
	}
	if _, err := os.Stat(filepath.Join(dir, "logs", ComponentAPIServer+".log")); err != nil {
		t.Error(err)
	}
	return pids
}

// cpTestWriter writes to the test log.
type cpTestWriter struct{ t *testing.T }

func (w cpTestWriter) Write(b []byte) (int, error) {
	w.t.Log(string(b))
	return len(b), nil
}

// TestControlPlaneFamilies checks the control plane's configuration of
// one family or two (dual-stack, as kubeadm makes it): what validate
// accepts, and the ranges the API server and the controller manager get.
func TestControlPlaneFamilies(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: validate opens the control plane's network namespace, which must be one of its own")
	}
	ns, ip := cpTestNamespace(t)
	dir := t.TempDir()
	var bins Binaries
	for i, p := range []*string{&bins.APIServer, &bins.ControllerManager, &bins.Scheduler, &bins.Kubelet, &bins.Proxy, &bins.Kubectl, &bins.Etcd} {
		*p = filepath.Join(dir, fmt.Sprintf("component%d", i))
		if err := os.WriteFile(*p, nil, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	v4 := ControlPlaneConfig{
		Bins: bins, Dir: dir, NetNS: ns.Path(), IP: ip,
		ClusterCIDR: "10.244.0.0/16", NodeCIDRMaskSize: 24, ServiceCIDR: "10.96.0.0/16",
	}
	dual := v4
	dual.ClusterCIDR6, dual.NodeCIDRMaskSize6, dual.ServiceCIDR6 = "fd00:10:244::/56", 64, "fd00:10:96::/112"
	for _, tc := range []struct {
		name   string
		cfg    ControlPlaneConfig
		change func(*ControlPlaneConfig)
		err    string // substring; empty: valid
		// services is --service-cluster-ip-range, cidrs --cluster-cidr,
		// masks the node CIDR mask size flags (valid configurations).
		services, cidrs string
		masks           []string
	}{
		{name: "IPv4", cfg: v4, services: "10.96.0.0/16", cidrs: "10.244.0.0/16", masks: []string{"--node-cidr-mask-size-ipv4=24"}},
		{name: "dual-stack", cfg: dual, services: "10.96.0.0/16,fd00:10:96::/112", cidrs: "10.244.0.0/16,fd00:10:244::/56",
			masks: []string{"--node-cidr-mask-size-ipv4=24", "--node-cidr-mask-size-ipv6=64"}},
		{name: "IPv6 mask without IPv6 CIDR", cfg: v4, change: func(c *ControlPlaneConfig) { c.NodeCIDRMaskSize6 = 64 }, err: "without an IPv6 cluster CIDR"},
		{name: "IPv6 Service range without IPv6 CIDR", cfg: v4, change: func(c *ControlPlaneConfig) { c.ServiceCIDR6 = "fd00:10:96::/112" }, err: "without an IPv6 cluster CIDR"},
		{name: "IPv6 as the IPv4 cluster CIDR", cfg: v4, change: func(c *ControlPlaneConfig) { c.ClusterCIDR = "fd00:10:244::/56" }, err: "not an IPv4 prefix"},
		{name: "IPv4 as the IPv6 cluster CIDR", cfg: dual, change: func(c *ControlPlaneConfig) { c.ClusterCIDR6 = "10.245.0.0/16" }, err: "not an IPv6 prefix"},
		{name: "IPv4 as the IPv6 Service range", cfg: dual, change: func(c *ControlPlaneConfig) { c.ServiceCIDR6 = "10.97.0.0/16" }, err: "not an IPv6 prefix"},
		{name: "IPv6 Service range missing", cfg: dual, change: func(c *ControlPlaneConfig) { c.ServiceCIDR6 = "" }, err: "IPv6 service CIDR"},
		{name: "IPv6 mask too short", cfg: dual, change: func(c *ControlPlaneConfig) { c.NodeCIDRMaskSize6 = 48 }, err: "does not fit cluster CIDR fd00:10:244::/56"},
		{name: "IPv6 mask missing", cfg: dual, change: func(c *ControlPlaneConfig) { c.NodeCIDRMaskSize6 = 0 }, err: "node CIDR mask size 0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			if tc.change != nil {
				tc.change(&cfg)
			}
			err := cfg.validate()
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("validate: %v", err)
			case tc.err != "":
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("validate: %v, want an error with %q", err, tc.err)
				}
				return
			}
			cp := &ControlPlane{cfg: cfg}
			api, _ := cp.args(ComponentAPIServer)
			kcm, _ := cp.args(ComponentControllerManager)
			for _, want := range []struct {
				args []string
				flag string
			}{
				{api, "--service-cluster-ip-range=" + tc.services},
				{api, "--advertise-address=" + ip.String()},
				{kcm, "--service-cluster-ip-range=" + tc.services},
				{kcm, "--cluster-cidr=" + tc.cidrs},
			} {
				if !slices.Contains(want.args, want.flag) {
					t.Errorf("no %s in %v", want.flag, want.args)
				}
			}
			var masks []string
			for _, a := range kcm {
				if strings.HasPrefix(a, "--node-cidr-mask-size") {
					masks = append(masks, a)
				}
			}
			if !slices.Equal(masks, tc.masks) {
				t.Errorf("kube-controller-manager's mask sizes %v, want %v", masks, tc.masks)
			}
		})
	}
}
