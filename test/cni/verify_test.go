package cni

import (
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/testing/sandbox"
)

// kind is the interface plugin of a conflist, for kind-specific checks.
type kind string

const (
	kindLoopback kind = "loopback"
	kindBridge   kind = "bridge"
	kindPTP      kind = "ptp"
)

// toCurrent converts a result of any version to the current one.
func toCurrent(t testing.TB, r types.Result) *current.Result {
	t.Helper()
	if r == nil {
		t.Fatal("ADD returned no result")
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatalf("convert result %s: %v", r.Version(), err)
	}
	return res
}

// verifyAdded checks in the kernel what the result of ADD claims: the
// container interfaces with their MACs and addresses in the pod, the
// result's routes in the pod, the host-side links in the host, and what
// the interface plugin kind builds (bridge port and gateway, ptp host
// route).
func verifyAdded(t testing.TB, sb *sandbox.Sandbox, pod *sandbox.Pod, k kind, res *current.Result) {
	t.Helper()
	podLinks, err := sandbox.Links(pod.NS.NS)
	if err != nil {
		t.Fatal(err)
	}
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	podRoutes, err := sandbox.Routes(pod.NS.NS)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Interfaces) == 0 {
		t.Fatalf("result has no interfaces: %v", res)
	}
	var contIdx = -1
	for i, intf := range res.Interfaces {
		if intf.Sandbox != "" {
			if intf.Sandbox != pod.Path() {
				t.Errorf("interface %s: sandbox %q, want %q", intf.Name, intf.Sandbox, pod.Path())
			}
			l, ok := sandbox.FindLink(podLinks, intf.Name)
			if !ok {
				t.Errorf("interface %s of the result is not in the pod (pod has %v)", intf.Name, names(podLinks))
				continue
			}
			if !sameMAC(intf.Mac, l.MAC) {
				t.Errorf("pod %s: MAC %s, result says %s", intf.Name, l.MAC, intf.Mac)
			}
			if !l.Up {
				t.Errorf("pod %s is down", intf.Name)
			}
			if intf.Name == pod.IfName {
				contIdx = i
			}
			continue
		}
		l, ok := sandbox.FindLink(hostLinks, intf.Name)
		if !ok {
			t.Errorf("host interface %s of the result is not in the host (host has %v)", intf.Name, names(hostLinks))
			continue
		}
		if !sameMAC(intf.Mac, l.MAC) {
			t.Errorf("host %s: MAC %s, result says %s", intf.Name, l.MAC, intf.Mac)
		}
	}
	if contIdx < 0 {
		t.Fatalf("result has no interface %s in sandbox %s: %v", pod.IfName, pod.Path(), res)
	}
	cont, _ := sandbox.FindLink(podLinks, pod.IfName)
	for _, ip := range res.IPs {
		if ip.Interface == nil || *ip.Interface < 0 || *ip.Interface >= len(res.Interfaces) {
			t.Errorf("IP %s has interface index %v out of range", ip.Address.String(), ip.Interface)
			continue
		}
		intf := res.Interfaces[*ip.Interface]
		if intf.Sandbox == "" {
			continue
		}
		l, _ := sandbox.FindLink(podLinks, intf.Name)
		if !l.HasAddr(ip.Address) {
			t.Errorf("pod %s lacks %s (has %v)", intf.Name, ip.Address.String(), l.Addrs)
		}
	}
	for _, r := range res.Routes {
		gw := ""
		if r.GW != nil {
			gw = r.GW.String()
		}
		if !sandbox.HasRoute(podRoutes, r.Dst.String(), gw) {
			t.Errorf("pod lacks route %s via %q (has %v)", r.Dst.String(), gw, podRoutes)
		}
	}

	switch k {
	case kindLoopback:
		if !cont.Up {
			t.Error("lo is down after ADD")
		}
	case kindBridge, kindPTP:
		if len(res.IPs) == 0 {
			t.Fatal("result has no IPs")
		}
		if cont.Type != "veth" {
			t.Errorf("pod %s is a %s, want veth", cont.Name, cont.Type)
		}
		// The container veth's peer is the host veth of the result.
		var hostVeth sandbox.Link
		for _, l := range sandbox.LinksOfType(hostLinks, "veth") {
			if l.Index == cont.ParentIndex {
				hostVeth = l
			}
		}
		if hostVeth.Name == "" {
			t.Fatalf("no host veth is the peer (index %d) of the pod's %s; host has %v", cont.ParentIndex, cont.Name, names(hostLinks))
		}
		if !hostVeth.Up {
			t.Errorf("host veth %s is down", hostVeth.Name)
		}
		if k == kindBridge {
			var br sandbox.Link
			for _, intf := range res.Interfaces {
				if l, ok := sandbox.FindLink(hostLinks, intf.Name); ok && l.Type == "bridge" {
					br = l
				}
			}
			if br.Name == "" {
				t.Fatalf("result names no bridge in the host: %v", res.Interfaces)
			}
			if hostVeth.MasterIndex != br.Index {
				t.Errorf("host veth %s is not a port of %s", hostVeth.Name, br.Name)
			}
			for _, ip := range res.IPs {
				if ip.Gateway == nil {
					continue
				}
				gw := net.IPNet{IP: ip.Gateway, Mask: ip.Address.Mask}
				if !br.HasAddr(gw) {
					t.Errorf("bridge %s lacks gateway %s (has %v)", br.Name, gw.String(), br.Addrs)
				}
			}
		} else {
			hostRoutes, err := sandbox.Routes(sb.Host.NS)
			if err != nil {
				t.Fatal(err)
			}
			for _, ip := range res.IPs {
				bits := 32
				if ip.Address.IP.To4() == nil {
					bits = 128
				}
				host := net.IPNet{IP: ip.Address.IP, Mask: net.CIDRMask(bits, bits)}
				found := false
				for _, r := range hostRoutes {
					if r.Dst == host.String() && r.Dev == hostVeth.Name {
						found = true
					}
				}
				if !found {
					t.Errorf("host has no route to %s on %s (has %v)", host.String(), hostVeth.Name, hostRoutes)
				}
				if ip.Gateway != nil && !hostVeth.HasAddr(net.IPNet{IP: ip.Gateway, Mask: net.CIDRMask(bits, bits)}) {
					t.Errorf("host veth %s lacks gateway %s/%d (has %v)", hostVeth.Name, ip.Gateway, bits, hostVeth.Addrs)
				}
			}
		}
	}
}

