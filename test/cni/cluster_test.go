package cni

import (
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// The node's pod subnets in the cluster conflist tests.
var clusterSubnets = []string{"10.244.7.0/24", "fd00:10:244:7::/64"}

// clusterList is the cluster conflist the agent writes, at version v.
func clusterList(t testing.TB, v, dataDir string) *libcni.NetworkConfigList {
	t.Helper()
	l, err := sandbox.Cluster(v, dataDir, clusterSubnets...)
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Plugins) != 1 || l.Plugins[0].Network.Type != "podnet" {
		t.Fatalf("the cluster conflist is not the podnet plugin alone: %s", l.Bytes)
	}
	return l
}

// clusterCaps are a pod's capability args as containerd sends them for
// hostPorts and the kubernetes.io/{ingress,egress}-bandwidth annotations
// (8M each: no burst given).
func clusterCaps() map[string]any {
	return sandbox.Caps(portmapCaps(), sandbox.BandwidthCap(8_000_000, math.MaxUint32, 8_000_000, math.MaxUint32))
}

// hostLinks lists the host namespace's podnet links (veths and ifbs).
func hostLinks(t *testing.T, sb *sandbox.Sandbox) []sandbox.Link {
	t.Helper()
	links, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	var out []sandbox.Link
	for _, l := range links {
		if strings.HasPrefix(l.Name, "pn") {
			out = append(out, l)
		}
	}
	return out
}

// linksOf are the links whose alias names the container.
func linksOf(links []sandbox.Link, containerID string) []string {
	var out []string
	for _, l := range links {
		if strings.Contains(l.Alias, "/"+containerID+"/") {
			out = append(out, l.Name)
		}
	}
	return out
}

