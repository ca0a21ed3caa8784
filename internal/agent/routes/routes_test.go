package routes

import (
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/podnet/podnet/internal/agent/controller"
	"github.com/podnet/podnet/internal/cluster"
)

func node(name, subnet, subnet6, mac string) cluster.Node {
	n := cluster.Node{Name: name, IP: net.IPv4(192, 0, 2, byte(len(name))).To4(), VTEPMAC: mac}
	if subnet != "" {
		_, n.Subnet, _ = net.ParseCIDR(subnet)
	}
	if subnet6 != "" {
		_, n.Subnet6, _ = net.ParseCIDR(subnet6)
	}
	return n
}

// TestPeersOfRefuses checks the defence in depth behind the datastore: a
// record is routed only when its subnets are of the cluster, of the node
// subnet size, not this node's own and claimed by nobody else.
func TestPeersOfRefuses(t *testing.T) {
	env := controller.NewEnv()
	env.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	env.Metrics = prometheus.NewRegistry()
	env.NodeName = "self"
	env.Cluster = cluster.Config{ClusterCIDR: "10.244.0.0/16", SubnetSize: 24, ClusterCIDR6: "fd00:10:244::/56", SubnetSize6: 64}
	env.Self.Set(node("self", "10.244.0.0/24", "fd00:10:244::/64", ""))
	c := New(env)
	for _, tc := range []struct {
		name  string
		nodes []cluster.Node
		want  []string // peers routed
	}{
		{"valid", []cluster.Node{node("self", "10.244.0.0/24", "", ""), node("a", "10.244.1.0/24", "fd00:10:244:1::/64", "02:00:00:00:00:01")}, []string{"a"}},
		{"default route halves", []cluster.Node{node("evil", "0.0.0.0/1", "", ""), node("evil2", "128.0.0.0/1", "", "")}, nil},
		{"outside the cluster", []cluster.Node{node("x", "10.245.1.0/24", "", "")}, nil},
		{"wrong size", []cluster.Node{node("x", "10.244.0.0/23", "", ""), node("y", "10.244.8.0/25", "", "")}, nil},
		{"this node's own", []cluster.Node{node("x", "10.244.0.0/24", "", ""), node("y", "10.244.1.0/24", "fd00:10:244::/64", "")}, nil},
		{"claimed twice", []cluster.Node{node("a", "10.244.1.0/24", "", ""), node("z", "10.244.1.0/24", "", ""), node("b", "10.244.2.0/24", "", "")}, []string{"b"}},
		{"malformed MAC", []cluster.Node{node("a", "10.244.1.0/24", "", "not-a-mac")}, nil},
		{"no subnet", []cluster.Node{node("a", "", "", "")}, nil},
		{"IPv6 as IPv4", []cluster.Node{{Name: "a", Subnet: &net.IPNet{IP: net.ParseIP("fd00:10:244:2::"), Mask: net.CIDRMask(64, 128)}}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, p := range c.peersOf(tc.nodes) {
				got = append(got, p.Name)
			}
			if !slices.Equal(got, tc.want) {
				t.Fatalf("routed %v, want %v", got, tc.want)
			}
			others := 0
			for _, n := range tc.nodes {
				if n.Name != "self" {
					others++
				}
			}
			if refused := testutil.ToFloat64(c.refusedPeers); int(refused) != others-len(tc.want) {
				t.Fatalf("podnet_agent_peers_refused = %v, want %d", refused, others-len(tc.want))
			}
		})
	}
}
