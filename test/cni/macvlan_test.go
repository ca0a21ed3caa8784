package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// segment is the master's Ethernet segment in a sandbox: the host holds a
// veth named master whose peer, in a "lan" namespace, carries lanIP.
type segment struct {
	lan    *netns.Temp
	master string
	lanIP  string // e.g. 10.93.0.1
}

// newSegment creates the lan namespace and the master veth in the
// sandbox's host; both go when the test ends.
func newSegment(t *testing.T, sb *sandbox.Sandbox, master, lanCIDR string) *segment {
	t.Helper()
	lan, err := netns.NewTemp("pnlan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lan.Remove() })
	h, err := netlink.NewHandleAt(sb.Host.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	v := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: master, Flags: net.FlagUp, TxQLen: -1},
		PeerName:      "lan0",
		PeerNamespace: netlink.NsFd(lan.Fd()),
	}
	if err := h.LinkAdd(v); err != nil {
		t.Fatalf("create master veth: %v", err)
	}
	lh, err := netlink.NewHandleAt(lan.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer lh.Close()
	peer, err := lh.LinkByName("lan0")
	if err != nil {
		t.Fatal(err)
	}
	addr, err := netlink.ParseAddr(lanCIDR)
	if err != nil {
		t.Fatal(err)
	}
	if err := lh.AddrAdd(peer, addr); err != nil {
		t.Fatal(err)
	}
	if err := lh.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	return &segment{lan: lan, master: master, lanIP: addr.IP.String()}
}

// serve runs an echo server on port in ns until the test ends.
func serve(t *testing.T, ns *netns.NS, ip string) string {
	t.Helper()
	addr := net.JoinHostPort(ip, "7777")
	l, err := sandbox.Listen(ns, addr)
	if err != nil {
		t.Fatalf("listen on %s: %v", addr, err)
	}
	t.Cleanup(func() { l.Close() })
	go sandbox.Echo(l)
	return addr
}

// reach asserts whether a TCP round trip from ns to addr succeeds.
func reach(t *testing.T, from *netns.NS, addr string, want bool, what string) {
	t.Helper()
	got, err := sandbox.RoundTrip(from, addr, "ping")
	ok := err == nil && got == "ping"
	if ok != want {
		t.Errorf("%s (%s): reached=%v, want %v (err %v)", what, addr, ok, want, err)
	}
}

func macvlanList(v, name string, plugin sandbox.Conf) sandbox.ConfList {
	return sandbox.ConfList{Name: name, CNIVersion: v, Plugins: []sandbox.Conf{plugin}}
}

func hostLocalFrom(subnet, start, dir string) sandbox.Conf {
	return sandbox.Conf{
		"type":    "host-local",
		"ranges":  []any{[]any{sandbox.Conf{"subnet": subnet, "rangeStart": start}}},
		"dataDir": dir,
	}
}

// podLink returns the pod's interface as netlink sees it.
func podLink(t *testing.T, p *sandbox.Pod) netlink.Link {
	t.Helper()
	h, err := netlink.NewHandleAt(p.NS.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.IfName)
	if err != nil {
		t.Fatalf("pod %s: %v", p.NS.Name, err)
	}
	return l
}

func podIP(t *testing.T, r types.Result) string {
	t.Helper()
	res := toCurrent(t, r)
	if len(res.IPs) == 0 {
		t.Fatalf("result has no IPs: %s", resultJSON(t, r))
	}
	return res.IPs[0].Address.IP.String()
}

// checkLowerResult verifies the result shape the reference reports: one
// interface, in the pod's sandbox, with the kernel's MAC, every address on
// it.
func checkLowerResult(t *testing.T, p *sandbox.Pod, res *current.Result) {
	t.Helper()
	if len(res.Interfaces) != 1 {
		t.Fatalf("result has %d interfaces, want 1: %+v", len(res.Interfaces), res.Interfaces)
	}
	i := res.Interfaces[0]
	l := podLink(t, p)
	if i.Name != p.IfName || i.Sandbox != p.Path() || !sameMAC(i.Mac, l.Attrs().HardwareAddr.String()) {
		t.Errorf("result interface %+v, kernel has %s %s", i, l.Attrs().Name, l.Attrs().HardwareAddr)
	}
	for _, ipc := range res.IPs {
		if ipc.Interface == nil || *ipc.Interface != 0 {
			t.Errorf("IP %s not on interface 0", ipc.Address.String())
		}
	}
}

// TestMacvlan runs a macvlan network on a master in the sandbox's host for
// every spec version: two pods reach each other and an address on the
// master's segment, CHECK passes, DEL releases everything, with and
// without the pod's namespace, and repeats.
func TestMacvlan(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "macvlan", "host-local")
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			lowerLifecycle(t, bin, v, func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("eth0", "", ipam) }, true,
				func(l netlink.Link) bool {
					m, ok := l.(*netlink.Macvlan)
					return ok && m.Mode == netlink.MACVLAN_MODE_BRIDGE
				})
		})
	}
}

