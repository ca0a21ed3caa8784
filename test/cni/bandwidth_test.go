package cni

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// bwList is bridge+host-local followed by bandwidth, as a node's conflist.
func bwList(v, dataDir string) sandbox.ConfList {
	return sandbox.ConfList{Name: "podnet-bw", CNIVersion: v, Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal("10.91.0.0/24", dataDir)),
		sandbox.Bandwidth(),
	}}
}

// requireTC skips when the kernel lacks a tc feature the bandwidth plugin
// needs (ifb, tbf, ingress qdisc, u32, act_mirred), probed in a throwaway
// namespace.
func requireTC(t *testing.T) {
	t.Helper()
	requireRoot(t)
	ns, err := netns.NewTemp("pnprobe")
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Remove()
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	step := func(what string, err error) {
		switch {
		case err == nil:
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ENODEV):
			t.Skipf("kernel lacks %s (%v): bandwidth kernel test skipped", what, err)
		default:
			t.Fatalf("probe %s: %v", what, err)
		}
	}
	step("ifb", h.LinkAdd(&netlink.Ifb{LinkAttrs: netlink.LinkAttrs{Name: "probeifb"}}))
	ifb, err := h.LinkByName("probeifb")
	step("ifb", err)
	step("veth", h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "probea"}, PeerName: "probeb"}))
	v, err := h.LinkByName("probea")
	step("veth", err)
	step("sch_tbf", h.QdiscAdd(&netlink.Tbf{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: v.Attrs().Index, Handle: netlink.MakeHandle(1, 0), Parent: netlink.HANDLE_ROOT}, Rate: 125000, Buffer: netlink.Xmittime(125000, 10000), Limit: 20000}))
	step("sch_ingress", h.QdiscAdd(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: v.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_INGRESS}}))
	step("cls_u32 with act_mirred", h.FilterAdd(&netlink.U32{FilterAttrs: netlink.FilterAttrs{LinkIndex: v.Attrs().Index, Parent: netlink.MakeHandle(0xffff, 0), Priority: 1, Protocol: unix.ETH_P_ALL}, RedirIndex: ifb.Attrs().Index}))
}

// shaping is what the host namespace shows of a pod's shaping.
type shaping struct {
	hostTbf, hostIngress bool
	ifb                  string // name of the ifb redirected to, "" if none
	ifbTbf               bool
}