// verifyGone checks that nothing of the pods' attachments is left: no
// container interface (when the pod's namespace still exists), no veth in
// the host, no podnet nftables rule naming them, no IPAM allocation in
// dataDir (which may be empty for IPAM without state).
func verifyGone(t testing.TB, sb *sandbox.Sandbox, dataDir string, pods ...*sandbox.Pod) {
	t.Helper()
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) > 0 {
		t.Errorf("veths left in the host: %v", names(v))
	}
	ids := make([]string, 0, len(pods))
	for _, p := range pods {
		ids = append(ids, p.ContainerID)
		if p.Removed() {
			continue
		}
		if l, err := sandbox.Links(p.NS.NS); err == nil {
			if _, ok := sandbox.FindLink(l, p.IfName); ok && p.IfName != "lo" {
				t.Errorf("pod %s still has %s", p.NS.Name, p.IfName)
			}
		}
	}
	verifyNoRules(t, sb, ids...)
	if dataDir != "" {
		verifyNoAllocations(t, dataDir, ids...)
	}
}

// verifyNoRules checks that no nftables rule (or set element) in the host
// mentions the container IDs.
func verifyNoRules(t testing.TB, sb *sandbox.Sandbox, ids ...string) {
	t.Helper()
	rs, err := sandbox.Ruleset(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if strings.Contains(rs, id) {
			t.Errorf("nftables in the host still mention %s:\n%s", id, rs)
		}
	}
}

// verifyNoAllocations checks that the IPAM data dir holds no allocation
// (of anyone when ids is empty, else of the given containers).
func verifyNoAllocations(t testing.TB, dataDir string, ids ...string) {
	t.Helper()
	allocs, err := sandbox.Allocations(dataDir, ids...)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allocs {
		if a.IP != "" && len(ids) > 0 && !mentionsAny(a.Data, ids) {
			continue // someone else's allocation
		}
		t.Errorf("IPAM allocation left: %s (%q)", a.Path, a.Data)
	}
}

// allocationsOf returns the allocation records naming a container.
func allocationsOf(t testing.TB, dataDir, id string) []sandbox.Allocation {
	t.Helper()
	all, err := sandbox.Allocations(dataDir, id)
	if err != nil {
		t.Fatal(err)
	}
	var out []sandbox.Allocation
	for _, a := range all {
		if strings.Contains(a.Data, id) {
			out = append(out, a)
		}
	}
	return out
}

func mentionsAny(s string, ids []string) bool {
	for _, id := range ids {
		if strings.Contains(s, id) {
			return true
		}
	}
	return false
}

func names(ls []sandbox.Link) []string {
	out := make([]string, 0, len(ls))
	for _, l := range ls {
		out = append(out, l.Name+"("+l.Type+")")
	}
	return out
}

// sameMAC compares a result's MAC with the kernel's; an empty result MAC
// matches anything, and lo's empty hardware address is all zeros.
func sameMAC(result, kernel string) bool {
	if result == "" {
		return true
	}
	if kernel == "" {
		kernel = "00:00:00:00:00:00"
	}
	return strings.EqualFold(result, kernel)
}

// currentOf converts a result without a testing.TB, for goroutines.
func currentOf(r types.Result) (*current.Result, error) {
	return current.NewResultFromResult(r)
}

// waitNoVeths waits (up to 5s) for the host's veths to disappear after a
// pod namespace was removed: the kernel tears down a dead namespace's
// devices in the background.
func waitNoVeths(t testing.TB, sb *sandbox.Sandbox) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		l, err := sandbox.Links(sb.Host.NS)
		if err != nil {
			t.Fatal(err)
		}
		if len(sandbox.LinksOfType(l, "veth")) == 0 || time.Now().After(deadline) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}