// lowerLifecycle is a pod's life on a macvlan or ipvlan network whose
// master is in the sandbox's host, in one spec version: two pods get
// interfaces isLink accepts, reach each other (and, with lanReach, an
// address on the master's segment, both ways), CHECK passes, and DEL
// releases everything, with and without the pod's namespace, and repeats.
func lowerLifecycle(t *testing.T, bin, v string, plugin func(ipam sandbox.Conf) sandbox.Conf, lanReach bool, isLink func(netlink.Link) bool) {
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	// The master is called eth0 like the pods' interfaces: the child is
	// created in the pod directly, so the names never clash.
	seg := newSegment(t, sb, "eth0", "10.93.0.1/24")
	dir := sb.DataDir("ipam")
	list := mustList(t, macvlanList(v, "lower", plugin(hostLocalFrom("10.93.0.0/24", "10.93.0.10", dir))))
	p1, p2 := newPod(t, sb), newPod(t, sb)
	var ips []string
	for _, p := range []*sandbox.Pod{p1, p2} {
		r, err := sb.Add(ctx, list, p.RT(nil))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		checkLowerResult(t, p, toCurrent(t, r))
		if l := podLink(t, p); !isLink(l) {
			t.Errorf("pod interface is not what the configuration asks: %s %+v", l.Type(), l)
		}
		ips = append(ips, podIP(t, r))
	}
	reach(t, p1.NS.NS, serve(t, p2.NS.NS, ips[1]), true, "pod to pod")
	if lanReach {
		reach(t, p1.NS.NS, serve(t, seg.lan.NS, seg.lanIP), true, "pod to the master's segment")
		reach(t, seg.lan.NS, serve(t, p1.NS.NS, ips[0]), true, "segment to pod")
	}
	if atLeast(v, "0.4.0") {
		if err := sb.Check(ctx, list, p1.RT(nil)); err != nil {
			t.Errorf("CHECK: %s", cniruntime.Describe(err))
		}
	}
	// p1's namespace dies before DEL; p2 is deleted normally.
	if err := p1.Remove(); err != nil {
		t.Fatal(err)
	}
	for _, p := range []*sandbox.Pod{p1, p2} {
		for i := 0; i < 2; i++ {
			if err := sb.Del(ctx, list, p.RT(nil)); err != nil {
				t.Errorf("DEL #%d: %s", i+1, cniruntime.Describe(err))
			}
		}
	}
	noNS := p1.RT(nil)
	noNS.NetNS = ""
	if err := sb.Del(ctx, list, noNS); err != nil {
		t.Errorf("DEL without netns: %s", cniruntime.Describe(err))
	}
	lowerGone(t, sb, dir, p1, p2)
}