// observeShaping inspects the host veth hostIf and the ifbs in the host.
func observeShaping(t *testing.T, sb *sandbox.Sandbox, hostIf string) shaping {
	t.Helper()
	h, err := netlink.NewHandleAt(sb.Host.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	var s shaping
	if l, err := h.LinkByName(hostIf); err == nil {
		qs, _ := h.QdiscList(l)
		for _, q := range qs {
			switch q.(type) {
			case *netlink.Tbf:
				s.hostTbf = true
			case *netlink.Ingress:
				s.hostIngress = true
				fs, _ := h.FilterList(l, netlink.MakeHandle(0xffff, 0))
				for _, f := range fs {
					if u, ok := f.(*netlink.U32); ok && u.RedirIndex > 0 {
						if ifb, err := h.LinkByIndex(u.RedirIndex); err == nil {
							s.ifb = ifb.Attrs().Name
						}
					}
				}
			}
		}
	}
	if s.ifb != "" {
		ifb, _ := h.LinkByName(s.ifb)
		qs, _ := h.QdiscList(ifb)
		for _, q := range qs {
			if _, ok := q.(*netlink.Tbf); ok {
				s.ifbTbf = true
			}
		}
	}
	return s
}

// ifbs lists the ifb devices of the host namespace.
func ifbs(t *testing.T, sb *sandbox.Sandbox) []string {
	t.Helper()
	links, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range sandbox.LinksOfType(links, "ifb") {
		out = append(out, l.Name)
	}
	return out
}

// hostVeth is the host interface of a result: the veth without sandbox.
func hostVeth(t *testing.T, r types.Result, ifb []string) string {
	t.Helper()
	for _, i := range toCurrent(t, r).Interfaces {
		if i.Sandbox == "" && i.Name != "cni0" && !contains(ifb, i.Name) {
			return i.Name
		}
	}
	t.Fatalf("result has no host veth")
	return ""
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestBandwidth runs the bandwidth plugin after bridge+host-local for every
// spec version: both directions shaped after ADD, CHECK passes (and fails
// once a qdisc is gone), DEL removes the ifb, DEL with an empty netns too,
// and GC removes the ifb of an attachment that is no longer valid.
func TestBandwidth(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "bandwidth")
	for _, v := range listVersions {
		t.Run(v, func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			list := mustList(t, bwList(v, sb.DataDir("ipam")))
			pod := newPod(t, sb)
			rt := pod.RT(sandbox.BandwidthCap(8_000_000, 800_000, 4_000_000, 400_000))
			r, err := sb.Add(ctx, list, rt)
			if err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			ifb := ifbs(t, sb)
			if len(ifb) != 1 || !strings.HasPrefix(ifb[0], "pni") {
				t.Fatalf("ifbs after ADD = %v, want one pni…", ifb)
			}
			veth := hostVeth(t, r, ifb)
			if s := observeShaping(t, sb, veth); !s.hostTbf || !s.hostIngress || s.ifb != ifb[0] || !s.ifbTbf {
				t.Fatalf("shaping after ADD = %+v, want tbf and ingress on %s redirected to %s with a tbf", s, veth, ifb[0])
			}
			links, _ := sandbox.Links(sb.Host.NS)
			if l, _ := sandbox.FindLink(links, ifb[0]); !strings.HasPrefix(l.Alias, "podnet:podnet-bw/"+pod.ContainerID+"/eth0") {
				t.Errorf("ifb alias = %q, want the attachment identity", l.Alias)
			}
			if atLeast(v, "0.4.0") {
				if err := sb.Check(ctx, list, rt); err != nil {
					t.Errorf("CHECK: %s", cniruntime.Describe(err))
				}
				// A different rate than the one in force fails CHECK.
				if err := sb.Check(ctx, list, pod.RT(sandbox.BandwidthCap(9_000_000, 800_000, 4_000_000, 400_000))); err == nil {
					t.Error("CHECK with another ingress rate passed")
				}
			}
			if err := sb.Del(ctx, list, rt); err != nil {
				t.Fatalf("DEL: %s", cniruntime.Describe(err))
			}
			if got := ifbs(t, sb); len(got) != 0 {
				t.Errorf("ifbs after DEL = %v", got)
			}
			if err := sb.Del(ctx, list, rt); err != nil {
				t.Errorf("second DEL: %s", cniruntime.Describe(err))
			}

			// DEL with an empty netns (as ctr sends it) still removes the ifb.
			pod2 := newPod(t, sb)
			rt2 := pod2.RT(sandbox.BandwidthCap(0, 0, 4_000_000, 400_000))
			if _, err := sb.Add(ctx, list, rt2); err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			if err := pod2.Remove(); err != nil {
				t.Fatal(err)
			}
			rt2.NetNS = ""
			if err := sb.Del(ctx, list, rt2); err != nil {
				t.Errorf("DEL without netns: %s", cniruntime.Describe(err))
			}
			if got := ifbs(t, sb); len(got) != 0 {
				t.Errorf("ifbs after DEL without netns = %v", got)
			}

			// GC (1.1.0) removes the orphan's ifb, keeps the valid one's.
			if !atLeast(v, "1.1.0") {
				return
			}
			keep, lost := newPod(t, sb), newPod(t, sb)
			for _, p := range []*sandbox.Pod{keep, lost} {
				if _, err := sb.Add(ctx, list, p.RT(sandbox.BandwidthCap(0, 0, 4_000_000, 400_000))); err != nil {
					t.Fatalf("ADD: %s", cniruntime.Describe(err))
				}
			}
			before := ifbs(t, sb)
			if err := os.RemoveAll(filepath.Join(sb.Dir, "cache")); err != nil {
				t.Fatal(err)
			}
			if err := sb.GC(ctx, list, []types.GCAttachment{keep.Attachment()}); err != nil {
				t.Fatalf("GC: %s", cniruntime.Describe(err))
			}
			after := ifbs(t, sb)
			if len(before) != 2 || len(after) != 1 {
				t.Errorf("ifbs before GC %v, after %v: want 2 then 1", before, after)
			}
		})
	}
}

