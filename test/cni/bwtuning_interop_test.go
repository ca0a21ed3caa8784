package cni

import (
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// TestBandwidthTuningInterop chains bridge+host-local, tuning and bandwidth
// with one side from podnet and the other from the reference plugins, in
// both directions, for the spec versions the reference speaks: ADD shapes
// and tunes the pod, CHECK passes, DEL removes the ifb.
func TestBandwidthTuningInterop(t *testing.T) {
	requireTC(t)
	skipWithoutReference(t, "bridge", "host-local", "bandwidth", "tuning")
	for _, mix := range []struct {
		name string
		bins map[string]string
	}{
		{"podnet chained after reference bridge", map[string]string{"bridge": "ref", "host-local": "ref"}},
		{"reference chained after podnet bridge", map[string]string{"bandwidth": "ref", "tuning": "ref"}},
	} {
		bin := binDir(t, mix.bins)
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0"} {
			t.Run(mix.name+"/"+v, func(t *testing.T) {
				t.Parallel()
				ctx := ctxFor(t)
				sb := newSandbox(t, bin)
				list := mustList(t, sandbox.ConfList{Name: "podnet-bwt", CNIVersion: v, Plugins: []sandbox.Conf{
					sandbox.Bridge("cni0", sandbox.HostLocal("10.93.0.0/24", sb.DataDir("ipam"))),
					sandbox.Tuning(sandbox.Conf{"dataDir": sb.DataDir("tuning"), "mtu": 1400,
						// The reference CHECK does not substitute IFNAME: name eth0.
						"sysctl": map[string]any{"net.ipv4.conf.eth0.arp_notify": "1"}}),
					sandbox.Bandwidth(),
				}})
				pod := newPod(t, sb)
				caps := sandbox.BandwidthCap(8_000_000, 800_000, 4_000_000, 400_000)
				caps["mac"] = "c2:b0:57:49:47:f3"
				rt := pod.RT(caps)
				r, err := sb.Add(ctx, list, rt)
				if err != nil {
					t.Fatalf("ADD: %s", cniruntime.Describe(err))
				}
				ifb := ifbs(t, sb)
				if len(ifb) != 1 {
					t.Fatalf("ifbs after ADD = %v, want one", ifb)
				}
				if s := observeShaping(t, sb, hostVeth(t, r, ifb)); !s.hostTbf || !s.hostIngress || s.ifb != ifb[0] || !s.ifbTbf {
					t.Errorf("shaping after ADD = %+v", s)
				}
				got := observeIf(t, pod)
				if got.MTU != 1400 || got.ArpNotify != "1" || !strings.EqualFold(got.MAC, "c2:b0:57:49:47:f3") {
					t.Errorf("pod interface after ADD = %+v, want mtu 1400, arp_notify 1, the requested mac", got)
				}
				if atLeast(v, "0.4.0") {
					if err := sb.Check(ctx, list, rt); err != nil {
						t.Errorf("CHECK: %s", cniruntime.Describe(err))
					}
				}
				if err := sb.Del(ctx, list, rt); err != nil {
					t.Fatalf("DEL: %s", cniruntime.Describe(err))
				}
				if got := ifbs(t, sb); len(got) != 0 {
					t.Errorf("ifbs after DEL = %v", got)
				}
			})
		}
	}
}