// podnetRulesOf are the container's rules in podnet's tables.
func podnetRulesOf(t *testing.T, sb *sandbox.Sandbox, containerID string) []sandbox.Rule {
	t.Helper()
	rules, err := sandbox.PodnetRules(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	return rulesOf(rules, containerID)
}

// TestClusterConflist runs the cluster conflist the agent writes — the
// podnet plugin alone, with the portMappings and bandwidth capabilities —
// through libcni for every spec version, with a pod's host ports and
// bandwidth annotations as containerd sends them: the ports are forwarded
// (from the node itself, from a peer on its network, from the pod to
// itself, IPv4 and IPv6, TCP and UDP, hostIP restrictions), both
// directions shaped, CHECK verifies both, STATUS passes; DEL as
// containerd sends it (no netns, no capability args) removes every rule,
// link and qdisc, and repeats; GC removes what a stale attachment left.
func TestClusterConflist(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "podnet", "host-local")
	for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(v, func(t *testing.T) {
			ctx := ctxFor(t)
			e := &pmEnv{sb: newSandbox(t, bin)}
			e.list = clusterList(t, v, e.sb.DataDir("ipam"))
			var err error
			if e.peer, err = e.sb.NewPeer(nodeAddrs, peerAddrs); err != nil {
				t.Fatalf("peer: %v", err)
			}
			e.pod = newPod(t, e.sb)
			e.rt = e.pod.RT(clusterCaps())
			r, err := e.sb.Add(ctx, e.list, e.rt)
			if err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			serveEcho(t, e)

			// The result lists the host veth, the pod's interface, then the
			// ifb, as the bandwidth plugin appends it.
			res := toCurrent(t, r)
			mine := linksOf(hostLinks(t, e.sb), e.pod.ContainerID)
			if len(res.Interfaces) != 3 || res.Interfaces[1].Name != "eth0" || !strings.HasPrefix(res.Interfaces[2].Name, "pni") {
				t.Fatalf("result interfaces %+v", res.Interfaces)
			}
			if len(mine) != 2 {
				t.Fatalf("host links of the pod %v, want its veth and its ifb", mine)
			}
			veth := res.Interfaces[0].Name
			if s := observeShaping(t, e.sb, veth); !s.hostTbf || !s.hostIngress || s.ifb != res.Interfaces[2].Name || !s.ifbTbf {
				t.Errorf("shaping after ADD = %+v, want a tbf and an ingress qdisc on %s redirecting to %s, with a tbf", s, veth, res.Interfaces[2].Name)
			}

			host, peer, pod := e.sb.Host.NS, e.peer.NS.NS, e.pod.NS.NS
			v4 := func(p string) string { return net.JoinHostPort(nodeIP4, p) }
			v6 := func(p string) string { return net.JoinHostPort(nodeIP6, p) }
			checkReach(t, []hostPortConn{
				{"host to node address", host, "tcp", v4("8080"), true},
				{"host to localhost", host, "tcp", "127.0.0.1:8080", true},
				{"host udp to node address", host, "udp", v4("5353"), true},
				{"host ipv6", host, "tcp", v6("8080"), true},
				{"peer", peer, "tcp", v4("8080"), true},
				{"peer udp", peer, "udp", v4("5353"), true},
				{"peer ipv6", peer, "tcp", v6("8080"), true},
				{"peer udp ipv6", peer, "udp", v6("5353"), true},
				{"hairpin", pod, "tcp", v4("8080"), true},
				{"hostIP v4 on its address", peer, "tcp", v4("8081"), true},
				{"hostIP v6 on its address", peer, "tcp", v6("8082"), true},
				{"hostIP v6 over IPv4", peer, "tcp", v4("8082"), false},
			})

			if atLeast(v, "0.4.0") {
				if err := e.sb.Check(ctx, e.list, e.rt); err != nil {
					t.Errorf("CHECK: %s", cniruntime.Describe(err))
				}
				if err := e.sb.Check(ctx, e.list, e.pod.RT(sandbox.Caps(portmapCaps(), sandbox.BandwidthCap(9_000_000, math.MaxUint32, 8_000_000, math.MaxUint32)))); err == nil {
					t.Error("CHECK with another ingress rate passed")
				}
				if err := e.sb.Check(ctx, e.list, e.pod.RT(sandbox.Caps(sandbox.PortMappings(sandbox.PortMapping("tcp", 9999, 80, "")), sandbox.BandwidthCap(8_000_000, math.MaxUint32, 8_000_000, math.MaxUint32)))); err == nil {
					t.Error("CHECK with another port mapping passed")
				}
			}
			if atLeast(v, "1.1.0") {
				if err := e.sb.Status(ctx, e.list); err != nil {
					t.Errorf("STATUS: %s", cniruntime.Describe(err))
				}
			}
			if atLeast(v, "0.4.0") {
				// CHECK notices a missing forwarding rule.
				pm := rulesOf(portmapRules(t, e.sb), e.pod.ContainerID)
				if len(pm) == 0 {
					t.Fatal("no portmap rules")
				}
				last := pm[len(pm)-1]
				nftDo(t, e.sb.Host.NS, "delete", "rule", last.Family, last.Table, last.Chain, "handle", itoa(last.Handle))
				if err := e.sb.Check(ctx, e.list, e.rt); err == nil {
					t.Error("CHECK passed with a forwarding rule deleted")
				}
			}

			// DEL as containerd sends it: no netns (the sandbox is gone),
			// no capability args; then again.
			if err := e.pod.Remove(); err != nil {
				t.Fatal(err)
			}
			rt := *e.rt
			rt.NetNS, rt.CapabilityArgs = "", nil
			for i := range 2 {
				if err := e.sb.Del(ctx, e.list, &rt); err != nil {
					t.Fatalf("DEL %d: %s", i+1, cniruntime.Describe(err))
				}
			}
			if left := podnetRulesOf(t, e.sb, e.pod.ContainerID); len(left) != 0 {
				t.Errorf("rules left after DEL: %v", left)
			}
			if left := hostLinks(t, e.sb); len(left) != 0 {
				t.Errorf("links left after DEL: %+v", left)
			}
			checkReach(t, []hostPortConn{{"host after DEL", host, "tcp", v4("8080"), false}})
		})
	}
}

