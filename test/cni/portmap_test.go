package cni

import (
	"bytes"
	"encoding/json"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// The node's own network in the portmap tests: a peer namespace on a
// veth of the host, as a client machine on the node's LAN.
var (
	nodeAddrs = []string{"192.168.77.1/24", "fd77::1/64"}
	peerAddrs = []string{"192.168.77.2/24", "fd77::2/64"}
)

const (
	nodeIP4 = "192.168.77.1"
	nodeIP6 = "fd77::1"
)

// portmapCaps are the mappings every traffic test asks for, as
// containerd sends them: TCP and UDP on any address, TCP on one IPv4 and
// one IPv6 host address.
func portmapCaps() map[string]any {
	return sandbox.PortMappings(
		sandbox.PortMapping("tcp", 8080, 80, ""),
		sandbox.PortMapping("udp", 5353, 53, ""),
		sandbox.PortMapping("tcp", 8081, 80, nodeIP4),
		sandbox.PortMapping("tcp", 8082, 80, nodeIP6),
	)
}

// portmapNet is bridge (dual-stack host-local) then portmap.
func portmapNet(v, dataDir string, pm sandbox.Conf) sandbox.ConfList {
	return sandbox.ConfList{Name: "podnet-pm", CNIVersion: v, Plugins: []sandbox.Conf{
		hairpinBridge(sandbox.HostLocalDual("10.88.0.0/24", "fd88::/64", dataDir)),
		sandbox.PortMap(pm),
	}}
}

// hairpinBridge is the node's bridge with hairpinMode, as containerd's
// and Kubernetes' bridge configurations set it: where br_netfilter is
// loaded, a pod's connection to a host port of its own is DNATed while
// being bridged and leaves through the port it came in by.
func hairpinBridge(ipam sandbox.Conf) sandbox.Conf {
	c := sandbox.Bridge("cni0", ipam)
	c["hairpinMode"] = true
	return c
}

// pmEnv is a sandbox with a pod added through a conflist that ends in
// portmap, echo servers in the pod (TCP 80, UDP 53) and a peer.
type pmEnv struct {
	sb   *sandbox.Sandbox
	conf sandbox.ConfList
	list *libcni.NetworkConfigList
	pod  *sandbox.Pod
	peer *sandbox.Pod
	rt   *libcni.RuntimeConf
}

func newPMEnv(t *testing.T, bin string, conf func(dataDir string) sandbox.ConfList, caps map[string]any) *pmEnv {
	t.Helper()
	ctx := ctxFor(t)
	e := &pmEnv{sb: newSandbox(t, bin)}
	e.conf = conf(e.sb.DataDir("ipam"))
	e.list = mustList(t, e.conf)
	var err error
	if e.peer, err = e.sb.NewPeer(nodeAddrs, peerAddrs); err != nil {
		t.Fatalf("peer: %v", err)
	}
	e.pod = newPod(t, e.sb)
	e.rt = e.pod.RT(caps)
	if _, err := e.sb.Add(ctx, e.list, e.rt); err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	l, err := sandbox.Listen(e.pod.NS.NS, ":80")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go sandbox.Echo(l)
	u, err := sandbox.ListenUDP(e.pod.NS.NS, ":53")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { u.Close() })
	go sandbox.EchoUDP(u)
	return e
}

// hostPortConn is one client connection through a host port.
type hostPortConn struct {
	name  string
	from  *netns.NS
	proto string // "tcp" or "udp"
	addr  string
	ok    bool // false: the connection must be refused (TCP only)
}

func checkReach(t *testing.T, cases []hostPortConn) {
	t.Helper()
	for _, c := range cases {
		msg := "hello " + c.name
		var got string
		var err error
		if c.proto == "udp" {
			got, err = sandbox.RoundTripUDP(c.from, c.addr, msg)
		} else {
			got, err = sandbox.RoundTrip(c.from, c.addr, msg)
		}
		switch {
		case c.ok && (err != nil || got != msg):
			t.Errorf("%s: %s %s: got %q, %v", c.name, c.proto, c.addr, got, err)
		case !c.ok && err == nil:
			t.Errorf("%s: %s %s reached the pod, want refused", c.name, c.proto, c.addr)
		}
	}
}