// TestMacvlanModes checks each mode's traffic, the default master, the
// MAC from the capability and from CNI_ARGS, linkInContainer, and that a
// failed ADD (a second passthru child) rolls its IPAM back.
func TestMacvlanModes(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "macvlan", "host-local")
	type tc struct {
		name   string
		plugin func(ipam sandbox.Conf) sandbox.Conf
		// podToPod: the second pod is reachable from the first; -1: the
		// second ADD must fail.
		podToPod int
		mode     netlink.MacvlanMode
		rt       func(p *sandbox.Pod) *libcni.RuntimeConf
		mac      string
		setup    func(t *testing.T, sb *sandbox.Sandbox)
	}
	cases := []tc{
		{name: "private", podToPod: 0, mode: netlink.MACVLAN_MODE_PRIVATE,
			plugin: func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("eth0", "private", ipam) }},
		// A veth does not reflect frames back, so vepa children do not
		// see each other; the segment does.
		{name: "vepa", podToPod: 0, mode: netlink.MACVLAN_MODE_VEPA,
			plugin: func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("eth0", "vepa", ipam) }},
		{name: "passthru", podToPod: -1, mode: netlink.MACVLAN_MODE_PASSTHRU,
			plugin: func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("eth0", "passthru", ipam) }},
		{name: "default master", podToPod: 1, mode: netlink.MACVLAN_MODE_BRIDGE,
			plugin: func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("", "", ipam) },
			setup: func(t *testing.T, sb *sandbox.Sandbox) {
				h, err := netlink.NewHandleAt(sb.Host.Handle())
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				l, err := h.LinkByName("eth0")
				if err != nil {
					t.Fatal(err)
				}
				if err := h.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Scope: netlink.SCOPE_LINK,
					Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}}); err != nil {
					t.Fatal(err)
				}
			}},
		{name: "mac capability", podToPod: 1, mode: netlink.MACVLAN_MODE_BRIDGE, mac: "02:42:0a:5d:00:63",
			plugin: func(ipam sandbox.Conf) sandbox.Conf {
				c := sandbox.Macvlan("eth0", "bridge", ipam)
				c["capabilities"] = sandbox.Conf{"mac": true}
				return c
			},
			rt: func(p *sandbox.Pod) *libcni.RuntimeConf { return p.RT(map[string]any{"mac": "02:42:0a:5d:00:63"}) }},
		{name: "MAC= in CNI_ARGS", podToPod: 1, mode: netlink.MACVLAN_MODE_BRIDGE, mac: "02:42:0a:5d:00:64",
			plugin: func(ipam sandbox.Conf) sandbox.Conf { return sandbox.Macvlan("eth0", "", ipam) },
			rt: func(p *sandbox.Pod) *libcni.RuntimeConf {
				rt := p.RT(nil)
				rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"MAC", "02:42:0a:5d:00:64"}}
				return rt
			}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			seg := newSegment(t, sb, "eth0", "10.93.0.1/24")
			if c.setup != nil {
				c.setup(t, sb)
			}
			dir := sb.DataDir("ipam")
			list := mustList(t, macvlanList("1.1.0", "mv", c.plugin(hostLocalFrom("10.93.0.0/24", "10.93.0.10", dir))))
			rt := c.rt
			if rt == nil {
				rt = func(p *sandbox.Pod) *libcni.RuntimeConf { return p.RT(nil) }
			}
			p1, p2 := newPod(t, sb), newPod(t, sb)
			r1, err := sb.Add(ctx, list, rt(p1))
			if err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			checkLowerResult(t, p1, toCurrent(t, r1))
			l := podLink(t, p1)
			if m, ok := l.(*netlink.Macvlan); !ok || m.Mode != c.mode {
				t.Errorf("pod interface %+v, want a macvlan in mode %d", l, c.mode)
			}
			if c.mac != "" && l.Attrs().HardwareAddr.String() != c.mac {
				t.Errorf("pod MAC %s, want %s", l.Attrs().HardwareAddr, c.mac)
			}
			if err := sb.Check(ctx, list, rt(p1)); err != nil {
				t.Errorf("CHECK: %s", cniruntime.Describe(err))
			}
			reach(t, p1.NS.NS, serve(t, seg.lan.NS, seg.lanIP), true, "pod to the master's segment")
			if c.mac != "" {
				// The second pod would get the same MAC on the same master.
				c.podToPod = 1
				rt = func(p *sandbox.Pod) *libcni.RuntimeConf { return p.RT(nil) }
			}
			r2, err := sb.Add(ctx, list, rt(p2))
			if c.podToPod < 0 {
				if err == nil {
					t.Fatal("second passthru ADD on one master succeeded")
				}
				if a := allocationsOf(t, dir, p2.ContainerID); len(a) != 0 {
					t.Errorf("failed ADD left IPAM allocations %v", a)
				}
				if ls, _ := sandbox.Links(p2.NS.NS); len(ls) != 1 {
					t.Errorf("failed ADD left links in the pod: %v", names(ls))
				}
			} else {
				if err != nil {
					t.Fatalf("second ADD: %s", cniruntime.Describe(err))
				}
				reach(t, p1.NS.NS, serve(t, p2.NS.NS, podIP(t, r2)), c.podToPod == 1, "pod to pod")
			}
			for _, p := range []*sandbox.Pod{p1, p2} {
				if err := sb.Del(ctx, list, p.RT(nil)); err != nil {
					t.Errorf("DEL: %s", cniruntime.Describe(err))
				}
			}
			lowerGone(t, sb, dir, p1, p2)
		})
	}
}

