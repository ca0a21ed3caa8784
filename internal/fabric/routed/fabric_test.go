package routed

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/fabric"

	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/cluster"
)

func TestMTU(t *testing.T) {
	for _, tc := range []struct {
		underlay int
		mode     cluster.Backend
		v6       bool
		want     int
	}{
		{1500, cluster.HostGW, false, 1500},
		{1500, cluster.VXLAN, false, 1450},
		{1500, cluster.Auto, false, 1450},
		{1500, cluster.VXLAN, true, 1430},
		{9000, cluster.Auto, true, 8930},
		{9000, cluster.HostGW, true, 9000},
	} {
		if got := MTU(tc.underlay, tc.mode, tc.v6); got != tc.want {
			t.Errorf("MTU(%d, %s, v6=%v) = %d, want %d", tc.underlay, tc.mode, tc.v6, got, tc.want)
		}
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	good := Config{Mode: cluster.VXLAN, Underlay: "eth0", LocalIP: net.IPv4(198, 18, 1, 1), Subnet: cidr("10.244.1.0/24")}
	for _, tc := range []struct {
		name string
		edit func(*Config)
		want string
	}{
		{"mode", func(c *Config) { c.Mode = "bgp" }, "unknown mode"},
		{"underlay", func(c *Config) { c.Underlay = "" }, "no underlay"},
		{"subnet", func(c *Config) { c.Subnet = nil }, "no pod subnet"},
		{"address", func(c *Config) { c.LocalIP = nil }, "no underlay address"},
		{"v4 family", func(c *Config) { c.LocalIP = net.ParseIP("fd00::1") }, "not IPv4"},
		{"v6 family", func(c *Config) { c.LocalIP6 = net.IPv4(1, 2, 3, 4) }, "not IPv6"},
		{"subnet family", func(c *Config) { c.Subnet = cidr("fd00::/64") }, "not IPv4"},
		{"subnet6 family", func(c *Config) { c.Subnet6 = cidr("10.0.0.0/8") }, "not IPv6"},
		{"vni", func(c *Config) { c.VNI = 1 << 24 }, "VNI"},
		{"port", func(c *Config) { c.Port = 70000 }, "port"},
		{"device", func(c *Config) { c.Device = "a-very-long-device-name" }, "longer than 15"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := good
			tc.edit(&c)
			_, err := New(c, &netlink.Handle{})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestVTEPMAC(t *testing.T) {
	c := Config{LocalIP: net.IPv4(198, 18, 1, 1).To4(), Subnet: cidr("10.244.1.0/24"), VNI: 1}
	a, b := vtepMAC(c), vtepMAC(c)
	if a.String() != b.String() {
		t.Errorf("MAC not stable: %s vs %s", a, b)
	}
	if a[0]&0x01 != 0 || a[0]&0x02 == 0 {
		t.Errorf("MAC %s is not unicast and locally administered", a)
	}
	c.Subnet = cidr("10.244.2.0/24")
	if vtepMAC(c).String() == a.String() {
		t.Error("a different subnet gives the same MAC")
	}
}

func TestVTEPAddr(t *testing.T) {
	for in, want := range map[string]string{
		"10.244.3.0/24":     "10.244.3.0/32",
		"10.244.3.77/24":    "10.244.3.0/32",
		"fd00:244:3::/64":   "fd00:244:3::/128",
		"fd00:244:3::9/64":  "fd00:244:3::/128",
		"10.244.128.0/17":   "10.244.128.0/32",
		"fd00:244:3::/112":  "fd00:244:3::/128",
		"192.168.200.16/28": "192.168.200.16/32",
	} {
		_, n, _ := net.ParseCIDR(in)
		n.IP, _, _ = net.ParseCIDR(in)
		if got := vtepAddr(n).String(); got != want {
			t.Errorf("vtepAddr(%s) = %s, want %s", in, got, want)
		}
	}
}

// checkBackends compares a Result's backend choice with the expectation.
func checkBackends(t *testing.T, who string, got map[string]cluster.Backend, want map[string]cluster.Backend) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: backends %v, want %v", who, got, want)
	}
}

// runBridge runs iproute2's `bridge` inside a node namespace (it has no -n
// of its own in every version: `ip netns exec` is the portable way).
func runBridge(n *node, args ...string) (string, error) {
	out, err := exec.Command("ip", append([]string{"netns", "exec", n.ns.Name, "bridge"}, args...)...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("bridge %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// wantLine fails unless text has a line matching the regexp.
func wantLine(t *testing.T, text, re string) {
	t.Helper()
	if !regexp.MustCompile("(?m)" + re).MatchString(text) {
		t.Errorf("no line matching %q in:\n%s", re, text)
	}
}

func TestHostGW(t *testing.T) {
	l := newLab(t, 1500, 3)
	o := opts{mode: cluster.HostGW, dual: true, underlayV6: true, wantNoMAC: true}
	l.start(t, o)
	res := l.reconcileAll(t, o)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	checkBackends(t, "n1", res["n1"].Backends, map[string]cluster.Backend{"n2": cluster.HostGW, "n3": cluster.HostGW})
	checkBackends(t, "n1 v6", res["n1"].Backends6, map[string]cluster.Backend{"n2": cluster.HostGW, "n3": cluster.HostGW})
	if r := res["n1"]; r.Added != 4 || r.Removed != 0 || r.Changed != 0 {
		t.Errorf("n1: %+v, want 4 routes added", r)
	}
	routes := ownedRoutesText(t, n1)
	wantLine(t, routes, `^10\.244\.2\.0/24 via 198\.18\.1\.2 dev eth0 proto 118`)
	wantLine(t, routes, `^10\.244\.3\.0/24 via 198\.18\.1\.3 dev eth0 proto 118`)
	wantLine(t, routes, `^fd00:244:2::/64 via fd00:18:1::2 dev eth0 proto 118`)
	if _, err := n1.h.LinkByName(DefaultDevice); err == nil {
		t.Error("host-gw with an IPv6 underlay created a VXLAN device")
	}
	mustReach(t, true, [2]*node{n1, n2}, [2]*node{n2, n3}, [2]*node{n1, n3})

	restartUnchanged(t, l, n1, o)
}

// restartUnchanged plays a restarted agent: a new Fabric on the same
// namespace, Setup and Reconcile change nothing, and the routes, the
// neighbours and the FDB read the same.
func restartUnchanged(t *testing.T, l *lab, n *node, o opts) {
	t.Helper()
	state := func() string {
		s := ownedRoutesText(t, n)
		if _, err := n.h.LinkByName(DefaultDevice); err == nil {
			s += ipcmd(t, n.ns, "-d", "link", "show", DefaultDevice) + ipcmd(t, n.ns, "neigh", "show", "dev", DefaultDevice)
			fdb, err := runBridge(n, "fdb", "show", "dev", DefaultDevice)
			must(t, err)
			s += fdb
		}
		return s
	}
	before := state()
	f, err := New(n.config(o), nil)
	must(t, err)
	defer f.Close()
	local, err := f.Setup()
	must(t, err)
	if mac := local.VTEPMAC; mac.String() != n.mac.String() {
		t.Errorf("restart: VTEP MAC %s, was %s", mac, n.mac)
	}
	r, err := f.Reconcile(l.peers(o))
	if err != nil {
		t.Fatal(err)
	}
	if r.Added != 0 || r.Removed != 0 || r.Changed != 0 || r.DeviceCreated {
		t.Errorf("restart reconcile did something: %+v", r)
	}
	if after := state(); after != before {
		t.Errorf("state changed across restart:\n%s\nvs\n%s", before, after)
	}
}

// TestHostGWIPv6OverIPv4Underlay: without IPv6 underlay addresses, host-gw
// cannot route an IPv6 subnet via an IPv4 nexthop on Linux, so the IPv6
// pod subnets ride VXLAN while IPv4 stays on host-gw.
func TestHostGWIPv6OverIPv4Underlay(t *testing.T) {
	l := newLab(t, 1450, 2)
	o := opts{mode: cluster.HostGW, dual: true}
	l.start(t, o)
	n1, n2 := l.nodes[0], l.nodes[1]
	if n1.fab.kernelV6ViaV4() {
		t.Log("this kernel routes IPv6 via an IPv4 nexthop")
	}
	res := l.reconcileAll(t, o)
	want6 := cluster.VXLAN
	if n1.fab.kernelV6ViaV4() {
		want6 = cluster.HostGW
	}
	checkBackends(t, "n1", res["n1"].Backends, map[string]cluster.Backend{"n2": cluster.HostGW})
	checkBackends(t, "n1 v6", res["n1"].Backends6, map[string]cluster.Backend{"n2": want6})
	mtu, err := n1.fab.PodMTU()
	must(t, err)
	if want6 == cluster.VXLAN && mtu != 1450 {
		t.Errorf("PodMTU = %d, want 1450 (IPv6 may be encapsulated)", mtu)
	}
	mustReach(t, true, [2]*node{n1, n2})
}

func TestVXLANAcrossRouter(t *testing.T) {
	l := newLab(t, 1450, 1, 1)
	o := opts{mode: cluster.VXLAN, dual: true}
	l.start(t, o)
	res := l.reconcileAll(t, o)
	n1, n2 := l.nodes[0], l.nodes[1]
	checkBackends(t, "n1", res["n1"].Backends, map[string]cluster.Backend{"n2": cluster.VXLAN})
	checkBackends(t, "n1 v6", res["n1"].Backends6, map[string]cluster.Backend{"n2": cluster.VXLAN})
	// 2 routes, 2 neighbours, 1 FDB entry.
	if r := res["n1"]; r.Added != 5 || r.Removed != 0 {
		t.Errorf("n1: %+v, want 5 entries added", r)
	}
	routes := ownedRoutesText(t, n1)
	wantLine(t, routes, `^10\.244\.2\.0/24 via 10\.244\.2\.0 dev podnet\.vxlan proto 118 onlink`)
	wantLine(t, routes, `^fd00:244:2::/64 via fd00:244:2:: dev podnet\.vxlan proto 118 .*onlink`)
	wantLine(t, ipcmd(t, n1.ns, "neigh", "show", "dev", DefaultDevice), `^10\.244\.2\.0 lladdr `+n2.mac.String()+` PERMANENT`)
	wantLine(t, ipcmd(t, n1.ns, "neigh", "show", "dev", DefaultDevice), `^fd00:244:2:: lladdr `+n2.mac.String()+` PERMANENT`)
	wantLine(t, ipcmd(t, n1.ns, "link", "show", DefaultDevice), `link/ether `+n1.mac.String())
	wantLine(t, ipcmd(t, n1.ns, "-d", "link", "show", DefaultDevice), `vxlan id 1 local 198\.18\.1\.1 dev eth0 .*dstport 4789 nolearning`)
	wantLine(t, ipcmd(t, n1.ns, "addr", "show", DefaultDevice), `inet 10\.244\.1\.0/32`)
	wantLine(t, ipcmd(t, n1.ns, "addr", "show", DefaultDevice), `inet6 fd00:244:1::/128`)
	fdb, err := runBridge(n1, "fdb", "show", "dev", DefaultDevice)
	must(t, err)
	wantLine(t, fdb, `^`+n2.mac.String()+` dst 198\.18\.2\.2 self permanent`)
	mustReach(t, true, [2]*node{n1, n2})

	// MTU: the pods use the computed MTU; a bulk transfer passes, a DF
	// datagram filling it arrives, one byte more fails at the sender.
	mtu, err := n1.fab.PodMTU()
	must(t, err)
	if mtu != 1450 {
		t.Fatalf("PodMTU = %d, want 1450", mtu)
	}
	if err := tcpExchange(n1, n2, false, 32<<20); err != nil {
		t.Error(err)
	}
	if err := tcpExchange(n2, n1, true, 32<<20); err != nil {
		t.Error(err)
	}
	if err := udpDF(n1, n2, mtu-28); err != nil {
		t.Errorf("DF datagram at the pod MTU: %v", err)
	}
	if err := udpDF(n1, n2, mtu-27); !isMsgSize(err) {
		t.Errorf("DF datagram over the pod MTU: %v, want EMSGSIZE", err)
	}
	restartUnchanged(t, l, n1, o)
}

// TestVXLANOverIPv6Underlay: an IPv6-only underlay carries VXLAN for both
// pod families, with the IPv6 encapsulation overhead.
func TestVXLANOverIPv6Underlay(t *testing.T) {
	l := newLab(t, 1430, 1, 1)
	o := opts{mode: cluster.VXLAN, dual: true, underlayV6: true}
	for _, n := range l.nodes {
		c := n.config(o)
		c.LocalIP = nil
		f, err := New(c, n.h)
		must(t, err)
		n.fab = f
		local, err := f.Setup()
		if err != nil {
			t.Fatal(err)
		}
		n.mac = local.VTEPMAC
	}
	n1, n2 := l.nodes[0], l.nodes[1]
	for _, n := range l.nodes {
		peers := []fabric.Peer{n1.peer(o), n2.peer(o)}
		for i := range peers {
			peers[i].IP = nil
		}
		if _, err := n.fab.Reconcile(peers); err != nil {
			t.Fatal(err)
		}
	}
	if mtu, _ := n1.fab.PodMTU(); mtu != 1430 {
		t.Errorf("PodMTU = %d, want 1430", mtu)
	}
	fdb, err := runBridge(n1, "fdb", "show", "dev", DefaultDevice)
	must(t, err)
	wantLine(t, fdb, `^`+n2.mac.String()+` dst fd00:18:2::2 self permanent`)
	mustReach(t, true, [2]*node{n1, n2})
	if err := tcpExchange(n1, n2, false, 8<<20); err != nil {
		t.Error(err)
	}
}

func TestAuto(t *testing.T) {
	l := newLab(t, 1450, 2, 1)
	o := opts{mode: cluster.Auto, dual: true, underlayV6: true}
	l.start(t, o)
	res := l.reconcileAll(t, o)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	checkBackends(t, "n1", res["n1"].Backends, map[string]cluster.Backend{"n2": cluster.HostGW, "n3": cluster.VXLAN})
	checkBackends(t, "n1 v6", res["n1"].Backends6, map[string]cluster.Backend{"n2": cluster.HostGW, "n3": cluster.VXLAN})
	checkBackends(t, "n3", res["n3"].Backends, map[string]cluster.Backend{"n1": cluster.VXLAN, "n2": cluster.VXLAN})
	routes := ownedRoutesText(t, n1)
	wantLine(t, routes, `^10\.244\.2\.0/24 via 198\.18\.1\.2 dev eth0 proto 118`)
	wantLine(t, routes, `^fd00:244:2::/64 via fd00:18:1::2 dev eth0 proto 118`)
	wantLine(t, routes, `^10\.244\.3\.0/24 via 10\.244\.3\.0 dev podnet\.vxlan proto 118 onlink`)
	wantLine(t, routes, `^fd00:244:3::/64 via fd00:244:3:: dev podnet\.vxlan proto 118 .*onlink`)
	mustReach(t, true, [2]*node{n1, n2}, [2]*node{n1, n3}, [2]*node{n2, n3})
	restartUnchanged(t, l, n1, o)
}

// TestPeerRemoval: a departed peer's route, neighbour and FDB entry go,
// the others stay as they are, and a foreign route is never touched.
func TestPeerRemoval(t *testing.T) {
	l := newLab(t, 1450, 2, 1)
	o := opts{mode: cluster.Auto, dual: true}
	l.start(t, o)
	l.reconcileAll(t, o)
	n1, n2, n3 := l.nodes[0], l.nodes[1], l.nodes[2]
	eth, err := n1.h.LinkByName("eth0")
	must(t, err)
	foreign := &netlink.Route{Dst: cidr("10.99.0.0/24"), Gw: n2.ip, LinkIndex: eth.Attrs().Index, Protocol: netlink.RouteProtocol(4)}
	must(t, n1.h.RouteAdd(foreign))
	vx, err := n1.h.LinkByName(DefaultDevice)
	must(t, err)
	foreignNeigh := &netlink.Neigh{LinkIndex: vx.Attrs().Index, IP: net.IPv4(10, 250, 0, 1), State: netlink.NUD_REACHABLE,
		HardwareAddr: net.HardwareAddr{0x02, 0, 0, 0, 0, 1}}
	must(t, n1.h.NeighAdd(foreignNeigh))
	before := ipcmd(t, n1.ns, "route", "show", "10.244.2.0/24")

	res, err := n1.fab.Reconcile(l.peers(o, "n3"))
	if err != nil {
		t.Fatal(err)
	}
	// n3: IPv4 and IPv6 routes, two neighbours, one FDB entry.
	if res.Removed != 5 || res.Added != 0 || res.Changed != 0 {
		t.Errorf("removal: %+v, want 5 removed", res)
	}
	routes := ownedRoutesText(t, n1)
	if strings.Contains(routes, "10.244.3.0") || strings.Contains(routes, "fd00:244:3::") {
		t.Errorf("n3's routes remain:\n%s", routes)
	}
	neighs := ipcmd(t, n1.ns, "neigh", "show", "dev", DefaultDevice)
	if strings.Contains(neighs, "10.244.3.0") || strings.Contains(neighs, n3.mac.String()) {
		t.Errorf("n3's neighbours remain:\n%s", neighs)
	}
	wantLine(t, neighs, `^10\.250\.0\.1 lladdr 02:00:00:00:00:01`)
	fdb, err := runBridge(n1, "fdb", "show", "dev", DefaultDevice)
	must(t, err)
	if strings.Contains(fdb, n3.mac.String()) {
		t.Errorf("n3's FDB entry remains:\n%s", fdb)
	}
	if after := ipcmd(t, n1.ns, "route", "show", "10.244.2.0/24"); after != before {
		t.Errorf("n2's route changed: %q → %q", before, after)
	}
	wantLine(t, ipcmd(t, n1.ns, "route", "show", "10.99.0.0/24"), `^10\.99\.0\.0/24 via 198\.18\.1\.2 dev eth0 proto static`)
	mustReach(t, true, [2]*node{n1, n2})

	// A changed subnet: the old route goes, the new one comes.
	p2 := n2.peer(o)
	p2.Subnet = cidr("10.244.20.0/24")
	res, err = n1.fab.Reconcile([]fabric.Peer{p2})
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 1 || res.Removed != 1 {
		t.Errorf("changed subnet: %+v, want 1 added, 1 removed", res)
	}
	routes = ownedRoutesText(t, n1)
	wantLine(t, routes, `^10\.244\.20\.0/24 via 198\.18\.1\.2 dev eth0`)
	if strings.Contains(routes, "10.244.2.0/24") {
		t.Errorf("old subnet's route remains:\n%s", routes)
	}

	// A foreign route in the way is reported for that peer only.
	p2.Subnet = cidr("10.99.0.0/24")
	if _, err := n1.fab.Reconcile([]fabric.Peer{p2}); err == nil || !strings.Contains(err.Error(), "does not own") {
		t.Errorf("reconcile onto a foreign route: %v", err)
	}
	wantLine(t, ipcmd(t, n1.ns, "route", "show", "10.99.0.0/24"), `proto static`)

	// Teardown: nothing of podnet's is left, the foreign route is.
	must(t, n1.fab.Teardown())
	if routes := ownedRoutesText(t, n1); routes != "" {
		t.Errorf("routes left after teardown:\n%s", routes)
	}
	if _, err := n1.h.LinkByName(DefaultDevice); err == nil {
		t.Error("VXLAN device left after teardown")
	}
	wantLine(t, ipcmd(t, n1.ns, "route", "show", "10.99.0.0/24"), `proto static`)
}

// TestWatchAndRecreate: deleting the VXLAN device or one of podnet's
// routes wakes Watch; the next Reconcile restores them and traffic flows.
func TestWatchAndRecreate(t *testing.T) {
	l := newLab(t, 1450, 1, 1)
	o := opts{mode: cluster.VXLAN, dual: true}
	l.start(t, o)
	l.reconcileAll(t, o)
	n1, n2 := l.nodes[0], l.nodes[1]
	mustReach(t, false, [2]*node{n1, n2})

	// Each disturbance is watched by a fresh subscription made after the
	// last Reconcile, so only the disturbance itself can trigger it.
	waitTrigger := func(what string, disturb func()) {
		t.Helper()
		// Bounds a hang only; a trigger arrives within milliseconds.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		w, err := n1.fab.Subscribe(ctx)
		must(t, err)
		triggers := make(chan struct{}, 1)
		runErr := make(chan error, 1)
		go func() {
			runErr <- w.Run(func() {
				select {
				case triggers <- struct{}{}:
				default:
				}
			})
		}()
		disturb()
		select {
		case <-triggers:
		case <-ctx.Done():
			t.Fatalf("%s: Watch did not trigger", what)
		}
		cancel()
		if err := <-runErr; err != nil {
			t.Errorf("%s: Run: %v", what, err)
		}
	}

	waitTrigger("device deleted", func() {
		vx, err := n1.h.LinkByName(DefaultDevice)
		must(t, err)
		must(t, n1.h.LinkDel(vx))
	})
	res, err := n1.fab.Reconcile(l.peers(o))
	if err != nil {
		t.Fatal(err)
	}
	if !res.DeviceCreated || res.Added != 5 {
		t.Errorf("after device deletion: %+v, want the device and 5 entries recreated", res)
	}
	mustReach(t, true, [2]*node{n1, n2})

	waitTrigger("route deleted", func() {
		ipcmd(t, n1.ns, "route", "del", "10.244.2.0/24")
	})
	res, err = n1.fab.Reconcile(l.peers(o))
	if err != nil {
		t.Fatal(err)
	}
	if res.Added != 1 || res.DeviceCreated {
		t.Errorf("after route deletion: %+v, want one route added", res)
	}

	waitTrigger("device down", func() {
		ipcmd(t, n1.ns, "link", "set", DefaultDevice, "down")
	})
	if _, err := n1.fab.Reconcile(l.peers(o)); err != nil {
		t.Fatal(err)
	}
	mustReach(t, false, [2]*node{n1, n2})
}

// TestPeerWithoutVTEPMAC: in auto mode, a peer across the router that has
// not published its VTEP MAC yet is pending (no error, not programmed),
// while the same-segment peer is reached over host-gw at once.
func TestPeerWithoutVTEPMAC(t *testing.T) {
	l := newLab(t, 1450, 2, 1)
	o := opts{mode: cluster.Auto}
	l.start(t, o)
	n1 := l.nodes[0]
	peers := l.peers(o, "n1")
	for i := range peers {
		if peers[i].Name == "n3" {
			peers[i].VTEPMAC = nil
		}
	}
	res, err := n1.fab.Reconcile(peers)
	if err != nil {
		t.Fatalf("Reconcile with a peer lacking its VTEP MAC: %v", err)
	}
	checkBackends(t, "n1", res.Backends, map[string]cluster.Backend{"n2": cluster.HostGW})
	if len(res.Pending) != 1 || res.Pending[0] != "n3" {
		t.Errorf("pending peers %v, want [n3]", res.Pending)
	}
	if routes := ownedRoutesText(t, n1); strings.Contains(routes, "podnet.vxlan") {
		t.Errorf("a route over VXLAN to the pending peer:\n%s", routes)
	}
}