// portmapRules returns the host's rules in portmap's chains.
func portmapRules(t testing.TB, sb *sandbox.Sandbox) []sandbox.Rule {
	t.Helper()
	rules, err := sandbox.PodnetRules(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	var out []sandbox.Rule
	for _, r := range rules {
		if strings.HasPrefix(r.Chain, "portmap-") {
			out = append(out, r)
		}
	}
	return out
}

func rulesOf(rules []sandbox.Rule, containerID string) []sandbox.Rule {
	var out []sandbox.Rule
	for _, r := range rules {
		if strings.Contains(r.Comment, containerID) {
			out = append(out, r)
		}
	}
	return out
}

// TestPortMapTraffic adds a dual-stack pod with host ports through
// bridge+host-local+portmap for every spec version, and connects through
// them: from the host to its own addresses and to localhost, from a peer
// on the node's network, and from the pod to itself (hairpin), over TCP
// and UDP, IPv4 and IPv6, with hostIP restrictions; then CHECK, and DEL
// as containerd sends it (empty netns, no portMappings).
func TestPortMapTraffic(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "portmap")
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			ctx := ctxFor(t)
			e := newPMEnv(t, bin, func(dir string) sandbox.ConfList { return portmapNet(v, dir, nil) }, portmapCaps())
			host, peer, pod := e.sb.Host.NS, e.peer.NS.NS, e.pod.NS.NS
			v4 := func(p string) string { return net.JoinHostPort(nodeIP4, p) }
			v6 := func(p string) string { return net.JoinHostPort(nodeIP6, p) }
			checkReach(t, []hostPortConn{
				{"host to node address", host, "tcp", v4("8080"), true},
				{"host to bridge address", host, "tcp", "10.88.0.1:8080", true},
				{"host to localhost", host, "tcp", "127.0.0.1:8080", true},
				{"host udp to node address", host, "udp", v4("5353"), true},
				{"host udp to localhost", host, "udp", "127.0.0.1:5353", true},
				{"peer", peer, "tcp", v4("8080"), true},
				{"peer udp", peer, "udp", v4("5353"), true},
				{"hairpin", pod, "tcp", v4("8080"), true},
				{"hairpin udp", pod, "udp", v4("5353"), true},
				{"peer ipv6", peer, "tcp", v6("8080"), true},
				{"host ipv6", host, "tcp", v6("8080"), true},
				{"hairpin ipv6", pod, "tcp", v6("8080"), true},
				{"peer udp ipv6", peer, "udp", v6("5353"), true},
				{"hostIP v4 on its address", peer, "tcp", v4("8081"), true},
				{"hostIP v4 on another address", host, "tcp", "10.88.0.1:8081", false},
				{"hostIP v6 on its address", peer, "tcp", v6("8082"), true},
				{"hostIP v6 over IPv4", peer, "tcp", v4("8082"), false},
			})
			var localnet []byte
			if err := e.sb.Host.Do(func() error {
				var err error
				localnet, err = os.ReadFile("/proc/sys/net/ipv4/conf/cni0/route_localnet")
				return err
			}); err != nil || strings.TrimSpace(string(localnet)) != "1" {
				t.Errorf("route_localnet on cni0: %q %v", localnet, err)
			}
			if atLeast(v, "0.4.0") {
				if err := e.sb.Check(ctx, e.list, e.rt); err != nil {
					t.Errorf("CHECK: %s", cniruntime.Describe(err))
				}
				// CHECK notices a missing rule.
				mine := rulesOf(portmapRules(t, e.sb), e.pod.ContainerID)
				if len(mine) == 0 {
					t.Fatal("no portmap rules")
				}
				r := mine[len(mine)-1]
				nftDo(t, e.sb.Host.NS, "delete", "rule", r.Family, r.Table, r.Chain, "handle", itoa(r.Handle))
				if err := e.sb.Check(ctx, e.list, e.rt); err == nil {
					t.Error("CHECK passed with a rule deleted")
				}
			}
			// DEL as containerd sends it: no netns, and as cnitool: no
			// portMappings.
			rt := *e.rt
			rt.NetNS, rt.CapabilityArgs = "", nil
			if err := e.sb.Del(ctx, e.list, &rt); err != nil {
				t.Fatalf("DEL: %s", cniruntime.Describe(err))
			}
			if left := portmapRules(t, e.sb); len(left) != 0 {
				t.Errorf("rules left after DEL: %v", left)
			}
			checkReach(t, []hostPortConn{{"host after DEL", host, "tcp", v4("8080"), false}})
		})
	}
}

func itoa(i int) string {
	b, _ := json.Marshal(i)
	return string(b)
}