// TestMacvlanLinkInContainer puts the master in the pod's namespace, as
// linkInContainer describes.
func TestMacvlanLinkInContainer(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "macvlan", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	p := newPod(t, sb)
	lan, err := netns.NewTemp("pnlan")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lan.Remove() })
	ph, err := netlink.NewHandleAt(p.NS.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer ph.Close()
	if err := ph.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "ctm0", Flags: net.FlagUp, TxQLen: -1},
		PeerName:  "lan0", PeerNamespace: netlink.NsFd(lan.Fd()),
	}); err != nil {
		t.Fatal(err)
	}
	dir := sb.DataDir("ipam")
	conf := sandbox.Macvlan("ctm0", "", hostLocalFrom("10.94.0.0/24", "10.94.0.10", dir))
	conf["linkInContainer"] = true
	list := mustList(t, macvlanList("1.1.0", "mvc", conf))
	if _, err := sb.Add(ctx, list, p.RT(nil)); err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	master, err := ph.LinkByName("ctm0")
	if err != nil {
		t.Fatal(err)
	}
	if l := podLink(t, p); l.Type() != "macvlan" || l.Attrs().ParentIndex != master.Attrs().Index {
		t.Errorf("pod interface %+v is not a macvlan of ctm0 (index %d)", l.Attrs(), master.Attrs().Index)
	}
	if err := sb.Check(ctx, list, p.RT(nil)); err != nil {
		t.Errorf("CHECK: %s", cniruntime.Describe(err))
	}
	if err := sb.Del(ctx, list, p.RT(nil)); err != nil {
		t.Errorf("DEL: %s", cniruntime.Describe(err))
	}
	lowerGone(t, sb, dir, p)
}

