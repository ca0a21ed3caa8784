package cri

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// The hostPort mapping of the "web" pod, and the port every pod's echo
// server listens on.
const (
	hostPort = 30080
	podPort  = 8080
)

// TestContainerdPods runs three pods through containerd's CRI plugin on
// podnet's cluster conflist, as kubelet runs them, and checks that each
// gets a distinct address of the node's subnet, that the node and the
// pods reach every pod, that a hostPort mapping forwards from the node and
// from another machine, that containerd handed the bandwidth annotations
// to the chain, and that stopping and removing the pods leaves no veth,
// ifb, IPAM allocation, nftables rule or network namespace behind.
func TestContainerdPods(t *testing.T) {
	t.Parallel()
	n := startNode(t, "")
	ctx := ctxFor(t)
	v, err := n.rt.Version(ctx, &runtimeapi.VersionRequest{})
	if err != nil {
		t.Fatalf("Version: %v", err)
	}
	if v.RuntimeApiVersion != "v1" {
		t.Errorf("CRI API %q, want v1", v.RuntimeApiVersion)
	}
	t.Logf("%s %s, CRI %s", v.RuntimeName, v.RuntimeVersion, v.RuntimeApiVersion)

	specs := []podSpec{
		{name: "web", ports: []*runtimeapi.PortMapping{{
			Protocol: runtimeapi.Protocol_TCP, ContainerPort: podPort, HostPort: hostPort,
		}}},
		{name: "db", annotations: map[string]string{
			"kubernetes.io/ingress-bandwidth": "1M",
			"kubernetes.io/egress-bandwidth":  "1M",
		}},
		{name: "cache"},
	}
	_, subnet, _ := net.ParseCIDR(podSubnet)
	var pods []*pod
	seen := map[string]string{}
	for _, s := range specs {
		id, err := n.runPod(ctx, s)
		if err != nil {
			t.Fatal(err)
		}
		p, err := n.status(t, ctx, s.name, id)
		if err != nil {
			t.Fatal(err)
		}
		pods = append(pods, p)
		t.Logf("pod %s: %s, netns %s, CNI result %s", p.name, p.ip, p.netns, p.cniResult)
		if !subnet.Contains(p.ip) {
			t.Errorf("pod %s: IP %s not in the node's subnet %s", p.name, p.ip, podSubnet)
		}
		if other, dup := seen[p.ip.String()]; dup {
			t.Errorf("pods %s and %s share IP %s", other, p.name, p.ip)
		}
		seen[p.ip.String()] = p.name
		checkCNIResult(t, p)
		l, err := sandbox.Listen(p.ns, fmt.Sprintf(":%d", podPort))
		if err != nil {
			t.Fatalf("listen in pod %s: %v", p.name, err)
		}
		t.Cleanup(func() { l.Close() })
		go sandbox.Echo(l)
	}

	// What podnet made for each pod, by the pod's identity.
	for _, p := range pods {
		left, err := n.leftovers(p.id)
		if err != nil {
			t.Fatal(err)
		}
		has := func(what string) bool {
			for _, l := range left {
				if strings.HasPrefix(l, what) {
					return true
				}
			}
			return false
		}
		want := []string{"veth ", "allocation "}
		switch p.name {
		case "web":
			want = append(want, "rule inet podnet portmap-")
		case "db":
			want = append(want, "ifb ")
		}
		for _, w := range want {
			if !has(w) {
				t.Errorf("pod %s: no %s… on the node for its attachment: %v", p.name, w, left)
			}
		}
	}

	// The node and every pod reach every pod.
	for _, to := range pods {
		addr := net.JoinHostPort(to.ip.String(), fmt.Sprint(podPort))
		roundTrip(t, "node → "+to.name, n.sb.Host.NS, addr)
		for _, from := range pods {
			if from != to {
				roundTrip(t, from.name+" → "+to.name, from.ns, addr)
			}
		}
	}
	// The host port, from the node itself and from a machine on its LAN.
	hp := net.JoinHostPort(nodeAddr, fmt.Sprint(hostPort))
	roundTrip(t, "node → hostPort", n.sb.Host.NS, hp)
	roundTrip(t, "peer → hostPort", n.peer.NS.NS, hp)

	// kubelet's order: stop, then remove.
	for _, p := range pods {
		if err := n.remove(ctx, p); err != nil {
			t.Fatal(err)
		}
		left, err := n.leftovers(p.id)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("pod %s removed, left on the node: %v", p.name, left)
		}
		if f, err := n.open(p.netns); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("pod %s removed, its network namespace %s remains (%v)", p.name, p.netns, err)
			if err == nil {
				f.Close()
			}
		}
		if _, err := os.Stat(filepath.Join("/var/run/netns", filepath.Base(p.netns))); !os.IsNotExist(err) {
			t.Errorf("pod %s: network namespace %s in the machine's /var/run/netns (%v)", p.name, filepath.Base(p.netns), err)
		}
	}
	if _, err := sandbox.RoundTrip(n.peer.NS.NS, hp, "after"); err == nil {
		t.Errorf("hostPort %s still forwards after the pod is removed", hp)
	}
	if l, err := n.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(l.Items) != 0 {
		t.Errorf("ListPodSandbox after removal: %v %v", l.GetItems(), err)
	}
}

