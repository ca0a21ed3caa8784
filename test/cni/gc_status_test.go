package cni

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// TestGC adds three pods and garbage-collects with only the first listed
// as valid: the others' addresses, host links and rules go, the valid one
// keeps working. It runs twice: once with libcni's result cache intact
// (libcni DELs the stale attachments it knows, then sends GC), once with
// the cache lost (a runtime that crashed or rebooted: only the plugins'
// GC can find the leaked attachments).
func TestGC(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	for _, n := range networks {
		if n.kind == kindLoopback {
			continue
		}
		for _, lostCache := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/lostCache=%v", n.name, lostCache), func(t *testing.T) {
				requirePlugins(t, bin, n.types...)
				t.Parallel()
				gc(t, bin, n, lostCache)
			})
		}
	}
}

func gc(t *testing.T, bin string, n network, lostCache bool) {
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	conf := n.conf("1.1.0", dataDir)
	if !n.stateful {
		// Static IPAM: each pod's address comes from the runtime through
		// the "ips" capability, as containerd sends it.
		conf = sandbox.ConfList{Name: conf.Name, CNIVersion: "1.1.0", Plugins: []sandbox.Conf{
			sandbox.Bridge("cni0", sandbox.Conf{"type": "static",
				"routes": []any{sandbox.Conf{"dst": "0.0.0.0/0", "gw": "10.90.0.1"}}}),
		}}
		conf.Plugins[0]["capabilities"] = sandbox.Conf{"ips": true}
	}
	list := mustList(t, conf)
	var pods []*sandbox.Pod
	var results []*current.Result
	for i := 0; i < 3; i++ {
		p := newPod(t, sb)
		var caps map[string]any
		if !n.stateful {
			caps = map[string]any{"ips": []string{fmt.Sprintf("10.90.0.%d/24", 10+i)}}
		}
		rt := p.RT(caps)
		r, err := sb.Add(ctx, list, rt)
		if err != nil {
			t.Fatalf("ADD pod %d: %s", i, cniruntime.Describe(err))
		}
		pods = append(pods, p)
		results = append(results, toCurrent(t, r))
	}
	if lostCache {
		if err := os.RemoveAll(filepath.Join(sb.Dir, "cache")); err != nil {
			t.Fatal(err)
		}
	}
	if err := sb.GC(ctx, list, []types.GCAttachment{pods[0].Attachment()}); err != nil {
		t.Fatalf("GC: %s", cniruntime.Describe(err))
	}

	// The stale pods are gone: no host veth but the valid pod's, no rule
	// and no allocation naming them.
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	veths := sandbox.LinksOfType(hostLinks, "veth")
	if len(veths) != 1 {
		t.Errorf("host veths after GC: %v, want only the valid pod's", names(veths))
	}
	verifyNoRules(t, sb, pods[1].ContainerID, pods[2].ContainerID)
	if n.stateful {
		verifyNoAllocations(t, dataDir, pods[1].ContainerID, pods[2].ContainerID)
		if len(allocationsOf(t, dataDir, pods[0].ContainerID)) == 0 {
			t.Error("GC released the valid pod's address")
		}
	}
	for _, p := range pods[1:] {
		if l, err := sandbox.Links(p.NS.NS); err == nil {
			if _, ok := sandbox.FindLink(l, p.IfName); ok {
				t.Errorf("stale pod %s still has %s", p.NS.Name, p.IfName)
			}
		}
	}

	// The valid pod still works: kernel state, CHECK, and traffic to its
	// gateway.
	verifyAdded(t, sb, pods[0], n.kind, results[0])
	if !lostCache {
		rt := pods[0].RT(nil)
		if !n.stateful {
			rt.CapabilityArgs = map[string]any{"ips": []string{"10.90.0.10/24"}}
		}
		if err := sb.Check(ctx, list, rt); err != nil {
			t.Errorf("CHECK of the valid pod after GC: %s", cniruntime.Describe(err))
		}
	}
	gw := results[0].IPs[0].Gateway
	if gw == nil && len(results[0].Routes) > 0 {
		gw = results[0].Routes[0].GW
	}
	if gw != nil {
		l, err := sandbox.Listen(sb.Host.NS, net.JoinHostPort(gw.String(), "0"))
		if err != nil {
			t.Fatalf("listen on the gateway %s in the host: %v", gw, err)
		}
		defer l.Close()
		go sandbox.Echo(l)
		if got, err := sandbox.RoundTrip(pods[0].NS.NS, l.Addr().String(), "hello"); err != nil || got != "hello" {
			t.Errorf("valid pod to its gateway after GC: %q, %v", got, err)
		}
	}

	// GC with nothing valid clears the network.
	if lostCache {
		if err := os.RemoveAll(filepath.Join(sb.Dir, "cache")); err != nil {
			t.Fatal(err)
		}
	}
	if err := sb.GC(ctx, list, nil); err != nil {
		t.Fatalf("GC of everything: %s", cniruntime.Describe(err))
	}
	dd := ""
	if n.stateful {
		dd = dataDir
	}
	verifyGone(t, sb, dd, pods...)
}

// TestStatus checks STATUS on a healthy network, then on a /30 whose only
// address is taken: error 50 (cannot serve ADD), then healthy again once
// the pod is gone.
func TestStatus(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	list := mustList(t, sandbox.ConfList{Name: "tiny", CNIVersion: "1.1.0", Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal("10.77.0.0/30", dataDir)),
	}})
	if err := sb.Status(ctx, list); err != nil {
		t.Fatalf("STATUS of an empty network: %s", cniruntime.Describe(err))
	}
	// Fill the range: .0 is the network, .1 the gateway, .3 broadcast.
	var added []*sandbox.Pod
	for i := 0; i < 4; i++ {
		p := newPod(t, sb)
		if _, err := sb.Add(ctx, list, p.RT(nil)); err != nil {
			t.Logf("ADD %d fails once the range is full: %s", i, cniruntime.Describe(err))
			// The failed ADD left nothing behind.
			hostLinks, err := sandbox.Links(sb.Host.NS)
			if err != nil {
				t.Fatal(err)
			}
			if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) != len(added) {
				t.Errorf("host veths after a failed ADD: %v, want %d", names(v), len(added))
			}
			if l, _ := sandbox.Links(p.NS.NS); len(l) != 1 {
				t.Errorf("failed ADD left links in the pod: %v", names(l))
			}
			verifyNoRules(t, sb, p.ContainerID)
			break
		}
		added = append(added, p)
	}
	if len(added) != 1 {
		t.Fatalf("a /30 with a gateway gave %d addresses, want 1", len(added))
	}
	err := sb.Status(ctx, list)
	if e, ok := cniruntime.CNIError(err); !ok || e.Code != 50 {
		t.Errorf("STATUS of a full range = %v, want error code 50", err)
	}
	if err := sb.Del(ctx, list, added[0].RT(nil)); err != nil {
		t.Fatalf("DEL: %s", cniruntime.Describe(err))
	}
	if err := sb.Status(ctx, list); err != nil {
		t.Errorf("STATUS after the range freed up: %s", cniruntime.Describe(err))
	}
}
