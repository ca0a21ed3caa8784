package kubetest

import (
	"net"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/netns"
)

// The addresses of a NodeCluster's two namespaces, linked by a veth
// pair: the control plane's and the node's.
var (
	CPIP   = net.IPv4(192, 0, 2, 1)
	NodeIP = net.IPv4(192, 0, 2, 2)
)

// NodeCluster is a real control plane in a throwaway namespace and a node
// namespace that reaches it (at CPIP, from NodeIP, over eth0), both
// removed when the test ends.
type NodeCluster struct {
	Node  *netns.Temp
	Admin kubernetes.Interface
	// Kubeconfig is a user bound to exactly the rules given.
	Kubeconfig string
}

// StartNodeCluster starts a NodeCluster whose user has rules; it skips
// the test unless run as root. Namespace names start with prefix.
func StartNodeCluster(t *testing.T, prefix string, rules []rbacv1.PolicyRule) *NodeCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a control plane in a network namespace")
	}
	cpNS, err := netns.NewTemp(prefix + "cp")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cpNS.Remove() })
	node, err := netns.NewTemp(prefix + "node")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { node.Remove() })
	h, err := netlink.NewHandleAt(node.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0", Flags: net.FlagUp}, PeerName: "eth0", PeerNamespace: netlink.NsFd(cpNS.Fd())}
	if err := h.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := h.AddrAdd(veth, &netlink.Addr{IPNet: &net.IPNet{IP: NodeIP, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	hcp, err := netlink.NewHandleAt(cpNS.Handle())
	if err != nil {
		t.Fatal(err)
	}
	defer hcp.Close()
	peer, err := hcp.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := hcp.AddrAdd(peer, &netlink.Addr{IPNet: &net.IPNet{IP: CPIP, Mask: net.CIDRMask(24, 32)}}); err != nil {
		t.Fatal(err)
	}
	if err := hcp.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	cp, admin := ControlPlane(t, cpNS.Path(), CPIP)
	return &NodeCluster{Node: node, Admin: admin, Kubeconfig: User(t, cp, "podnet-agent", rules)}
}
