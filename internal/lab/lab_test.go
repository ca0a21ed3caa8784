package lab

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/kube"
)

func TestSpecValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		spec Spec
		err  string // substring; empty: valid
	}{
		{"defaults", Spec{}, ""},
		{"kubernetes", Spec{Kubernetes: true, Nodes: 2, PodsPerNode: 3}, ""},
		{"kubernetes on segments", Spec{Kubernetes: true, Segments: 2, Backend: cluster.VXLAN}, ""},
		{"kubernetes dual-stack", Spec{Kubernetes: true, IPv6: true}, ""},
		{"too many nodes", Spec{Nodes: maxNodes + 1}, "nodes must be"},
		{"negative pods", Spec{PodsPerNode: -1}, "pods per node"},
		{"host-gw across segments", Spec{Segments: 2, Backend: cluster.HostGW}, "host-gw"},
		{"unknown backend", Spec{Backend: "wireguard"}, "unknown backend"},
		{"kubernetes, kube-proxy nftables", Spec{Kubernetes: true, KubeProxy: kube.ProxyNFTables}, ""},
		{"kubernetes, no kube-proxy", Spec{Kubernetes: true, KubeProxy: KubeProxyNone}, ""},
		{"kube-proxy without kubernetes", Spec{KubeProxy: kube.ProxyIPTables}, "only the Kubernetes lab"},
		{"unknown kube-proxy mode", Spec{Kubernetes: true, KubeProxy: "ipvs"}, `kube-proxy "ipvs"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := tc.spec
			s.Defaults()
			err := s.Validate()
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("Validate: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("Validate: %v, want an error with %q", err, tc.err)
			}
		})
	}
}

// fakeBins writes three files standing for the lab's programs.
func fakeBins(t *testing.T) Binaries {
	t.Helper()
	dir := t.TempDir()
	b := Binaries{Agent: filepath.Join(dir, "podnet-agent"), CNI: filepath.Join(dir, "podnet-cni"), CLI: filepath.Join(dir, "podnet")}
	for _, p := range []string{b.Agent, b.CNI, b.CLI} {
		if err := os.WriteFile(p, []byte("#!/bin/true\n"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

func TestNewBinaries(t *testing.T) {
	bins := fakeBins(t)
	noCLI := bins
	noCLI.CLI = ""
	for _, tc := range []struct {
		name string
		spec Spec
		bins Binaries
		err  string
	}{
		{"plain without the CLI", Spec{}, noCLI, ""},
		{"kubernetes without the CLI", Spec{Kubernetes: true}, noCLI, "no podnet given"},
		{"kubernetes", Spec{Kubernetes: true}, bins, ""},
		{"missing agent", Spec{}, Binaries{Agent: "/nonexistent/podnet-agent", CNI: bins.CNI}, "lab binary podnet-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(t.TempDir(), "t", tc.spec, tc.bins, nil)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("New: %v, want an error with %q", err, tc.err)
			}
		})
	}
}

// TestKubeStateRoundTrip checks that what the Kubernetes mode records
// (Down's way back to everything it started) survives Open.
func TestKubeStateRoundTrip(t *testing.T) {
	base := t.TempDir()
	l, err := New(base, "rt", Spec{Kubernetes: true}, fakeBins(t), nil)
	if err != nil {
		t.Fatal(err)
	}
	ks := &KubeState{
		NS: l.nsName(cpRole), IP: segmentIP(1, cpHost).String(), Dir: controlPlaneDir(l.Dir),
		Bins:   kube.Binaries{APIServer: "/c/kube-apiserver", Kubelet: "/c/kubelet", Kubectl: "/c/kubectl", Etcd: "/c/etcd"},
		Images: []string{"/i/pause.tar", "/i/podnet.tar"},
		Port:   40123,
	}
	n := l.newNode()
	if err := l.update(func() { l.Kube = ks; l.Nodes = append(l.Nodes, n) }); err != nil {
		t.Fatal(err)
	}
	o, err := Open(base, "rt", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(o.Kube, ks) || !o.Spec.Kubernetes || o.Bins != l.Bins || !reflect.DeepEqual(o.Nodes, l.Nodes) {
		t.Fatalf("reopened state differs:\n got %+v %+v %+v\nwant %+v %+v %+v", o.Kube, o.Spec, o.Bins, ks, l.Spec, l.Bins)
	}
	if o.Kube.IP != "10.100.1.250" || n.IP == o.Kube.IP {
		t.Fatalf("control plane at %s, node at %s", o.Kube.IP, n.IP)
	}
}

// TestResolveKubeProxy checks the Kubernetes lab's kube-proxy: the one
// asked for; left empty, none when podnet's manifest turns its own
// service proxy on, else iptables; none refused when podnet has no
// service proxy.
func TestResolveKubeProxy(t *testing.T) {
	present, on, err := podnetServiceProxy()
	if err != nil {
		t.Fatal(err)
	}
	def := kube.ProxyIPTables
	if on {
		def = KubeProxyNone
	}
	noneErr := ""
	if !present {
		noneErr = "no service proxy"
	}
	for _, tc := range []struct {
		spec Spec
		want kube.ProxyMode
		err  string
	}{
		{Spec{}, "", ""},
		{Spec{Kubernetes: true}, def, ""},
		{Spec{Kubernetes: true, KubeProxy: kube.ProxyNFTables}, kube.ProxyNFTables, ""},
		{Spec{Kubernetes: true, KubeProxy: kube.ProxyIPTables}, kube.ProxyIPTables, ""},
		{Spec{Kubernetes: true, KubeProxy: KubeProxyNone}, KubeProxyNone, noneErr},
	} {
		s := tc.spec
		err := s.resolveKubeProxy()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%+v: %v", tc.spec, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%+v: %v, want an error with %q", tc.spec, err, tc.err)
		case err == nil && s.KubeProxy != tc.want:
			t.Errorf("%+v: kube-proxy %q, want %q (manifest's service proxy present %v, on %v)", tc.spec, s.KubeProxy, tc.want, present, on)
		}
	}
}

// TestPodnetManifest checks that the lab applies deploy/podnet.yaml as
// shipped but for the ConfigMap's cluster CIDR, subnet size and backend.
func TestPodnetManifest(t *testing.T) {
	present, _, err := podnetServiceProxy()
	if err != nil {
		t.Fatal(err)
	}
	for _, proxy := range []kube.ProxyMode{kube.ProxyIPTables, KubeProxyNone} {
		for _, v6 := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s ipv6=%v", proxy, v6), func(t *testing.T) { testPodnetManifest(t, proxy, v6, present) })
		}
	}
}

// testPodnetManifest checks the manifest of a lab with the given
// kube-proxy: podnet's service proxy (when its manifest has the option)
// is on exactly when no kube-proxy runs; a dual-stack lab's config has
// the IPv6 cluster CIDR and subnet size too.
func testPodnetManifest(t *testing.T, proxy kube.ProxyMode, v6, present bool) {
	l := &Lab{State: State{Spec: Spec{Kubernetes: true, Backend: cluster.VXLAN, KubeProxy: proxy, IPv6: v6}}}
	b, err := l.podnetManifest()
	if err != nil {
		t.Fatal(err)
	}
	var list struct {
		Kind  string
		Items []map[string]any
	}
	if err := json.Unmarshal(b, &list); err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, it := range list.Items {
		kinds[it["kind"].(string)]++
		switch it["kind"] {
		case "ConfigMap":
			data := it["data"].(map[string]any)
			if it["metadata"].(map[string]any)["name"] == "kubernetes-services-endpoint" {
				kinds["endpoint ConfigMap"]++
				if data["KUBERNETES_SERVICE_HOST"] != segmentIP(1, cpHost).String() || data["KUBERNETES_SERVICE_PORT"] != "6443" {
					t.Errorf("kubernetes-services-endpoint = %v, want the API server's own address", data)
				}
				continue
			}
			var cfg map[string]any
			if err := yaml.Unmarshal([]byte(data["config.yaml"].(string)), &cfg); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"cluster-cidr": clusterCIDR, "node-subnet-size": float64(nodeCIDRMask), "backend": "vxlan", "datastore": "kubernetes", "listen": "127.0.0.1:9099",
				"cluster-cidr6": nil, "node-subnet-size6": nil}
			if v6 {
				want["cluster-cidr6"], want["node-subnet-size6"] = clusterCIDR6, float64(subnetSize6)
			}
			if present {
				want[serviceProxyKey] = proxy == KubeProxyNone
			} else if _, ok := cfg[serviceProxyKey]; ok {
				t.Errorf("config %s set, but podnet's manifest has no such option", serviceProxyKey)
			}
			for k, v := range want {
				if cfg[k] != v {
					t.Errorf("config %s = %v, want %v", k, cfg[k], v)
				}
			}
		case "DaemonSet":
			c := it["spec"].(map[string]any)["template"].(map[string]any)["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
			if c["image"] != deploy.Ref || c["imagePullPolicy"] != "IfNotPresent" {
				t.Errorf("agent container runs %v (%v), want %s (IfNotPresent)", c["image"], c["imagePullPolicy"], deploy.Ref)
			}
		}
	}
	docs := strings.Count(string(deploy.Manifest), "\n---\n")
	endpoint := 0
	if proxy == KubeProxyNone {
		endpoint = 1 // the API server's address, for the agent
	}
	if list.Kind != "List" || len(list.Items) != docs+endpoint || kinds["ConfigMap"] != 1+endpoint || kinds["endpoint ConfigMap"] != endpoint || kinds["DaemonSet"] != 1 {
		t.Fatalf("list %s of %d items %v, want the manifest's %d documents and %d endpoint ConfigMap", list.Kind, len(list.Items), kinds, docs, endpoint)
	}
}

// TestCleanupManifest checks that the lab's podnet uninstall runs with
// the lab's configuration: its ConfigMap's config.yaml is the one the lab
// installs podnet with (dual-stack or not), its other objects as shipped.
func TestCleanupManifest(t *testing.T) {
	for _, v6 := range []bool{false, true} {
		t.Run(fmt.Sprintf("ipv6=%v", v6), func(t *testing.T) {
			l := &Lab{State: State{Spec: Spec{Kubernetes: true, Backend: cluster.Auto, KubeProxy: KubeProxyNone, IPv6: v6}}}
			cleanup, err := l.CleanupManifest()
			if err != nil {
				t.Fatal(err)
			}
			items, err := manifestItems(cleanup, "cleanup")
			if err != nil {
				t.Fatal(err)
			}
			shipped, err := manifestItems(deploy.CleanupManifest, "deploy/podnet-cleanup.yaml")
			if err != nil {
				t.Fatal(err)
			}
			if len(items) != len(shipped) {
				t.Fatalf("%d objects, the shipped cleanup has %d", len(items), len(shipped))
			}
			install, err := l.podnetManifest()
			if err != nil {
				t.Fatal(err)
			}
			var list struct{ Items []map[string]any }
			if err := json.Unmarshal(install, &list); err != nil {
				t.Fatal(err)
			}
			configs := func(items []map[string]any) []map[string]any {
				var cfgs []map[string]any
				for _, it := range items {
					if it["kind"] == "ConfigMap" && it["metadata"].(map[string]any)["name"] == "podnet-config" {
						cfg, err := configOf(it)
						if err != nil {
							t.Fatal(err)
						}
						cfgs = append(cfgs, cfg)
					}
				}
				return cfgs
			}
			got, want := configs(items), configs(list.Items)
			if len(got) != 1 || len(want) != 1 || !reflect.DeepEqual(got[0], want[0]) {
				t.Fatalf("the cleanup's podnet-config %v, the install's %v", got, want)
			}
			if _, ok := got[0]["cluster-cidr6"]; ok != v6 {
				t.Errorf("the cleanup's config has cluster-cidr6: %v, want %v", ok, v6)
			}
		})
	}
}

// TestReportPrintServices checks the Kubernetes matrix's Service
// columns: each pod's ClusterIP cell, the outside host's NodePort row,
// and that a failed Service probe counts and is listed.
func TestReportPrintServices(t *testing.T) {
	pods := []string{"default/lab-7c9-aaaaa", "default/lab-7c9-bbbbb"}
	r := &Report{Pods: pods}
	for _, from := range pods {
		for _, to := range pods {
			r.Probes = append(r.Probes, Probe{From: from, To: to, Proto: "tcp", Addr: "10.244.0.2"})
		}
		r.Outside = append(r.Outside, Probe{From: from, To: "outside", Proto: "tcp", Addr: OutsideIP.String()})
		r.Services = append(r.Services, Probe{From: from, To: ToClusterIP, Proto: "tcp", Addr: "10.96.0.10:80"})
	}
	r.Services[1].Err = "connection refused"
	r.Services = append(r.Services,
		Probe{From: "outside", To: ToNodePort, Proto: "tcp", Addr: "10.100.1.1:30777"},
		Probe{From: "outside", To: ToNodePort, Proto: "tcp", Addr: "10.100.1.2:30777"})
	var b strings.Builder
	r.Print(&b)
	lines := strings.Split(b.String(), "\n")
	want := []string{
		"pods default/lab-7c9-…",
		"from\\to     aaaaa     bbbbb     outside   clusterIP nodePort",
		"aaaaa       ok        ok        ok        ok        -",
		"bbbbb       ok        ok        ok        FAIL      -",
		"outside     -         -         -         -         ok",
		"  FAIL default/lab-7c9-bbbbb → clusterIP tcp 10.96.0.10:80: connection refused",
	}
	if len(lines) < len(want)+1 || !reflect.DeepEqual(lines[:len(want)], want) {
		t.Fatalf("matrix:\n%s\nwant it to start with:\n%s", b.String(), strings.Join(want, "\n"))
	}
	if sum := lines[len(want)]; !strings.Contains(sum, "1/2 pods reach the Service's ClusterIP; the outside reaches its NodePort at 2/2 node addresses; 1 failures") {
		t.Errorf("summary %q", sum)
	}
}

// TestReportPrintPolicy checks the matrix under a policy (Allowed): a
// denied pair that fails shows "deny" and is no failure, one that got
// through shows "LEAK", an allowed one that failed "FAIL".
func TestReportPrintPolicy(t *testing.T) {
	pods := []string{"default/lab-7c9-aaaaa", "default/lab-7c9-bbbbb", "default/lab-7c9-ccccc"}
	r := &Report{Pods: pods, Allowed: func(p Probe) bool { return p.From == p.To || p.From == pods[0] || p.To == Outside }}
	for _, from := range pods {
		for _, to := range pods {
			for _, proto := range []string{"icmp", "tcp"} {
				p := Probe{From: from, To: to, Proto: proto, Addr: "10.244.0.2"}
				switch {
				case from == pods[1] && to == pods[2]: // denied and dropped
					p.Err = "i/o timeout"
				case from == pods[0] && to == pods[1] && proto == "tcp": // allowed but failed
					p.Err = "connection refused"
				}
				// pods[2] → pods[0] and → pods[1]: denied, yet got through.
				r.Probes = append(r.Probes, p)
			}
		}
		r.Outside = append(r.Outside, Probe{From: from, To: Outside, Proto: "tcp", Addr: OutsideIP.String()})
	}
	// pods[1] → pods[0]: denied, and dropped.
	for i := range r.Probes {
		if r.Probes[i].From == pods[1] && r.Probes[i].To == pods[0] {
			r.Probes[i].Err = "no echo reply"
		}
	}
	var b strings.Builder
	r.Print(&b)
	lines := strings.Split(b.String(), "\n")
	want := []string{
		"pods default/lab-7c9-…",
		"from\\to   aaaaa   bbbbb   ccccc   outside",
		"aaaaa     ok      FAIL    ok      ok",
		"bbbbb     deny    ok      deny    ok",
		"ccccc     LEAK    LEAK    ok      ok",
	}
	if len(lines) < len(want) || !reflect.DeepEqual(lines[:len(want)], want) {
		t.Fatalf("matrix:\n%s\nwant it to start with:\n%s", b.String(), strings.Join(want, "\n"))
	}
	if got, want := r.Failures(), 1+4; got != want {
		t.Errorf("%d failures, want %d (1 FAIL probe, 4 LEAK probes)", got, want)
	}
	for _, s := range []string{"  FAIL default/lab-7c9-aaaaa → default/lab-7c9-bbbbb tcp", "  LEAK default/lab-7c9-ccccc → default/lab-7c9-aaaaa icmp", "2/9 denied by policy as it should be"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("no %q in:\n%s", s, b.String())
		}
	}
}

func TestCommonPrefix(t *testing.T) {
	for _, tc := range []struct {
		names []string
		want  string
	}{
		{nil, ""},
		{[]string{"default/lab-7c9-abcde"}, ""},
		{[]string{"default/lab-7c9-abcde", "default/lab-7c9-fghij"}, "default/lab-7c9-"},
		{[]string{"default/lab-7c9-abcde", "kube-system/x"}, ""},
		{[]string{"default/a", "default/b"}, "default/"},
		{[]string{"n1-p1", "n1-p2"}, ""},
	} {
		if got := commonPrefix(tc.names); got != tc.want {
			t.Errorf("commonPrefix(%q) = %q, want %q", tc.names, got, tc.want)
		}
	}
}
