package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	clientv3 "go.etcd.io/etcd/client/v3"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/datastore/etcd"
	"github.com/podnet/podnet/internal/fabric/routed"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/logtest"
	"github.com/podnet/podnet/internal/testing/poll"
)

// testNode is an agent run in-process for a throwaway "node" namespace
// whose underlay is a veth to a "peer" namespace, with its embedded etcd
// on loopback ports, and an etcd client beside it playing another node.
type testNode struct {
	agent  *Agent
	node   *node
	cfg    Config
	ns     *netns.Temp
	logs   *logtest.Buffer
	client *clientv3.Client
	stop   func()
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func startNode(t *testing.T) *testNode {
	t.Helper()
	tn, err := startNodeWith(t, func(*Config) {})
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

// startNodeWith starts a node whose configuration mutate adjusted, and
// returns why it could not start.
func startNodeWith(t *testing.T, mutate func(*Config)) (*testNode, error) {
	t.Helper()
	env := newNodeEnv(t)
	cfg := env.cfg
	cfg.EtcdClientURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	cfg.EtcdPeerURL = fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
	mutate(&cfg)
	tn, err := env.start(t, cfg)
	if err != nil {
		return nil, err
	}
	cli, err := etcd.Open(context.Background(), etcd.Config{Endpoints: []string{cfg.EtcdClientURL}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	tn.client = cli.Client()
	tn.waitReady(t)
	return tn, nil
}

// nodeEnv is where a test node runs: a throwaway "node" namespace whose
// underlay eth0 (192.0.2.1/24) is a veth to a "peer" namespace, and the
// configuration of an agent for it (all its files in a temporary dir, no
// health server, a 1 s resync).
type nodeEnv struct {
	ns, peer *netns.Temp
	cfg      Config
}

func newNodeEnv(t *testing.T) *nodeEnv {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for network namespaces")
	}
	ns, err := netns.NewTemp("pna")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	peer, err := netns.NewTemp("pnp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Remove() })
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Flags: net.FlagUp}, PeerName: "eth0", PeerNamespace: netlink.NsFd(peer.Fd())}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	addr, _ := netlink.ParseAddr("192.0.2.1/24")
	if err := h.AddrAdd(veth, addr); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	cni := filepath.Join(dir, "podnet-cni")
	if err := os.WriteFile(cni, []byte("#!/bin/sh\necho podnet\necho portmap\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := Defaults()
	cfg.NodeName = "n1"
	cfg.NetNS = ns.NS
	cfg.Iface = "eth0"
	cfg.DataDir = filepath.Join(dir, "data")
	cfg.LeaseTTL = 5 * time.Second
	cfg.CNIBinary = cni
	cfg.CNIBinDir = filepath.Join(dir, "bin")
	cfg.CNIConfDir = filepath.Join(dir, "net.d")
	cfg.IPAMDir = filepath.Join(dir, "ipam")
	cfg.Listen = ""
	cfg.Resync = time.Second
	return &nodeEnv{ns: ns, peer: peer, cfg: cfg}
}

// start starts an agent of cfg in the node namespace, stopped when the
// test ends, and returns why it could not start.
func (env *nodeEnv) start(t *testing.T, cfg Config) (*testNode, error) {
	t.Helper()
	logs := &logtest.Buffer{}
	a, err := New(cfg, slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug})))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n, err := a.start(ctx, true)
	if err != nil {
		cancel()
		return nil, err
	}
	done := make(chan error, 1)
	go func() { done <- a.run(ctx, n) }()
	tn := &testNode{agent: a, node: n, cfg: cfg, ns: env.ns, logs: logs}
	stopped := false
	tn.stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("agent: %v", err)
		}
	}
	t.Cleanup(func() {
		tn.stop()
		if t.Failed() {
			t.Logf("agent log:\n%s", logs)
		}
	})
	return tn, nil
}

func (tn *testNode) waitReady(t *testing.T) {
	t.Helper()
	waitFor(t, "the agent ready", func() bool { return tn.node.manager.NotReady() == "" })
}

// waitFor polls cond until it holds, failing the test after 30 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	poll.Until(t, 30*time.Second, what, cond)
}

// getStatus fetches /status through the agent's handler.
func (tn *testNode) getStatus(t *testing.T) cluster.NodeStatus {
	t.Helper()
	rec := httptest.NewRecorder()
	tn.node.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/status", nil))
	var st cluster.NodeStatus
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("/status: %v: %s", err, rec.Body)
	}
	return st
}