// nftDo runs nft in a namespace (observation and test set-up only).
func nftDo(t *testing.T, ns *netns.NS, args ...string) {
	t.Helper()
	if out, err := sandbox.NFT(ns, args...); err != nil {
		t.Fatalf("%v %s", err, out)
	}
}

// execPortmap runs podnet's portmap binary directly, as a runtime would,
// inside the sandbox's host namespace.
func execPortmap(t *testing.T, e *pmEnv, bin, command, netnsPath string, conf map[string]any) *sandbox.Outcome {
	t.Helper()
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	out, err := sandbox.Exec(ctxFor(t), e.sb.Host.NS, filepath.Join(bin, "portmap"),
		sandbox.Env(command, e.pod.ContainerID, netnsPath, e.pod.IfName, bin), stdin)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pluginConf is plugin i of the list as the plugin receives it.
func pluginConf(t *testing.T, c sandbox.ConfList, i int) map[string]any {
	t.Helper()
	m := map[string]any{}
	if err := json.Unmarshal(c.PluginConf(i), &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestPortMapDelGC deletes one pod's mappings with the portmap plugin
// alone, without netns or portMappings: its rules go, the bridge's rules
// of the same pod and another pod's rules stay; GC removes the rules of
// the pods the runtime no longer lists.
func TestPortMapDelGC(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "portmap")
	ctx := ctxFor(t)
	e := newPMEnv(t, bin, func(dir string) sandbox.ConfList { return portmapNet("1.1.0", dir, nil) }, portmapCaps())
	other := newPod(t, e.sb)
	if _, err := e.sb.Add(ctx, e.list, other.RT(sandbox.PortMappings(sandbox.PortMapping("tcp", 9090, 80, "")))); err != nil {
		t.Fatalf("ADD of a second pod: %s", cniruntime.Describe(err))
	}
	if len(rulesOf(portmapRules(t, e.sb), e.pod.ContainerID)) == 0 || len(rulesOf(portmapRules(t, e.sb), other.ContainerID)) == 0 {
		t.Fatal("ADD installed no portmap rules")
	}

	conf := pluginConf(t, e.conf, 1)
	for i := 0; i < 2; i++ { // DEL is idempotent
		if out := execPortmap(t, e, bin, "DEL", "", conf); out.ExitCode != 0 {
			t.Fatalf("DEL: exit %d %s %s", out.ExitCode, out.Stdout, out.Stderr)
		}
	}
	if left := rulesOf(portmapRules(t, e.sb), e.pod.ContainerID); len(left) != 0 {
		t.Errorf("DEL left rules: %v", left)
	}
	if len(rulesOf(portmapRules(t, e.sb), other.ContainerID)) == 0 {
		t.Error("DEL of one pod removed another pod's rules")
	}
	all, err := sandbox.PodnetRules(e.sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if len(rulesOf(all, e.pod.ContainerID)) == 0 {
		t.Error("portmap DEL removed the bridge's masquerade rule of the pod")
	}

	// GC keeping the first pod removes the second one's rules.
	gcConf := pluginConf(t, e.conf, 1)
	gcConf["cni.dev/valid-attachments"] = []any{map[string]any{"containerID": e.pod.ContainerID, "ifname": "eth0"}}
	if out := execPortmap(t, e, bin, "GC", "", gcConf); out.ExitCode != 0 {
		t.Fatalf("GC: exit %d %s %s", out.ExitCode, out.Stdout, out.Stderr)
	}
	if left := rulesOf(portmapRules(t, e.sb), other.ContainerID); len(left) != 0 {
		t.Errorf("GC left rules of an attachment that is not valid: %v", left)
	}
	// GC through libcni with nothing valid cleans up everything.
	third := newPod(t, e.sb)
	if _, err := e.sb.Add(ctx, e.list, third.RT(sandbox.PortMappings(sandbox.PortMapping("udp", 9091, 53, "")))); err != nil {
		t.Fatalf("ADD of a third pod: %s", cniruntime.Describe(err))
	}
	if err := e.sb.GC(ctx, e.list, nil); err != nil {
		t.Fatalf("GC: %s", cniruntime.Describe(err))
	}
	if left := portmapRules(t, e.sb); len(left) != 0 {
		t.Errorf("rules left after GC: %v", left)
	}
}

// TestPortMapNoMappings: without mappings portmap does nothing at all
// (no table, no chain), passes the previous result through unchanged,
// and CHECK and DEL succeed.
func TestPortMapNoMappings(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "portmap")
	for _, caps := range []map[string]any{nil, sandbox.PortMappings()} {
		ctx := ctxFor(t)
		sb := newSandbox(t, bin)
		br := sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/24", sb.DataDir("ipam")))
		br["ipMasq"] = false
		conf := sandbox.ConfList{Name: "podnet-pm", CNIVersion: "1.1.0", Plugins: []sandbox.Conf{br, sandbox.PortMap(nil)}}
		pod := newPod(t, sb)
		r, err := sb.Add(ctx, mustList(t, conf), pod.RT(caps))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		rs, err := sandbox.Ruleset(sb.Host.NS)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(rs, "table") {
			t.Errorf("portmap without mappings created nftables state:\n%s", rs)
		}
		if err := sb.Check(ctx, mustList(t, conf), pod.RT(caps)); err != nil {
			t.Errorf("CHECK: %s", cniruntime.Describe(err))
		}
		// The result is the bridge's, byte for byte: portmap run alone on
		// it prints it back.
		prev := resultJSON(t, r)
		stdin := map[string]any{}
		_ = json.Unmarshal(conf.PluginConf(1), &stdin)
		stdin["prevResult"] = json.RawMessage(prev)
		e := &pmEnv{sb: sb, pod: pod}
		out := execPortmap(t, e, bin, "ADD", pod.Path(), stdin)
		if out.ExitCode != 0 || !jsonEqual(t, out.Stdout, []byte(prev)) {
			t.Errorf("portmap ADD did not pass prevResult through:\n got %s\nwant %s", out.Stdout, prev)
		}
		if err := sb.Del(ctx, mustList(t, conf), pod.RT(caps)); err != nil {
			t.Errorf("DEL: %s", cniruntime.Describe(err))
		}
	}
}

func jsonEqual(t *testing.T, a, b []byte) bool {
	t.Helper()
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	ja, _ := json.Marshal(x)
	jb, _ := json.Marshal(y)
	return bytes.Equal(ja, jb)
}

// TestPortMapBadInput runs portmap ADD on a real pod's result with bad
// mappings and options: each gets its spec error code and changes
// nothing in the kernel.
func TestPortMapBadInput(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "portmap")
	e := newPMEnv(t, bin, func(dir string) sandbox.ConfList { return portmapNet("1.0.0", dir, nil) }, portmapCaps())
	r, err := e.sb.CNI.GetNetworkListCachedResult(e.list, e.rt)
	if err != nil || r == nil {
		t.Fatalf("cached result: %v", err)
	}
	prev := json.RawMessage(resultJSON(t, r))
	before, err := sandbox.Ruleset(e.sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	mapping := func(m map[string]any) map[string]any {
		return map[string]any{"portMappings": []any{m}}
	}
	cases := []struct {
		name string
		set  map[string]any
		code uint
	}{
		{"bad protocol", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("icmp", 80, 80, ""))}, 7},
		{"host port 0", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("tcp", 0, 80, ""))}, 7},
		{"host port 65536", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("tcp", 65536, 80, ""))}, 7},
		{"container port 0", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("udp", 80, 0, ""))}, 7},
		{"container port 65536", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("udp", 80, 65536, ""))}, 7},
		{"bad hostIP", map[string]any{"runtimeConfig": mapping(sandbox.PortMapping("tcp", 80, 80, "10.0.0.300"))}, 7},
		{"hostPort as string", map[string]any{"runtimeConfig": mapping(map[string]any{"hostPort": "80", "containerPort": 80})}, 6},
		{"markMasqBit 32", map[string]any{"markMasqBit": 32}, 7},
		{"markMasqBit and externalSetMarkChain", map[string]any{"markMasqBit": 14, "externalSetMarkChain": "KUBE-MARK-MASQ"}, 7},
		{"unknown backend", map[string]any{"backend": "ebpf"}, 7},
		{"unsupported condition", map[string]any{"conditionsV4": []string{"-m", "conntrack", "--ctstate", "NEW"}}, 2},
		{"condition without value", map[string]any{"conditionsV4": []string{"-d"}}, 7},
		{"condition of the other family", map[string]any{"conditionsV6": []string{"-d", "10.0.0.1"}}, 7},
		{"no prevResult", map[string]any{"prevResult": nil}, 7},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf := pluginConf(t, e.conf, 1)
			conf["prevResult"] = prev
			conf["runtimeConfig"] = portmapCaps()
			for k, v := range c.set {
				if v == nil {
					delete(conf, k)
				} else {
					conf[k] = v
				}
			}
			out := execPortmap(t, e, bin, "ADD", e.pod.Path(), conf)
			if got, ok := out.Error(); !ok || got.Code != c.code || out.ExitCode == 0 {
				t.Errorf("exit %d, stdout %s, want code %d", out.ExitCode, out.Stdout, c.code)
			}
			if bytes.Contains(out.Stderr, []byte("panic")) {
				t.Errorf("panic: %s", out.Stderr)
			}
			after, err := sandbox.Ruleset(e.sb.Host.NS)
			if err != nil {
				t.Fatal(err)
			}
			if after != before {
				t.Errorf("ruleset changed:\nbefore %s\nafter %s", before, after)
			}
		})
	}
}

