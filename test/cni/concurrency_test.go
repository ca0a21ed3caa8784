package cni

import (
	"flag"
	"sync"
	"testing"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

var (
	concurrentPods    = flag.Int("pods", 100, "pods added at once by TestConcurrentPods")
	concurrentVersion = flag.String("burst-version", "1.1.0", "cniVersion of TestConcurrentPods's conflist")
)

// TestConcurrentPods adds many pods at once on one bridge network, each
// in its own namespace, as a node starting a burst of pods does, then
// deletes them all at once: every call succeeds, no address is given
// twice, and nothing is left behind.
func TestConcurrentPods(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	list := mustList(t, sandbox.ConfList{Name: "burst", CNIVersion: *concurrentVersion, Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal("10.66.0.0/24", dataDir)),
	}})
	n := *concurrentPods
	pods := make([]*sandbox.Pod, n)
	for i := range pods {
		pods[i] = newPod(t, sb)
	}

	ips := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r, err := sb.Add(ctx, list, p.RT(nil))
			if err != nil {
				errs[i] = err
				return
			}
			res, err := currentOf(r)
			if err != nil || len(res.IPs) == 0 {
				errs[i] = err
				return
			}
			ips[i] = res.IPs[0].Address.IP.String()
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	for i := range pods {
		if errs[i] != nil {
			t.Errorf("ADD of pod %d: %s", i, cniruntime.Describe(errs[i]))
			continue
		}
		if j, dup := seen[ips[i]]; dup {
			t.Errorf("pods %d and %d both got %s", j, i, ips[i])
		}
		seen[ips[i]] = i
	}
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) != n {
		t.Errorf("%d host veths for %d pods", len(v), n)
	}
	if allocs, _ := sandbox.Allocations(dataDir); countIPs(allocs) != n {
		t.Errorf("%d allocations for %d pods", countIPs(allocs), n)
	}
	if t.Failed() {
		t.Log("ADD failed; deleting anyway")
	}

	for i, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = sb.Del(ctx, list, p.RT(nil))
		}()
	}
	wg.Wait()
	for i := range pods {
		if errs[i] != nil {
			t.Errorf("DEL of pod %d: %s", i, cniruntime.Describe(errs[i]))
		}
	}
	verifyGone(t, sb, dataDir, pods...)
	verifyNoAllocations(t, dataDir)
}
