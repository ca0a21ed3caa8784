package kubeapi

import (
	"errors"
	"net"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestRecord reads Nodes as records: every field is checked, subnets come
// from spec.podCIDRs only, and a Node without podCIDRs or annotations is
// no peer yet rather than refused.
func TestRecord(t *testing.T) {
	node := func(ann map[string]string, podCIDRs ...string) *corev1.Node {
		return &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n", Annotations: ann}, Spec: corev1.NodeSpec{PodCIDRs: podCIDRs}}
	}
	ip := map[string]string{AnnotationNodeIP: "192.0.2.1"}
	with := func(k, v string) map[string]string {
		return map[string]string{AnnotationNodeIP: "192.0.2.1", k: v}
	}
	for _, tc := range []struct {
		name string
		n    *corev1.Node
		want string // the record as text, or the error's substring
		yet  bool   // errNotYet
	}{
		{"v4", node(ip, "10.244.1.0/24"), "192.0.2.1 <nil> 10.244.1.0/24 <nil> ", false},
		{"dual", node(map[string]string{AnnotationNodeIP: "192.0.2.1", AnnotationNodeIP6: "2001:db8::1", AnnotationVTEPMAC: "02:AA:bb:cc:dd:ee"}, "fd00::/64", "10.244.1.0/24"),
			"192.0.2.1 2001:db8::1 10.244.1.0/24 fd00::/64 02:aa:bb:cc:dd:ee", false},
		{"v6 underlay only", node(map[string]string{AnnotationNodeIP6: "2001:db8::1"}, "fd00::/64"), "<nil> 2001:db8::1 <nil> fd00::/64 ", false},
		{"annotated subnet ignored", node(with("podnet.dev/subnet", "0.0.0.0/1"), "10.244.1.0/24"), "192.0.2.1 <nil> 10.244.1.0/24 <nil> ", false},
		{"no podCIDRs", node(ip), "no spec.podCIDRs", true},
		{"no annotations", node(nil, "10.244.1.0/24"), "no podnet.dev/node-ip", true},
		{"other annotations", node(map[string]string{"x": "y"}, "10.244.1.0/24"), "no podnet.dev/node-ip", true},
		{"bad IP", node(with(AnnotationNodeIP, "999.1.1.1"), "10.244.1.0/24"), `podnet.dev/node-ip "999.1.1.1" is not an IP address`, false},
		{"v6 as v4", node(with(AnnotationNodeIP, "2001:db8::1"), "10.244.1.0/24"), "is not an IPv4 address", false},
		{"v4 as v6", node(with(AnnotationNodeIP6, "192.0.2.2"), "10.244.1.0/24"), "is not an IPv6 address", false},
		{"mapped v4 as v6", node(with(AnnotationNodeIP6, "::ffff:192.0.2.2"), "10.244.1.0/24"), "is not an IPv6 address", false},
		{"loopback", node(with(AnnotationNodeIP, "127.0.0.1"), "10.244.1.0/24"), "not a unicast address", false},
		{"unspecified", node(with(AnnotationNodeIP, "0.0.0.0"), "10.244.1.0/24"), "not a unicast address", false},
		{"broadcast", node(with(AnnotationNodeIP, "255.255.255.255"), "10.244.1.0/24"), "not a unicast address", false},
		{"link-local v6", node(with(AnnotationNodeIP6, "fe80::1"), "10.244.1.0/24"), "not a unicast address", false},
		{"multicast", node(with(AnnotationNodeIP, "224.0.0.1"), "10.244.1.0/24"), "not a unicast address", false},
		{"empty IP", node(with(AnnotationNodeIP, ""), "10.244.1.0/24"), "is not an IP address", false},
		{"bad MAC", node(with(AnnotationVTEPMAC, "zz"), "10.244.1.0/24"), "podnet.dev/vtep-mac", false},
		{"long MAC", node(with(AnnotationVTEPMAC, "02:00:00:00:00:00:00:01"), "10.244.1.0/24"), "not an Ethernet", false},
		{"multicast MAC", node(with(AnnotationVTEPMAC, "01:00:5e:00:00:01"), "10.244.1.0/24"), "not a unicast address", false},
		{"zero MAC", node(with(AnnotationVTEPMAC, "00:00:00:00:00:00"), "10.244.1.0/24"), "not a unicast address", false},
		{"bad podCIDR", node(ip, "10.244.1.0/33"), "spec.podCIDRs", false},
		{"host bits", node(ip, "10.244.1.1/24"), "not a network address", false},
		{"two of a family", node(ip, "10.244.1.0/24", "10.244.2.0/24"), "more than one CIDR of a family", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec, err := record(tc.n)
			if err != nil {
				if !strings.Contains(err.Error(), tc.want) || errors.Is(err, errNotYet) != tc.yet {
					t.Fatalf("record = %v (not yet: %v), want %q (not yet: %v)", err, errors.Is(err, errNotYet), tc.want, tc.yet)
				}
				return
			}
			got := strings.Join([]string{ipString(rec.IP), ipString(rec.IP6), rec.Subnet.String(), rec.Subnet6.String(), rec.VTEPMAC}, " ")
			if got != tc.want || rec.Name != "n" {
				t.Fatalf("record = %q, want %q", got, tc.want)
			}
		})
	}
}

func ipString(ip []byte) string {
	if ip == nil {
		return "<nil>"
	}
	return net.IP(ip).String()
}