// TestMacvlanBadInput executes the plugins with bad configurations: each
// fails with the right code and changes nothing.
func TestMacvlanBadInput(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "macvlan", "ipvlan", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	newSegment(t, sb, "eth0", "10.93.0.1/24")
	dir := sb.DataDir("ipam")
	ipam := hostLocalFrom("10.93.0.0/24", "10.93.0.10", dir)
	cases := []struct {
		name   string
		plugin sandbox.Conf
		args   string
		code   uint
	}{
		{"master does not exist", sandbox.Macvlan("nosuch0", "", ipam), "", types.ErrInvalidNetworkConfig},
		{"unknown mode", sandbox.Macvlan("eth0", "bogus", ipam), "", types.ErrInvalidNetworkConfig},
		{"mtu above the master's", withField(sandbox.Macvlan("eth0", "", ipam), "mtu", 9000), "", types.ErrInvalidNetworkConfig},
		{"negative mtu", withField(sandbox.Macvlan("eth0", "", ipam), "mtu", -1), "", types.ErrInvalidNetworkConfig},
		{"bad mac", withField(sandbox.Macvlan("eth0", "", ipam), "mac", "zz:00"), "", types.ErrInvalidNetworkConfig},
		{"multicast mac", withField(sandbox.Macvlan("eth0", "", ipam), "mac", "01:00:5e:00:00:01"), "", types.ErrInvalidNetworkConfig},
		{"bad MAC= in CNI_ARGS", sandbox.Macvlan("eth0", "", ipam), "MAC=nonsense", types.ErrInvalidEnvironmentVariables},
		{"mode is not a string", withField(sandbox.Macvlan("eth0", "", ipam), "mode", 3), "", types.ErrDecodingFailure},
		{"ipvlan unknown mode", sandbox.IPVlan("eth0", "l4", ipam), "", types.ErrInvalidNetworkConfig},
		{"ipvlan without IPAM or prevResult", sandbox.IPVlan("eth0", "", nil), "", types.ErrInvalidNetworkConfig},
		{"ipvlan master does not exist", sandbox.IPVlan("nosuch0", "", ipam), "", types.ErrInvalidNetworkConfig},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := newPod(t, sb)
			conf := macvlanList("1.1.0", "mvbad", c.plugin).PluginConf(0)
			env := append(sandbox.Env("ADD", p.ContainerID, p.Path(), "eth0", sb.Path[0]), "CNI_ARGS="+c.args)
			o, err := sandbox.Exec(ctx, sb.Host.NS, sb.Path[0]+"/"+c.plugin["type"].(string), env, conf)
			if err != nil {
				t.Fatal(err)
			}
			e, ok := o.Error()
			if o.ExitCode == 0 || !ok {
				t.Fatalf("exit %d, stdout %s, stderr %s: want a spec error", o.ExitCode, o.Stdout, o.Stderr)
			}
			if e.Code != c.code {
				t.Errorf("code %d (%s), want %d", e.Code, e.Msg, c.code)
			}
			if strings.Contains(string(o.Stderr), "panic") {
				t.Errorf("panic: %s", o.Stderr)
			}
			if ls, _ := sandbox.Links(p.NS.NS); len(ls) != 1 {
				t.Errorf("links left in the pod: %v", names(ls))
			}
			verifyNoAllocations(t, dir)
		})
	}
}

func withField(c sandbox.Conf, k string, v any) sandbox.Conf {
	c[k] = v
	return c
}

// TestMacvlanGC runs GC of the plugin directly (as after a runtime lost
// its cache): the addresses of attachments not listed as valid are
// released, the valid one keeps its address.
func TestMacvlanGC(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "macvlan", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	newSegment(t, sb, "eth0", "10.93.0.1/24")
	dir := sb.DataDir("ipam")
	cl := macvlanList("1.1.0", "mvgc", sandbox.Macvlan("eth0", "", hostLocalFrom("10.93.0.0/24", "10.93.0.10", dir)))
	list := mustList(t, cl)
	p1, p2 := newPod(t, sb), newPod(t, sb)
	for _, p := range []*sandbox.Pod{p1, p2} {
		if _, err := sb.Add(ctx, list, p.RT(nil)); err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
	}
	conf := withField(sandbox.Conf(jsonMap(t, cl.PluginConf(0))), "cni.dev/valid-attachments", []any{
		map[string]any{"containerID": p1.ContainerID, "ifname": p1.IfName},
	})
	o, err := sandbox.Exec(ctx, sb.Host.NS, sb.Path[0]+"/macvlan", sandbox.Env("GC", "", "", "", sb.Path[0]), mustJSON(t, conf))
	if err != nil || o.ExitCode != 0 {
		t.Fatalf("GC: %v exit %d %s %s", err, o.ExitCode, o.Stdout, o.Stderr)
	}
	if len(allocationsOf(t, dir, p1.ContainerID)) == 0 {
		t.Error("GC released the valid attachment's address")
	}
	if a := allocationsOf(t, dir, p2.ContainerID); len(a) != 0 {
		t.Errorf("GC left the invalid attachment's address: %v", a)
	}
	for _, p := range []*sandbox.Pod{p1, p2} {
		if err := sb.Del(ctx, list, p.RT(nil)); err != nil {
			t.Errorf("DEL: %s", cniruntime.Describe(err))
		}
	}
	lowerGone(t, sb, dir, p1, p2)
}