// roundTrip sends a line from a namespace to addr and wants it echoed.
func roundTrip(t *testing.T, what string, from *netns.NS, addr string) {
	t.Helper()
	msg := "hello " + what
	if got, err := sandbox.RoundTrip(from, addr, msg); err != nil || got != msg {
		t.Errorf("%s (%s): got %q, %v", what, addr, got, err)
	}
}

// checkCNIResult checks containerd's view of the CNI result: the pod's
// interface eth0 in its namespace with the status IP, routed through
// podnet's link-local gateway.
func checkCNIResult(t *testing.T, p *pod) {
	t.Helper()
	var r struct {
		Interfaces map[string]struct {
			IPConfigs []struct{ IP, Gateway net.IP }
			Sandbox   string
		}
	}
	if err := json.Unmarshal(p.cniResult, &r); err != nil {
		t.Errorf("pod %s: CNI result: %v", p.name, err)
		return
	}
	eth0, ok := r.Interfaces["eth0"]
	if !ok || eth0.Sandbox != p.netns || len(eth0.IPConfigs) != 1 ||
		!eth0.IPConfigs[0].IP.Equal(p.ip) || !eth0.IPConfigs[0].Gateway.Equal(net.ParseIP("169.254.1.1")) {
		t.Errorf("pod %s: containerd's CNI result %s, want eth0 in %s with %s via 169.254.1.1", p.name, p.cniResult, p.netns, p.ip)
	}
}

// TestContainerdRefusesCNI110 documents why podnet's conflist says
// cniVersion 1.0.0 and offers 1.1.0 only in cniVersions: containerd 1.6
// (libcni 1.1) runs a conflist at its cniVersion and cannot parse a 1.1.0
// result, so a conflist of 1.1.0 alone fails every pod. The failure must
// still leave nothing behind: containerd deletes the attachment it could
// not read, and podnet's DEL removes what the ADD made.
func TestContainerdRefusesCNI110(t *testing.T) {
	t.Parallel()
	n := startNode(t, "1.1.0")
	ctx := ctxFor(t)
	id, err := n.runPod(ctx, podSpec{name: "web", ports: []*runtimeapi.PortMapping{{
		Protocol: runtimeapi.Protocol_TCP, ContainerPort: podPort, HostPort: hostPort,
	}}})
	if err == nil {
		t.Fatalf("pod %s runs on a conflist of cniVersion 1.1.0 alone: containerd 1.6 should not read its result", id)
	}
	if !strings.Contains(err.Error(), `unsupported CNI result version "1.1.0"`) {
		t.Errorf("RunPodSandbox failed, but not on the result's version: %v", err)
	}
	t.Logf("RunPodSandbox: %v", err)
	if l, err := n.rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err != nil || len(l.Items) != 0 {
		t.Errorf("ListPodSandbox after the failure: %v %v", l.GetItems(), err)
	}
	links, err := sandbox.Links(n.sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Alias, "podnet:") {
			t.Errorf("link left after the failed pod: %s (%s)", l.Name, l.Alias)
		}
	}
	allocs, err := sandbox.Allocations(n.ipamDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range allocs {
		t.Errorf("allocation left after the failed pod: %s (%q)", a.Path, a.Data)
	}
	rules, err := sandbox.PodnetRules(n.sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rules {
		t.Errorf("rule left after the failed pod: %s", r)
	}
}
