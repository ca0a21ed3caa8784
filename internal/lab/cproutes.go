package lab

import (
	"context"
	"errors"
	"fmt"
	"net"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The control plane's routes to the pods. In a real cluster the control
// plane's host runs the pod network; the lab's control plane namespace
// runs none, yet the API server connects to pods (the pods/proxy
// subresource, `kubectl get --raw /api/v1/namespaces/NS/pods/POD:PORT/proxy/`).
// So each node's podCIDR is routed to that node: from the control
// plane's namespace straight to a node on its segment; to a node on
// another segment through the router, which sends on the control plane's
// traffic (only its: a rule on its source address) by a table of the
// nodes' podCIDRs. The node hands the packets to its pods like any from
// its underlay, whatever the backend (host-gw or VXLAN: only the nodes'
// own pods are reached this way), and the pods' replies take the way
// back the node's own traffic takes to the control plane (straight on
// its segment, else through the router). Replies are not masqueraded:
// podnet masquerades only the connections pods open.
const (
	// cpRouteTable is the router's table of the nodes' podCIDRs, looked
	// up for the control plane's traffic (rule cpRulePriority).
	cpRouteTable   = 100
	cpRulePriority = 100
)

// routeControlPlane routes each node's podCIDRs (allocated by
// kube-controller-manager: set once the node is Ready, since podnet waits
// for them) from the control plane's namespace to the node.
func (l *Lab) routeControlPlane(ctx context.Context, c kubernetes.Interface, nodes []*Node) error {
	list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return fmt.Errorf("control plane routes: %w", err)
	}
	podCIDRs := map[string][]string{}
	for _, n := range list.Items {
		podCIDRs[n.Name] = n.Spec.PodCIDRs
	}
	cp, err := openNS(l.Kube.NS)
	if err != nil {
		return err
	}
	defer cp.close()
	var rt *space // the router, opened for the first node on another segment
	defer func() {
		if rt != nil {
			rt.close()
		}
	}()
	for _, n := range nodes {
		if len(podCIDRs[n.Name]) == 0 {
			return fmt.Errorf("control plane routes: node %s has no podCIDR", n.Name)
		}
		gw := net.ParseIP(n.IP).To4()
		for _, s := range podCIDRs[n.Name] {
			_, dst, err := net.ParseCIDR(s)
			if err != nil {
				return fmt.Errorf("control plane routes: node %s: podCIDR: %w", n.Name, err)
			}
			if dst.IP.To4() == nil {
				continue // the Kubernetes mode's underlay is IPv4 only
			}
			if n.Segment == cpSegment {
				if err := addRoute(cp, dst, gw); err != nil {
					return fmt.Errorf("control plane routes: %w", err)
				}
				continue
			}
			if rt == nil {
				if rt, err = l.routerForControlPlane(); err != nil {
					return err
				}
			}
			if err := rt.h.RouteReplace(&netlink.Route{Dst: dst, Gw: gw, Table: cpRouteTable}); err != nil {
				return fmt.Errorf("control plane routes: router: %v via %s: %w", dst, gw, err)
			}
		}
	}
	return nil
}

// routerForControlPlane opens the router and makes it look up
// cpRouteTable for what the control plane sends (falling through to its
// main table for the rest).
func (l *Lab) routerForControlPlane() (*space, error) {
	rt, err := openNS(l.nsName("router"))
	if err != nil {
		return nil, err
	}
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Src = &net.IPNet{IP: net.ParseIP(l.Kube.IP).To4(), Mask: net.CIDRMask(32, 32)}
	rule.Table = cpRouteTable
	rule.Priority = cpRulePriority
	if err := rt.h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
		rt.close()
		return nil, fmt.Errorf("control plane routes: router rule: %w", err)
	}
	return rt, nil
}
