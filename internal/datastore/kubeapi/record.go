package kubeapi

import (
	"errors"
	"fmt"
	"net"

	corev1 "k8s.io/api/core/v1"

	"github.com/podnet/podnet/internal/cluster"
)

// The annotations an agent publishes on its own Node. A Node is a podnet
// node once it has AnnotationNodeIP or AnnotationNodeIP6 (and podCIDRs).
const (
	annotationPrefix = "podnet.dev/"
	// AnnotationNodeIP is the node's underlay IPv4 address.
	AnnotationNodeIP = annotationPrefix + "node-ip"
	// AnnotationNodeIP6 is the node's underlay IPv6 address, if any.
	AnnotationNodeIP6 = annotationPrefix + "node-ip6"
	// AnnotationVTEPMAC is the MAC address of the node's VXLAN device,
	// once its fabric made one.
	AnnotationVTEPMAC = annotationPrefix + "vtep-mac"
)

// annotationKeys are every annotation podnet writes (and Release removes).
var annotationKeys = []string{AnnotationNodeIP, AnnotationNodeIP6, AnnotationVTEPMAC}

// errNotYet marks a Node that is no podnet peer yet (no podCIDRs, or no
// podnet annotations): not refused, only left out.
var errNotYet = errors.New("not a podnet node yet")

// record reads a Node as a node record: the subnets from spec.podCIDRs, the
// rest from podnet's annotations, every field checked. It fails with
// errNotYet for a Node that is no podnet node yet, and says why for one
// whose annotations or podCIDRs are malformed.
func record(n *corev1.Node) (cluster.Node, error) {
	rec := cluster.Node{Name: n.Name}
	var err error
	if rec.Subnet, rec.Subnet6, err = podCIDRs(n); err != nil {
		return cluster.Node{}, err
	}
	if rec.Subnet == nil && rec.Subnet6 == nil {
		return cluster.Node{}, fmt.Errorf("%w: no spec.podCIDRs", errNotYet)
	}
	ip, has := n.Annotations[AnnotationNodeIP]
	ip6, has6 := n.Annotations[AnnotationNodeIP6]
	if !has && !has6 {
		return cluster.Node{}, fmt.Errorf("%w: no %s or %s annotation", errNotYet, AnnotationNodeIP, AnnotationNodeIP6)
	}
	if has {
		if rec.IP, err = underlayIP(AnnotationNodeIP, ip, false); err != nil {
			return cluster.Node{}, err
		}
	}
	if has6 {
		if rec.IP6, err = underlayIP(AnnotationNodeIP6, ip6, true); err != nil {
			return cluster.Node{}, err
		}
	}
	if mac, ok := n.Annotations[AnnotationVTEPMAC]; ok {
		if rec.VTEPMAC, err = vtepMAC(mac); err != nil {
			return cluster.Node{}, err
		}
	}
	return rec, nil
}

// podCIDRs are the Node's pod subnets: at most one per family, each a
// network address.
func podCIDRs(n *corev1.Node) (v4, v6 *net.IPNet, err error) {
	for _, s := range n.Spec.PodCIDRs {
		ip, sn, err := net.ParseCIDR(s)
		if err != nil {
			return nil, nil, fmt.Errorf("spec.podCIDRs: %w", err)
		}
		if !ip.Equal(sn.IP) {
			return nil, nil, fmt.Errorf("spec.podCIDRs: %s is not a network address", s)
		}
		dst := &v4
		if sn.IP.To4() == nil {
			dst = &v6
		}
		if *dst != nil {
			return nil, nil, fmt.Errorf("spec.podCIDRs %v: more than one CIDR of a family", n.Spec.PodCIDRs)
		}
		*dst = sn
	}
	return v4, v6, nil
}

// underlayIP parses an underlay address annotation: a unicast address of
// the family, not loopback, link-local or unspecified.
func underlayIP(key, s string, v6 bool) (net.IP, error) {
	ip := net.ParseIP(s)
	switch {
	case ip == nil:
		return nil, fmt.Errorf("annotation %s %q is not an IP address", key, s)
	case (ip.To4() == nil) != v6:
		fam := "IPv4"
		if v6 {
			fam = "IPv6"
		}
		return nil, fmt.Errorf("annotation %s %q is not an %s address", key, s, fam)
	case !ip.IsGlobalUnicast():
		return nil, fmt.Errorf("annotation %s %q is not a unicast address a node can be reached at", key, s)
	}
	if !v6 {
		ip = ip.To4()
	}
	return ip, nil
}

// vtepMAC parses the VTEP MAC annotation: a unicast EUI-48 address.
func vtepMAC(s string) (string, error) {
	mac, err := net.ParseMAC(s)
	switch {
	case err != nil:
		return "", fmt.Errorf("annotation %s %q: %w", AnnotationVTEPMAC, s, err)
	case len(mac) != 6:
		return "", fmt.Errorf("annotation %s %q is not an Ethernet (EUI-48) address", AnnotationVTEPMAC, s)
	case mac[0]&1 != 0 || string(mac) == string(make([]byte, 6)):
		return "", fmt.Errorf("annotation %s %q is not a unicast address", AnnotationVTEPMAC, s)
	}
	return mac.String(), nil
}

// annotationsOf are the annotations that publish rec: every key of
// annotationKeys, with nil for those rec has no value of (to remove).
func annotationsOf(rec cluster.Node) map[string]*string {
	out := map[string]*string{}
	for _, k := range annotationKeys {
		out[k] = nil
	}
	set := func(k, v string) {
		if v != "" {
			out[k] = &v
		}
	}
	if rec.IP != nil {
		set(AnnotationNodeIP, rec.IP.String())
	}
	if rec.IP6 != nil {
		set(AnnotationNodeIP6, rec.IP6.String())
	}
	set(AnnotationVTEPMAC, rec.VTEPMAC)
	return out
}
