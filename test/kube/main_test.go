// Package kube tests podnet on a real Kubernetes: one dual-stack lab in
// Kubernetes mode (internal/lab: a control plane, and containerd, kubelet
// and the lab's kube-proxy choice on each of 3 nodes, IPv4 and IPv6 pod
// CIDRs, node addresses and Service ranges, podnet installed from
// deploy/podnet.yaml and its image) serves every test of the package,
// which check, through the API and in the nodes' kernels: the nodes and
// the pod network (with the lab Service's ClusterIP and NodePort),
// podCIDRs and podnet's Node status, hostPort and bandwidth through
// kubelet, Services, NetworkPolicy and ClusterNetworkPolicy (a
// reachability matrix, netpol_test.go), pod churn leaving nothing behind,
// faults (an agent restarted, a node deleted, the API server stopped)
// and, last, the documented uninstall.
//
// The service proxy's checks (ServiceProxy, services_test.go) hold of
// any proxy with kube-proxy's semantics and look only at real traffic:
// ClusterIP (TCP, UDP) from pods on every node to every endpoint,
// NodePort from the outside host on every node, externalTrafficPolicy
// Local (source address kept, only nodes with a local endpoint answer,
// the healthCheckNodePort's 200/503), an externalIP and a LoadBalancer
// ingress IP routed from the outside to a node, loadBalancerSourceRanges
// (a pod inside served, the outside host dropped until let in),
// internalTrafficPolicy Local (the own node's endpoint, dropped on a node
// without one), ClientIP affinity,
// endpoints 3 → 0 → 3 (refused at once, then back), a terminating last
// endpoint still served, UDP switching to a new endpoint on the same
// socket (conntrack flushed), hairpin, the node's own processes, a
// dual-stack Service's IPv4 and IPv6 ClusterIPs and IPv6 NodePort, SCTP
// where the kernel has it. The lab runs kube-proxy unless podnet's manifest turns
// podnet's service proxy on (lab.Spec.KubeProxy);
// PODNET_TEST_KUBE_PROXY=iptables|nftables|none picks it instead, to run
// the same checks against kube-proxy's modes or podnet's proxy.
//
// The tests need root (network and mount namespaces, cgroups); without it
// they skip. The Kubernetes binaries are built once and cached
// (internal/kube.Build: the first run takes several minutes). Set
// PODNET_BIN_DIR to a directory holding static podnet, podnet-agent and
// podnet-cni (make build writes bin/; make test sets it) to skip building
// them.
package kube

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// bins are the podnet programs the lab runs and puts in podnet's image.
var bins lab.Binaries

func TestMain(m *testing.M) {
	os.Exit(func() int {
		if os.Geteuid() != 0 {
			return m.Run() // every test skips
		}
		// Shims and pod processes orphaned by a node's supervisor that
		// dies come to this process, which reaps them at the end rather
		// than leaving zombies to the machine's init.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			fmt.Fprintf(os.Stderr, "PR_SET_CHILD_SUBREAPER: %v\n", err)
			return 1
		}
		dir, cleanup, err := binDir()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer cleanup()
		bins = lab.Binaries{
			Agent: filepath.Join(dir, "podnet-agent"),
			CNI:   filepath.Join(dir, "podnet-cni"),
			CLI:   filepath.Join(dir, "podnet"),
		}
		code := m.Run()
		if left := kube.ReapOrphans(5*time.Second, kube.RuntimeOrphan); len(left) > 0 {
			fmt.Fprintf(os.Stderr, "shims or pod processes still running after the tests: %v\n", left)
			code = 1
		}
		return code
	}())
}

// binDir is $PODNET_BIN_DIR, absolute, or a temporary directory the
// programs are built into (static, as make build makes them: they go
// into an image with nothing else).
func binDir() (string, func(), error) {
	if dir := os.Getenv("PODNET_BIN_DIR"); dir != "" {
		abs, err := filepath.Abs(dir)
		return abs, func() {}, err
	}
	tmp, err := os.MkdirTemp("", "podnet-kube-bin-")
	if err != nil {
		return "", nil, err
	}
	cleanup := func() { os.RemoveAll(tmp) }
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	for _, p := range []string{"podnet", "podnet-agent", "podnet-cni"} {
		if err := sandbox.Build(ctx, filepath.Join(tmp, p), "./cmd/"+p); err != nil {
			cleanup()
			return "", nil, err
		}
	}
	return tmp, cleanup, nil
}