// TestSubnetChangeFollowed forces what a partition can do: the node's lease
// is lost and, meanwhile, another node takes its subnet. The membership
// comes back with another subnet, and everything that depends on it follows
// — the node record, the VTEP address and MAC of the fabric, the conflist,
// the remembered lease, the status and the metric — and the datastore's own
// messages reach the agent's log.
func TestSubnetChangeFollowed(t *testing.T) {
	tn := startNode(t)
	ctx := context.Background()
	before := tn.getStatus(t)
	old := before.Node.Subnet.String()
	if old != "10.244.0.0/24" {
		t.Fatalf("joined with %s", old)
	}
	prefix := tn.cfg.Prefix
	nodeKey, theftKey := prefix+"nodes/n1", prefix+"claims/thief/10.244.0.0_24"
	resp, err := tn.client.Get(ctx, nodeKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("record of n1: %v", err)
	}
	lease := clientv3.LeaseID(resp.Kvs[0].Lease)
	// The thief claims the subnet (without a lease: its claim stays), then
	// n1's lease goes with its older claim: the subnet is the thief's.
	if _, err := tn.client.Txn(ctx).Then(
		clientv3.OpDelete(nodeKey), clientv3.OpPut(theftKey, "10.244.0.0/24"),
	).Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := tn.client.Revoke(ctx, lease); err != nil {
		t.Fatal(err)
	}

	const want = "10.244.1.0/24"
	waitFor(t, "the new subnet in /status", func() bool { return tn.getStatus(t).Node.Subnet.String() == want })
	conflist := filepath.Join(tn.cfg.CNIConfDir, cniconf.FileName)
	waitFor(t, "the conflist on the new subnet", func() bool {
		b, _ := os.ReadFile(conflist)
		return bytes.Contains(b, []byte(want)) && !bytes.Contains(b, []byte(old))
	})
	h, err := netlink.NewHandleAt(tn.ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var mac string
	waitFor(t, "the VTEP address of the new subnet", func() bool {
		l, err := h.LinkByName(routed.DefaultDevice)
		if err != nil {
			return false
		}
		addrs, _ := h.AddrList(l, netlink.FAMILY_V4)
		mac = l.Attrs().HardwareAddr.String()
		return len(addrs) == 1 && addrs[0].IPNet.String() == "10.244.1.0/32"
	})
	waitFor(t, "the record republished with the new VTEP MAC", func() bool {
		resp, err := tn.client.Get(ctx, nodeKey)
		if err != nil || len(resp.Kvs) != 1 {
			return false
		}
		var n cluster.Node
		return json.Unmarshal(resp.Kvs[0].Value, &n) == nil && n.Subnet.String() == want && n.VTEPMAC == mac
	})
	if mac == before.Node.VTEPMAC {
		t.Errorf("VTEP MAC %s unchanged: it derives from the subnet", mac)
	}
	if b, _ := os.ReadFile(filepath.Join(tn.cfg.DataDir, "lease.json")); !bytes.Contains(b, []byte(want)) {
		t.Errorf("remembered lease: %s", b)
	}
	st := tn.getStatus(t)
	if st.SubnetChanges != 1 || !st.Ready {
		t.Errorf("status after the change: %+v", st)
	}
	if got := metric(t, tn, "podnet_agent_subnet_changes_total"); got != 1 {
		t.Errorf("podnet_agent_subnet_changes_total = %v", got)
	}
	logs := tn.logs.String()
	for _, line := range []string{"lease lost, re-acquiring", "lease re-acquired", "membership came back with other pod subnets"} {
		if !strings.Contains(logs, line) {
			t.Errorf("the log lacks %q", line)
		}
	}
}

// metric is the value of a registered counter or gauge without labels, or
// the sample count of a histogram.
func metric(t *testing.T, tn *testNode, name string) float64 {
	t.Helper()
	mfs, err := tn.node.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.Metric) == 1 {
			m := mf.Metric[0]
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// TestStatusDuringChurn polls /status while peers come and go; under the
// race detector it catches a status that shares the reconcile's maps.
func TestStatusDuringChurn(t *testing.T) {
	tn := startNode(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for ctx.Err() == nil {
			tn.getStatus(t)
		}
	}()
	for i := range 40 {
		rec := cluster.Node{Name: fmt.Sprintf("p%d", i%4), IP: net.IPv4(192, 0, 2, byte(10+i%4))}
		_, rec.Subnet, _ = net.ParseCIDR(fmt.Sprintf("10.244.%d.0/24", 10+i%4))
		b, _ := json.Marshal(rec)
		key := tn.cfg.Prefix + "nodes/" + rec.Name
		var err error
		if i%8 < 4 {
			_, err = tn.client.Put(ctx, key, string(b))
		} else {
			_, err = tn.client.Delete(ctx, key)
		}
		if err != nil {
			t.Fatal(err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	waitFor(t, "the churn to settle", func() bool { return tn.getStatus(t).Peers == 0 })
	cancel()
	wg.Wait()
}

// TestPodCount: a pod attached to the cluster network on the node (the host
// end of its veth, stamped with its attachment) is counted in /status and
// the podnet_node_pods gauge, once even with the ifb of its shaping, and
// uncounted once it is gone; a link of another network is not counted.
func TestPodCount(t *testing.T) {
	tn := startNode(t)
	h, err := netlink.NewHandleAt(tn.ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	add := func(network, peer string) netlink.Link {
		a := attachment.ID{Network: network, ContainerID: "c-" + peer, IfName: "eth0"}
		l, err := link.CreateOwned(h, &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: link.HostVethName(a)}, PeerName: peer}, a)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	pod := add(cniconf.NetworkName, "p0")
	a := attachment.ID{Network: cniconf.NetworkName, ContainerID: "c-p0", IfName: "eth0"}
	ifb, err := link.CreateOwned(h, &netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: link.IfbName(a)}}, a)
	if err != nil {
		t.Fatal(err)
	}
	add("other", "p1")
	waitFor(t, "one pod counted", func() bool { return tn.getStatus(t).Pods == 1 && metric(t, tn, "podnet_node_pods") == 1 })
	for _, l := range []netlink.Link{pod, ifb} {
		if err := h.LinkDel(l); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "no pod counted", func() bool { return tn.getStatus(t).Pods == 0 && metric(t, tn, "podnet_node_pods") == 0 })
}

// TestForgedRecordsChangeNoRoute writes node records around the subnet
// leases, as anyone able to write to the datastore could: halves of the
// address space, this node's own subnet, a subnet leased to nobody. The
// node's routes do not change, and the refusals are counted.
func TestForgedRecordsChangeNoRoute(t *testing.T) {
	tn := startNode(t)
	ctx := context.Background()
	h, err := netlink.NewHandleAt(tn.ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	routes := func() string {
		rs, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Table: unix.RT_TABLE_MAIN}, netlink.RT_FILTER_TABLE)
		if err != nil {
			t.Fatal(err)
		}
		var b []string
		for _, r := range rs {
			b = append(b, r.String())
		}
		slices.Sort(b)
		return strings.Join(b, "\n")
	}
	before := routes()
	for _, rec := range []string{
		`{"name":"evil1","ip":"192.0.2.66","subnet":"0.0.0.0/1"}`,
		`{"name":"evil2","ip":"192.0.2.66","subnet":"128.0.0.0/1"}`,
		`{"name":"a-thief","ip":"192.0.2.66","subnet":"10.244.0.0/24"}`,
		`{"name":"stray","ip":"192.0.2.66","subnet":"10.244.7.0/24"}`,
	} {
		var n cluster.Node
		if err := json.Unmarshal([]byte(rec), &n); err != nil {
			t.Fatal(err)
		}
		if _, err := tn.client.Put(ctx, tn.cfg.Prefix+"nodes/"+n.Name, rec); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, "the forged records refused", func() bool { return metric(t, tn, "podnet_agent_node_records_refused_total") == 4 })
	// Two reconciles later (a resync at least), nothing changed either.
	n := metric(t, tn, "podnet_agent_reconcile_seconds")
	waitFor(t, "two more reconciles", func() bool { return metric(t, tn, "podnet_agent_reconcile_seconds") >= n+2 })
	if after := routes(); after != before {
		t.Fatalf("routes changed:\n%s\nwas:\n%s", after, before)
	}
	if st := tn.getStatus(t); st.Peers != 0 || !st.Ready {
		t.Fatalf("status: %+v", st)
	}
}

// TestUnderlayOverlapRefused: a cluster CIDR that overlaps the node's
// underlay network is refused at start, before anything is installed.
func TestUnderlayOverlapRefused(t *testing.T) {
	_, err := startNodeWith(t, func(c *Config) { c.Cluster.ClusterCIDR = "192.0.0.0/16" })
	if err == nil || !strings.Contains(err.Error(), "overlaps the node's underlay network 192.0.2.0/24") {
		t.Fatalf("start = %v", err)
	}
}