// serveEcho runs the echo servers (TCP 80, UDP 53) in e's pod.
func serveEcho(t *testing.T, e *pmEnv) {
	t.Helper()
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
}

// TestClusterConflistGC: GC of the cluster conflist (libcni's cache gone,
// so the plugin does the work) removes the port forwarding, the veth and
// the ifb of the attachments the runtime no longer lists, and keeps the
// valid one's.
func TestClusterConflistGC(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "podnet", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	list := clusterList(t, "1.1.0", sb.DataDir("ipam"))
	keep, lost := newPod(t, sb), newPod(t, sb)
	for i, p := range []*sandbox.Pod{keep, lost} {
		caps := sandbox.Caps(sandbox.PortMappings(sandbox.PortMapping("udp", 5353+i, 53, "")), sandbox.BandwidthCap(8_000_000, 0, 8_000_000, 0))
		if _, err := sb.Add(ctx, list, p.RT(caps)); err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
	}
	for _, p := range []*sandbox.Pod{keep, lost} {
		if n, r := len(linksOf(hostLinks(t, sb), p.ContainerID)), len(podnetRulesOf(t, sb, p.ContainerID)); n != 2 || r == 0 {
			t.Fatalf("after ADD: %d links and %d rules of a pod, want its veth and ifb and its forwarding", n, r)
		}
	}
	if err := lost.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(sb.Dir, "cache")); err != nil {
		t.Fatal(err)
	}
	if err := sb.GC(ctx, list, []types.GCAttachment{keep.Attachment()}); err != nil {
		t.Fatalf("GC: %s", cniruntime.Describe(err))
	}
	if left, r := linksOf(hostLinks(t, sb), lost.ContainerID), podnetRulesOf(t, sb, lost.ContainerID); len(left) != 0 || len(r) != 0 {
		t.Errorf("GC left the stale attachment's links %v and rules %v", left, r)
	}
	if n, r := len(linksOf(hostLinks(t, sb), keep.ContainerID)), len(podnetRulesOf(t, sb, keep.ContainerID)); n != 2 || r == 0 {
		t.Errorf("GC took from the valid attachment: %d links, %d rules left", n, r)
	}
}

// TestClusterConflistRollback: an ADD that fails in its last step, the
// egress shaping (the ifb's name is taken), after the veth and the port
// forwarding are in place, leaves nothing behind: no rule, no link, no
// address; once the name is free, ADD succeeds.
func TestClusterConflistRollback(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "podnet", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	list := clusterList(t, "1.0.0", dataDir)
	pod := newPod(t, sb)
	rt := pod.RT(clusterCaps())
	// Take the ifb's name, as a link of somebody else.
	h, err := netlink.NewHandleAt(sb.Host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	ifb := link.IfbName(attachment.ID{Network: list.Name, ContainerID: pod.ContainerID, IfName: pod.IfName})
	if err := h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifb}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Add(ctx, list, rt); err == nil {
		t.Fatal("ADD succeeded with the ifb's name taken")
	}
	if left := podnetRulesOf(t, sb, pod.ContainerID); len(left) != 0 {
		t.Errorf("rules left after a failed ADD: %v", left)
	}
	links := hostLinks(t, sb)
	if len(links) != 1 || links[0].Name != ifb {
		t.Errorf("host links after a failed ADD: %+v, want only the foreign %s", links, ifb)
	}
	if allocs, err := sandbox.Allocations(dataDir, pod.ContainerID); err != nil || len(allocs) != 0 {
		t.Errorf("allocations after a failed ADD: %v %v", allocs, err)
	}
	if err := h.LinkDel(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: ifb}}); err != nil {
		t.Fatal(err)
	}
	if _, err := sb.Add(ctx, list, rt); err != nil {
		t.Fatalf("ADD once the name is free: %s", cniruntime.Describe(err))
	}
}