// ipvlanSupported tells whether the kernel can create ipvlan links: it
// tries, on a veth in a throwaway namespace.
func ipvlanSupported(t *testing.T) error {
	t.Helper()
	ns, err := netns.NewTemp("pnipvl")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Remove()
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "m0", TxQLen: -1}, PeerName: "m1"}); err != nil {
		t.Fatal(err)
	}
	m, err := h.LinkByName("m0")
	if err != nil {
		t.Fatal(err)
	}
	err = h.LinkAdd(&netlink.IPVlan{LinkAttrs: netlink.LinkAttrs{Name: "ipv0", ParentIndex: m.Attrs().Index, TxQLen: -1}, Mode: netlink.IPVLAN_MODE_L2})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return fmt.Errorf("kernel lacks ipvlan (creating one fails: %v)", err)
	}
	if err != nil {
		t.Fatalf("create ipvlan: %v", err)
	}
	return nil
}

// TestIPVlan runs ipvlan pods in each mode on a master in the sandbox's
// host, for every spec version, where the kernel has ipvlan.
func TestIPVlan(t *testing.T) {
	requireRoot(t)
	if err := ipvlanSupported(t); err != nil {
		t.Skipf("ipvlan kernel tests skipped: %v", err)
	}
	bin := podnetBin(t)
	requirePlugins(t, bin, "ipvlan", "host-local")
	for _, mode := range []string{"l2", "l3", "l3s"} {
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			t.Run(mode+"/"+v, func(t *testing.T) {
				t.Parallel()
				lowerLifecycle(t, bin, v, func(ipam sandbox.Conf) sandbox.Conf { return sandbox.IPVlan("eth0", mode, ipam) }, mode == "l2",
					func(l netlink.Link) bool { return l.Type() == "ipvlan" })
			})
		}
	}
}

// TestIPVlanWithoutKernelSupport runs where the kernel lacks ipvlan: ADD
// fails saying so and leaves no address allocated and no link behind.
func TestIPVlanWithoutKernelSupport(t *testing.T) {
	requireRoot(t)
	if err := ipvlanSupported(t); err == nil {
		t.Skip("the kernel has ipvlan: TestIPVlan covers it")
	}
	bin := podnetBin(t)
	requirePlugins(t, bin, "ipvlan", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	newSegment(t, sb, "eth0", "10.93.0.1/24")
	dir := sb.DataDir("ipam")
	list := mustList(t, macvlanList("1.1.0", "ipv", sandbox.IPVlan("eth0", "", hostLocalFrom("10.93.0.0/24", "10.93.0.10", dir))))
	p := newPod(t, sb)
	_, err := sb.Add(ctx, list, p.RT(nil))
	if err == nil {
		t.Fatal("ADD succeeded on a kernel without ipvlan")
	}
	if !strings.Contains(err.Error(), "does not support ipvlan") {
		t.Errorf("ADD error does not say ipvlan is unsupported: %v", err)
	}
	if ls, _ := sandbox.Links(p.NS.NS); len(ls) != 1 {
		t.Errorf("links left in the pod: %v", names(ls))
	}
	verifyNoAllocations(t, dir)
}

func jsonMap(t *testing.T, b []byte) map[string]any {
	t.Helper()
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// lowerGone verifies that DEL left nothing: no interface in the pods, no
// address allocated, no rule naming them, and no link in the host but
// loopback and the master the test made.
func lowerGone(t *testing.T, sb *sandbox.Sandbox, dir string, pods ...*sandbox.Pod) {
	t.Helper()
	var ids []string
	for _, p := range pods {
		ids = append(ids, p.ContainerID)
		if p.Removed() {
			continue
		}
		if l, err := sandbox.Links(p.NS.NS); err == nil {
			if _, ok := sandbox.FindLink(l, p.IfName); ok {
				t.Errorf("pod %s still has %s", p.NS.Name, p.IfName)
			}
		}
	}
	if l, err := sandbox.Links(sb.Host.NS); err != nil || len(l) > 2 {
		t.Errorf("host links after DEL: %v %v, want lo and the master", names(l), err)
	}
	verifyNoRules(t, sb, ids...)
	verifyNoAllocations(t, dir, ids...)
}