// TestBandwidthBadInput checks the reference's validation: a burst
// without a rate and a burst of 4GB or more are config errors, and nothing
// is left in the kernel. (A rate without a burst gets the default burst,
// where the reference refuses it.)
func TestBandwidthBadInput(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	for _, tc := range []struct {
		name string
		caps map[string]any
	}{
		{"egress burst without rate", sandbox.BandwidthCap(0, 0, 0, 1000)},
		{"burst of 4GB", sandbox.BandwidthCap(1_000_000, 8*(1<<32), 0, 0)},
		{"shaped subnets", map[string]any{"bandwidth": map[string]any{"ingressRate": 1000, "ingressBurst": 1000, "shapedSubnets": []string{"10.0.0.0/8"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			list := mustList(t, bwList("1.0.0", sb.DataDir("ipam")))
			pod := newPod(t, sb)
			_, err := sb.Add(ctx, list, pod.RT(tc.caps))
			if e, ok := cniruntime.CNIError(err); !ok || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("ADD = %v, want code 7", err)
			}
			if got := ifbs(t, sb); len(got) != 0 {
				t.Errorf("ifbs after a failed ADD: %v", got)
			}
		})
	}
}

// TestBandwidthShapes measures TCP throughput to and from a shaped pod and
// from an unshaped one, each as a ratio to the configured rate. It asserts
// only generous bounds: shaped below twice the rate and below half of the
// unshaped throughput.
func TestBandwidthShapes(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	list := mustList(t, bwList("1.0.0", sb.DataDir("ipam")))
	const rate = 16_000_000 // bits/s
	shaped, free := newPod(t, sb), newPod(t, sb)
	rs, err := sb.Add(ctx, list, shaped.RT(sandbox.BandwidthCap(rate, 320_000, rate, 320_000)))
	if err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	rf, err := sb.Add(ctx, list, free.RT(nil))
	if err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	gw := toCurrent(t, rs).IPs[0].Gateway.String()
	shapedIP := toCurrent(t, rs).IPs[0].Address.IP.String()
	_ = rf
	const size = 4 << 20 // 4 MiB: ~2 s at the rate
	egress := throughput(t, sb.Host.NS, shaped.NS.NS, gw, size)
	ingress := throughput(t, shaped.NS.NS, sb.Host.NS, shapedIP, size)
	unshaped := throughput(t, sb.Host.NS, free.NS.NS, gw, size)
	t.Logf("configured %d Mbit/s: egress %.1f Mbit/s (ratio %.2f), ingress %.1f Mbit/s (ratio %.2f), unshaped pod %.1f Mbit/s (ratio %.1f)",
		rate/1_000_000, egress/1e6, egress/rate, ingress/1e6, ingress/rate, unshaped/1e6, unshaped/rate)
	for dir, got := range map[string]float64{"egress": egress, "ingress": ingress} {
		if got > 2*rate {
			t.Errorf("%s throughput %.1f Mbit/s is more than twice the configured %d Mbit/s", dir, got/1e6, rate/1_000_000)
		}
		if got > unshaped/2 {
			t.Errorf("%s throughput %.1f Mbit/s is not clearly below the unshaped %.1f Mbit/s", dir, got/1e6, unshaped/1e6)
		}
	}
}

// throughput sends size bytes over TCP from a client in cli to a server in
// srv listening on addr, and returns the bits per second the server saw
// between accepting the connection and reading the last byte.
func throughput(t *testing.T, srv, cli *netns.NS, addr string, size int) float64 {
	t.Helper()
	l, err := sandbox.Listen(srv, net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	type result struct {
		bps float64
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- result{err: err}
			return
		}
		defer c.Close()
		start := time.Now()
		n, err := io.Copy(io.Discard, c)
		el := time.Since(start)
		if err == nil && n != int64(size) {
			err = fmt.Errorf("received %d bytes, want %d", n, size)
		}
		done <- result{bps: float64(n*8) / el.Seconds(), err: err}
	}()
	c, err := sandbox.Dial(cli, l.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	for sent := 0; sent < size; sent += len(buf) {
		if _, err := c.Write(buf[:min(len(buf), size-sent)]); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	r := <-done
	if r.err != nil {
		t.Fatal(r.err)
	}
	return r.bps
}

// TestBandwidthDefaultBurst sends 2 MiB to and from a pod shaped at 8
// Mbit/s in each direction with the burst containerd sends for the
// kubernetes.io/*-bandwidth annotations (math.MaxUint32: none given),
// through the chained bandwidth plugin and through the cluster conflist's
// podnet plugin: each transfer takes about size/rate (at least 80 % of it:
// the default burst is a few milliseconds of the rate, not minutes), and
// is not stalled (at most 4 times it).
func TestBandwidthDefaultBurst(t *testing.T) {
	requireTC(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "bandwidth", "podnet")
	const (
		rate = 8_000_000 // bits/s
		size = 2 << 20   // bytes: ~2.1 s at the rate
	)
	want := time.Duration(float64(size*8) / rate * float64(time.Second))
	for _, tc := range []struct {
		name string
		list func(dataDir string) *libcni.NetworkConfigList
	}{
		{"chained bandwidth", func(d string) *libcni.NetworkConfigList { return mustList(t, bwList("1.0.0", d)) }},
		{"cluster conflist", func(d string) *libcni.NetworkConfigList { return clusterList(t, "1.0.0", d) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			if _, err := sb.NewPeer(nodeAddrs, peerAddrs); err != nil {
				t.Fatalf("peer: %v", err)
			}
			pod := newPod(t, sb)
			r, err := sb.Add(ctx, tc.list(sb.DataDir("ipam")), pod.RT(sandbox.BandwidthCap(rate, math.MaxUint32, rate, math.MaxUint32)))
			if err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			podIP := toCurrent(t, r).IPs[0].Address.IP.String()
			for _, dir := range []struct {
				name     string
				srv, cli *netns.NS
				addr     string
			}{
				{"ingress", pod.NS.NS, sb.Host.NS, podIP},
				{"egress", sb.Host.NS, pod.NS.NS, nodeIP4},
			} {
				bps := throughput(t, dir.srv, dir.cli, dir.addr, size)
				took := time.Duration(float64(size*8) / bps * float64(time.Second))
				t.Logf("%s: 2 MiB in %s at %.2f Mbit/s (%.2f of size/rate)", dir.name, took.Round(time.Millisecond), bps/1e6, float64(took)/float64(want))
				if took < want*8/10 || took > 4*want {
					t.Errorf("%s: 2 MiB took %s at %d Mbit/s, want about %s (0.8 to 4 times)", dir.name, took.Round(time.Millisecond), rate/1_000_000, want.Round(time.Millisecond))
				}
			}
		})
	}
}
