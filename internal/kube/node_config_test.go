package kube

import (
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func validNodeConfig() NodeConfig {
	return NodeConfig{
		Bins: Binaries{Kubelet: "/bin/kubelet", Proxy: "/bin/kube-proxy"},
		Name: "n1", NetNS: "/run/netns/n1", IP: net.ParseIP("10.0.0.2"), Dir: "/tmp/node",
		Kubeconfig: "/cp/kubelet.kubeconfig", ProxyKubeconfig: "/cp/proxy.kubeconfig", CAFile: "/cp/ca.crt",
		ClusterCIDR: "10.244.0.0/16", Supervisor: []string{"/bin/podnet", "kube-node"},
	}
}

func TestNodeConfigValidate(t *testing.T) {
	for _, tc := range []struct {
		name   string
		change func(*NodeConfig)
		want   string // "" for valid
	}{
		{"valid", func(*NodeConfig) {}, ""},
		{"standalone", func(c *NodeConfig) { c.Kubeconfig, c.ProxyKubeconfig, c.Bins.Proxy = "", "", "" }, ""},
		{"name not a label", func(c *NodeConfig) { c.Name = "N_1" }, "not a DNS label"},
		{"empty name", func(c *NodeConfig) { c.Name = "" }, "not a DNS label"},
		{"no netns", func(c *NodeConfig) { c.NetNS = "" }, "no network namespace"},
		{"no IP", func(c *NodeConfig) { c.IP = nil }, "need a routable address"},
		{"loopback IP", func(c *NodeConfig) { c.IP = net.IPv4(127, 0, 0, 1) }, "need a routable address"},
		{"relative dir", func(c *NodeConfig) { c.Dir = "node" }, "clean absolute path"},
		{"root dir", func(c *NodeConfig) { c.Dir = "/" }, "clean absolute path"},
		{"unclean dir", func(c *NodeConfig) { c.Dir = "/tmp/../node" }, "clean absolute path"},
		{"dir too long for the socket", func(c *NodeConfig) { c.Dir = "/" + strings.Repeat("d", 80) }, "too long for containerd's socket"},
		{"no kubelet", func(c *NodeConfig) { c.Bins.Kubelet = "" }, "no kubelet binary"},
		{"proxy without binary", func(c *NodeConfig) { c.Bins.Proxy = "" }, "no kube-proxy binary"},
		{"no supervisor", func(c *NodeConfig) { c.Supervisor = nil }, "no supervisor command"},
		{"bad cluster CIDR", func(c *NodeConfig) { c.ClusterCIDR = "10.244.0.0" }, "cluster CIDR"},
		{"dual-stack", func(c *NodeConfig) { c.IP6, c.ClusterCIDR6 = net.ParseIP("fd00:100:1::2"), "fd00:10:244::/56" }, ""},
		{"IPv4 as the IPv6 address", func(c *NodeConfig) { c.IP6 = net.ParseIP("10.0.0.3") }, "need a routable IPv6 address"},
		{"link-local IPv6 address", func(c *NodeConfig) { c.IP6 = net.ParseIP("fe80::2") }, "need a routable IPv6 address"},
		{"IPv4 as the IPv6 cluster CIDR", func(c *NodeConfig) { c.ClusterCIDR6 = "10.245.0.0/16" }, "not an IPv6 prefix"},
		{"nftables proxy", func(c *NodeConfig) { c.ProxyMode = ProxyNFTables }, ""},
		{"unknown proxy mode", func(c *NodeConfig) { c.ProxyMode = "ipvs" }, `kube-proxy mode "ipvs"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validNodeConfig()
			tc.change(&c)
			err := c.validate()
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("validate: %v", err)
			case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
				t.Errorf("validate: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestNodeComponentConfigs(t *testing.T) {
	for _, tc := range []struct {
		name       string
		change     func(*NodeConfig)
		kubeconfig bool
		static     bool
		dns        string
		nodeIP     string
	}{
		{name: "cluster", change: func(*NodeConfig) {}, kubeconfig: true, nodeIP: "10.0.0.2"},
		{name: "cluster DNS", change: func(c *NodeConfig) { c.ClusterDNS = net.ParseIP("10.96.0.10") }, kubeconfig: true, dns: "10.96.0.10", nodeIP: "10.0.0.2"},
		{name: "standalone", change: func(c *NodeConfig) { c.Kubeconfig, c.StaticPodDir = "", "/tmp/manifests" }, static: true, nodeIP: "10.0.0.2"},
		{name: "dual-stack", change: func(c *NodeConfig) { c.IP6 = net.ParseIP("fd00:100:1::2") }, kubeconfig: true, nodeIP: "10.0.0.2,fd00:100:1::2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := validNodeConfig()
			tc.change(&c)
			args := c.kubeletArgs()
			if got := slices.Contains(args, "--kubeconfig="+c.Kubeconfig); got != tc.kubeconfig {
				t.Errorf("kubelet args %v: --kubeconfig %v, want %v", args, got, tc.kubeconfig)
			}
			for _, want := range []string{"--hostname-override=n1", "--node-ip=" + tc.nodeIP, "--config=/tmp/node/config/kubelet.json"} {
				if !slices.Contains(args, want) {
					t.Errorf("kubelet args %v: no %s", args, want)
				}
			}
			b, err := c.kubeletConfig()
			if err != nil {
				t.Fatal(err)
			}
			var kc map[string]any
			if err := json.Unmarshal(b, &kc); err != nil {
				t.Fatal(err)
			}
			for key, want := range map[string]any{
				"cgroupDriver":                "cgroupfs",
				"cgroupRoot":                  c.cgroupRoot(),
				"failSwapOn":                  false,
				"protectKernelDefaults":       false,
				"imageGCHighThresholdPercent": 100.0,
				"containerRuntimeEndpoint":    "unix:///run/containerd/containerd.sock",
				"maxPods":                     110.0,
				// Ephemeral-storage limits enforced; the eviction manager
				// has its file system stats.
				"localStorageCapacityIsolation": true,
			} {
				if kc[key] != want {
					t.Errorf("kubelet %s: %v, want %v", key, kc[key], want)
				}
			}
			if _, ok := kc["staticPodPath"]; ok != tc.static {
				t.Errorf("kubelet staticPodPath set %v, want %v", ok, tc.static)
			}
			var dns, domain any
			if tc.dns != "" {
				dns, domain = []any{tc.dns}, ClusterDomain
			}
			if !reflect.DeepEqual(kc["clusterDNS"], dns) || kc["clusterDomain"] != domain {
				t.Errorf("kubelet clusterDNS %v, clusterDomain %v; want %v, %v", kc["clusterDNS"], kc["clusterDomain"], dns, domain)
			}
		})
	}

	for _, tc := range []struct {
		mode  ProxyMode
		want  string
		cidr6 string
		cidrs string // the config's clusterCIDR
	}{
		{"", "iptables", "", "10.244.0.0/16"},
		{ProxyIPTables, "iptables", "", "10.244.0.0/16"},
		{ProxyNFTables, "nftables", "", "10.244.0.0/16"},
		{ProxyNFTables, "nftables", "fd00:10:244::/56", "10.244.0.0/16,fd00:10:244::/56"},
	} {
		c := validNodeConfig()
		c.ProxyMode, c.ClusterCIDR6 = tc.mode, tc.cidr6
		b, err := c.proxyConfig()
		if err != nil {
			t.Fatal(err)
		}
		var pc struct {
			Mode             string
			HostnameOverride string
			ClusterCIDR      string
			ClientConnection struct{ Kubeconfig string }
			Conntrack        map[string]any
		}
		if err := json.Unmarshal(b, &pc); err != nil {
			t.Fatal(err)
		}
		if pc.Mode != tc.want || pc.HostnameOverride != "n1" || pc.ClusterCIDR != tc.cidrs || pc.ClientConnection.Kubeconfig != c.ProxyKubeconfig {
			t.Errorf("kube-proxy config of mode %q: %+v, want mode %s", tc.mode, pc, tc.want)
		}
		for k, v := range pc.Conntrack {
			if v != 0.0 && v != "0s" {
				t.Errorf("kube-proxy conntrack %s = %v: would change a global sysctl", k, v)
			}
		}
	}
}

func TestParseNFTVersion(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want [3]int
		err  bool
	}{
		{"nftables v1.0.6 (Lester Gooch #5)\n", [3]int{1, 0, 6}, false},
		{"nftables v0.9.8 (E.D.S.)", [3]int{0, 9, 8}, false},
		{"nftables v1.1 (Commodore Bullmoose)", [3]int{1, 1, 0}, false},
		{"usage: nft", [3]int{}, true},
	} {
		got, err := parseNFTVersion(tc.out)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("parseNFTVersion(%q) = %v, %v; want %v (error: %v)", tc.out, got, err, tc.want, tc.err)
		}
	}
}

func TestCgroupRootDistinct(t *testing.T) {
	a, b := validNodeConfig(), validNodeConfig()
	b.Dir = "/tmp/other"
	if a.cgroupRoot() == b.cgroupRoot() {
		t.Errorf("nodes n1 of two directories share cgroupRoot %s", a.cgroupRoot())
	}
	if !strings.HasPrefix(a.cgroupRoot(), "/podnet-n1-") {
		t.Errorf("cgroupRoot %s", a.cgroupRoot())
	}
}

func TestContainerdConfigTOML(t *testing.T) {
	ok := ContainerdConfig{Root: "/r", State: "/s", Socket: "/s/sock", SandboxImage: PauseImage,
		Snapshotter: SnapshotterOverlay, Runc: "/usr/sbin/runc", CNIBinDir: "/opt/cni/bin", CNIConfDir: "/etc/cni/net.d"}
	for _, tc := range []struct {
		name   string
		change func(*ContainerdConfig)
		want   []string // substrings of the TOML; nil: an error
	}{
		{"overlay", func(*ContainerdConfig) {}, []string{`snapshotter = "overlayfs"`, "restrict_oom_score_adj = true", "max_conf_num = 1", `sandbox_image = "registry.k8s.io/pause:3.10"`}},
		{"native", func(c *ContainerdConfig) { c.Snapshotter = SnapshotterNative }, []string{`snapshotter = "native"`, `"io.containerd.snapshotter.v1.overlayfs"`}},
		{"metrics", func(c *ContainerdConfig) { c.MetricsAddress = ContainerdMetricsAddress }, []string{"[metrics]\n  address = \"127.0.0.1:1338\""}},
		{"unknown snapshotter", func(c *ContainerdConfig) { c.Snapshotter = "zfs" }, nil},
		{"no socket", func(c *ContainerdConfig) { c.Socket = "" }, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := ok
			tc.change(&c)
			s, err := c.TOML()
			if tc.want == nil {
				if err == nil {
					t.Errorf("TOML: no error for %+v", c)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("TOML lacks %s:\n%s", w, s)
				}
			}
		})
	}
}

func TestParseProcStat(t *testing.T) {
	tail := strings.Repeat(" 0", 17) + " 4242 0 0" // fields 5–21, starttime (22), …
	for _, tc := range []struct {
		in   string
		want procInfo
		ok   bool
	}{
		{"12 (kubelet) S 7" + tail, procInfo{pid: 12, ppid: 7, comm: "kubelet", state: 'S', start: 4242}, true},
		{"12 (a (b) c) Z 1" + tail, procInfo{pid: 12, ppid: 1, comm: "a (b) c", state: 'Z', start: 4242}, true},
		{"12 kubelet S 7" + tail, procInfo{}, false},
		{"12 (kubelet) S 7", procInfo{}, false},
		{"12 (kubelet) S x" + tail, procInfo{}, false},
	} {
		got, ok := parseProcStat(12, tc.in)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseProcStat(%q) = %+v, %v; want %+v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

func TestMountsUnder(t *testing.T) {
	info := filepath.Join(t.TempDir(), "mountinfo")
	lines := []string{
		`21 26 0:20 / /proc rw,relatime - proc proc rw`,
		`40 30 0:37 / /tmp/n rw shared:1 - ext4 /dev/vda rw`,
		`41 40 0:37 / /tmp/n/fs/run\040x rw - tmpfs tmpfs rw`,
		`42 40 0:37 / /tmp/node rw - tmpfs tmpfs rw`,
		`43 26 0:4 net:[1] /run/netns/a rw - nsfs nsfs rw`,
	}
	if err := os.WriteFile(info, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := MountsUnder(info, "/tmp/n")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"/tmp/n/fs/run x", "/tmp/n"}; !slices.Equal(got, want) {
		t.Errorf("MountsUnder = %q, want %q", got, want)
	}
	mounts, err := readMountinfo(info)
	if err != nil {
		t.Fatal(err)
	}
	if m := mounts[4]; m.fstype != "nsfs" || m.point != "/run/netns/a" {
		t.Errorf("mount %+v", m)
	}
	if _, err := MountsUnder(filepath.Join(t.TempDir(), "none"), "/"); err == nil {
		t.Error("MountsUnder of a missing file: no error")
	}
}

func TestPodImages(t *testing.T) {
	if _, err := os.Stat(BusyboxBinary); err != nil {
		t.Fatalf("%v: apt-get install busybox-static (.ci/deps)", err)
	}
	paths, err := PodImages(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(paths) != 2 {
		t.Fatalf("PodImages = %v, want the pause and busybox archives", paths)
	}
	for _, p := range paths {
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("archive %s: %v", p, err)
		}
	}
	if err := checkStatic(BusyboxBinary); err != nil {
		t.Errorf("checkStatic(busybox): %v", err)
	}
	// Debian's coreutils are dynamically linked.
	if err := checkStatic("/bin/ls"); err == nil || !strings.Contains(err.Error(), "dynamically linked") {
		t.Errorf("checkStatic(/bin/ls): %v, want dynamically linked", err)
	}
}
