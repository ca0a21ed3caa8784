package cni

import (
	"context"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// listVersions are the spec versions a conflist may carry (libcni lists
// need 0.3.0 or later).
var listVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// network is one conflist of the test matrix.
type network struct {
	name   string
	kind   kind
	ifName string
	types  []string // plugin types it needs
	// stateful tells whether its IPAM keeps allocations in the data dir.
	stateful bool
	conf     func(version, dataDir string) sandbox.ConfList
}

// networks are the documented reference configurations, one per
// interface/IPAM combination.
var networks = []network{
	{
		name: "loopback", kind: kindLoopback, ifName: "lo", types: []string{"loopback"},
		conf: func(v, _ string) sandbox.ConfList {
			return sandbox.ConfList{Name: "lo", CNIVersion: v, Plugins: []sandbox.Conf{sandbox.Loopback()}}
		},
	},
	{
		name: "bridge+host-local", kind: kindBridge, ifName: "eth0", types: []string{"bridge", "host-local"}, stateful: true,
		conf: func(v, dir string) sandbox.ConfList {
			return sandbox.ConfList{Name: "podnet-br", CNIVersion: v, Plugins: []sandbox.Conf{
				sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/16", dir)),
			}}
		},
	},
	{
		name: "ptp+host-local", kind: kindPTP, ifName: "eth0", types: []string{"ptp", "host-local"}, stateful: true,
		conf: func(v, dir string) sandbox.ConfList {
			return sandbox.ConfList{Name: "podnet-ptp", CNIVersion: v, Plugins: []sandbox.Conf{
				sandbox.PTP(sandbox.HostLocal("10.89.0.0/24", dir)),
			}}
		},
	},
	{
		// podnet's own routed plugin, dual-stack, as the agent configures
		// it; routed like ptp (a host route and the gateway on the host end).
		name: "podnet+host-local", kind: kindPTP, ifName: "eth0", types: []string{"podnet", "host-local"}, stateful: true,
		conf: func(v, dir string) sandbox.ConfList {
			return sandbox.ConfList{Name: "podnet", CNIVersion: v, Plugins: []sandbox.Conf{
				sandbox.Routed(1400, sandbox.HostLocalRanges(dir, "10.244.1.0/24", "fd00:10:244:1::/64")),
			}}
		},
	},
	{
		name: "bridge+static", kind: kindBridge, ifName: "eth0", types: []string{"bridge", "static"},
		conf: func(v, _ string) sandbox.ConfList {
			return sandbox.ConfList{Name: "podnet-static", CNIVersion: v, Plugins: []sandbox.Conf{
				sandbox.Bridge("cni0", sandbox.Static("10.90.0.1", "10.90.0.10/24")),
			}}
		},
	},
}

func atLeast(v, min string) bool {
	ok, err := version.GreaterThanOrEqualTo(v, min)
	return err == nil && ok
}

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func mustList(t testing.TB, c sandbox.ConfList) *libcni.NetworkConfigList {
	t.Helper()
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestLifecycle runs, for every conflist and every spec version, what a
// runtime does over a pod's life, and checks the kernel after each step:
// ADD, CHECK, DEL, DEL again, and DEL without a netns.
func TestLifecycle(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			requirePlugins(t, bin, n.types...)
			for _, v := range listVersions {
				t.Run(v, func(t *testing.T) {
					t.Parallel()
					lifecycle(t, bin, n, v)
				})
			}
		})
	}
}

func lifecycle(t *testing.T, bin string, n network, v string) {
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := ""
	if n.stateful {
		dataDir = sb.DataDir("ipam")
	}
	list := mustList(t, n.conf(v, dataDir))
	pod := newPod(t, sb)
	pod.IfName = n.ifName
	rt := pod.RT(nil)

	// ADD, and the kernel matches the result.
	r, err := sb.Add(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	if r.Version() != v {
		t.Errorf("ADD result is version %s, want %s", r.Version(), v)
	}
	res := toCurrent(t, r)
	verifyAdded(t, sb, pod, n.kind, res)
	if n.stateful && len(allocationsOf(t, dataDir, pod.ContainerID)) == 0 {
		t.Errorf("no IPAM allocation records %s in %s", pod.ContainerID, dataDir)
	}

	// CHECK (0.4.0 and later).
	if atLeast(v, "0.4.0") {
		if err := sb.Check(ctx, list, rt); err != nil {
			t.Errorf("CHECK: %s", cniruntime.Describe(err))
		}
	}
	// STATUS (1.1.0) while a pod is attached.
	if atLeast(v, "1.1.0") {
		if err := sb.Status(ctx, list); err != nil {
			t.Errorf("STATUS: %s", cniruntime.Describe(err))
		}
	}

	// DEL removes everything; DEL again succeeds.
	if err := sb.Del(ctx, list, rt); err != nil {
		t.Fatalf("DEL: %s", cniruntime.Describe(err))
	}
	if n.kind == kindLoopback {
		if l, _ := sandbox.Links(pod.NS.NS); len(l) > 0 && l[0].Up {
			t.Error("lo still up after DEL")
		}
	}
	verifyGone(t, sb, dataDir, pod)
	if err := sb.Del(ctx, list, rt); err != nil {
		t.Errorf("second DEL: %s", cniruntime.Describe(err))
	}

	// A new attachment, deleted without a netns (the runtime lost the
	// sandbox): DEL succeeds and releases the addresses, the host link and
	// the rules; the namespace's own interface goes with the namespace.
	pod2 := newPod(t, sb)
	pod2.IfName = n.ifName
	rt2 := pod2.RT(nil)
	if _, err := sb.Add(ctx, list, rt2); err != nil {
		t.Fatalf("ADD of the second pod: %s", cniruntime.Describe(err))
	}
	rtNoNS := *rt2
	rtNoNS.NetNS = ""
	if err := sb.Del(ctx, list, &rtNoNS); err != nil {
		t.Fatalf("DEL without netns: %s", cniruntime.Describe(err))
	}
	if n.stateful {
		verifyNoAllocations(t, dataDir, pod2.ContainerID)
	}
	verifyNoRules(t, sb, pod2.ContainerID)
	if n.kind != kindLoopback {
		hostLinks, err := sandbox.Links(sb.Host.NS)
		if err != nil {
			t.Fatal(err)
		}
		if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) > 0 {
			t.Errorf("DEL without netns left the host veth: %v", names(v))
		}
	}
	if err := pod2.Remove(); err != nil {
		t.Fatal(err)
	}
	// The kernel destroys a removed namespace's links asynchronously.
	waitNoVeths(t, sb)
	verifyGone(t, sb, dataDir, pod, pod2)
	// DEL once more, the namespace now gone entirely.
	rt2.NetNS = pod2.Path()
	if err := sb.Del(ctx, list, rt2); err != nil {
		t.Errorf("DEL after the netns is gone: %s", cniruntime.Describe(err))
	}
}