// TestPortMapInterop chains podnet's portmap after the reference bridge
// and host-local, and the reference portmap (iptables) after podnet's
// bridge and host-local, at the newest version the reference speaks.
func TestPortMapInterop(t *testing.T) {
	requireRoot(t)
	caps := sandbox.PortMappings(sandbox.PortMapping("tcp", 8080, 80, ""), sandbox.PortMapping("udp", 5353, 53, ""))
	conf := func(dir string) sandbox.ConfList {
		return sandbox.ConfList{Name: "pm-interop", CNIVersion: interopVersion, Plugins: []sandbox.Conf{
			hairpinBridge(sandbox.HostLocal("10.88.0.0/24", dir)),
			sandbox.PortMap(nil),
		}}
	}
	for _, m := range []map[string]string{
		{"bridge": "ref", "host-local": "ref", "portmap": "podnet"},
		{"bridge": "podnet", "host-local": "podnet", "portmap": "ref"},
	} {
		t.Run("bridge="+m["bridge"]+",portmap="+m["portmap"], func(t *testing.T) {
			skipWithoutReference(t, "bridge", "host-local", "portmap")
			bin := binDir(t, m)
			requirePlugins(t, bin, "bridge", "host-local", "portmap")
			if m["portmap"] == "ref" {
				skipWithoutIptables(t)
			}
			ctx := ctxFor(t)
			e := newPMEnv(t, bin, conf, caps)
			host, peer, pod := e.sb.Host.NS, e.peer.NS.NS, e.pod.NS.NS
			addr := net.JoinHostPort(nodeIP4, "8080")
			checkReach(t, []hostPortConn{
				{"host to node address", host, "tcp", addr, true},
				{"host to localhost", host, "tcp", "127.0.0.1:8080", true},
				{"peer", peer, "tcp", addr, true},
				{"peer udp", peer, "udp", net.JoinHostPort(nodeIP4, "5353"), true},
				{"hairpin", pod, "tcp", addr, true},
			})
			// The reference portmap 1.1.1 fails CHECK on a host without
			// ip6tables rules of the pod (it checks both families).
			if m["portmap"] == "podnet" {
				if err := e.sb.Check(ctx, e.list, e.rt); err != nil {
					t.Errorf("CHECK: %s", cniruntime.Describe(err))
				}
			}
			if err := e.sb.Del(ctx, e.list, e.rt); err != nil {
				t.Fatalf("DEL: %s", cniruntime.Describe(err))
			}
			if left := portmapRules(t, e.sb); len(left) != 0 {
				t.Errorf("rules left after DEL: %v", left)
			}
			if m["portmap"] == "ref" {
				var out []byte
				_ = e.sb.Host.Do(func() error {
					out, _ = exec.Command("iptables", "-t", "nat", "-S").CombinedOutput()
					return nil
				})
				if bytes.Contains(out, []byte("CNI-DN-")) {
					t.Errorf("reference portmap left its chain:\n%s", out)
				}
			}
			checkReach(t, []hostPortConn{{"host after DEL", host, "tcp", addr, false}})
		})
	}
}

// skipWithoutIptables skips when iptables cannot program a throwaway
// namespace (the reference portmap execs it there).
func skipWithoutIptables(t *testing.T) {
	t.Helper()
	path, err := exec.LookPath("iptables")
	if err != nil {
		t.Skip("reference portmap needs iptables, which is not installed")
	}
	ns, err := netns.NewTemp("pnipt")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Remove()
	var out []byte
	if err := ns.Do(func() error {
		var err error
		out, err = exec.Command(path, "-t", "nat", "-S").CombinedOutput()
		return err
	}); err != nil {
		t.Skipf("reference portmap needs iptables, not usable in a namespace here: %v %s", err, out)
	}
}
