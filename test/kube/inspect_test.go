package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// leftovers lists what podnet keeps on the node for pods that no longer
// run, one line each: host links (veths, ifbs) and nftables rules whose
// attachment's sandbox is not ready in the node's containerd, IPAM
// allocations of such sandboxes or of addresses no pod of the node holds
// in the API, and half-made host links that carry no attachment.
func (c *cluster) leftovers(ctx context.Context, rt runtimeapi.RuntimeServiceClient, node string) ([]string, error) {
	live, err := liveSandboxes(ctx, rt)
	if err != nil {
		return nil, err
	}
	podIPs, err := c.nodePodIPs(ctx, node)
	if err != nil {
		return nil, err
	}
	var out []string
	links, err := sandbox.Links(c.nodeNS(node))
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if !strings.HasPrefix(l.Name, link.HostPrefix) || (l.Type != "veth" && l.Type != "ifb") {
			continue
		}
		a, err := attachment.Parse(strings.TrimPrefix(l.Alias, "podnet:"))
		if !strings.HasPrefix(l.Alias, "podnet:") || err != nil {
			out = append(out, fmt.Sprintf("%s %s without an attachment (alias %q)", l.Type, l.Name, l.Alias))
		} else if _, ok := live[a.ContainerID]; !ok {
			out = append(out, fmt.Sprintf("%s %s of sandbox %s, which is not running", l.Type, l.Name, a.ContainerID))
		}
	}
	allocs, err := sandbox.Allocations(c.ipamDir(node))
	if err != nil {
		return nil, err
	}
	for _, a := range allocs {
		if a.IP == "" {
			continue
		}
		id, _, _ := strings.Cut(a.Data, "\n")
		id = strings.TrimSpace(id)
		switch _, ok := live[id]; {
		case !ok:
			out = append(out, fmt.Sprintf("IPAM allocation %s of sandbox %s, which is not running", a.IP, id))
		case !podIPs[a.IP]:
			out = append(out, fmt.Sprintf("IPAM allocation %s of sandbox %s (%s), no pod of %s in the API has it", a.IP, id, live[id], node))
		}
	}
	rules, err := sandbox.PodnetRules(c.nodeNS(node))
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		a, err := attachment.Parse(r.Comment)
		if err != nil {
			continue // the agent's own rules
		}
		if _, ok := live[a.ContainerID]; !ok {
			out = append(out, fmt.Sprintf("nftables rule %s of sandbox %s, which is not running", r, a.ContainerID))
		}
	}
	sort.Strings(out)
	return out, nil
}

// nodePodIPs are the IPs of the pod-network pods the API has on node.
func (c *cluster) nodePodIPs(ctx context.Context, node string) (map[string]bool, error) {
	list, err := c.client.CoreV1().Pods("").List(ctx, metav1.ListOptions{
		FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String(),
	})
	if err != nil {
		return nil, fmt.Errorf("pods on %s: %w", node, err)
	}
	ips := map[string]bool{}
	for _, p := range list.Items {
		if p.Spec.HostNetwork {
			continue
		}
		for _, ip := range p.Status.PodIPs {
			ips[ip.IP] = true
		}
	}
	return ips, nil
}

// hostLink is the node's link that routes to a pod's IP: the host end of
// its veth.
func (c *cluster) hostLink(node string, ip net.IP) (netlink.Link, error) {
	h, err := netlink.NewHandleAt(c.nodeNS(node).Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	routes, err := h.RouteGet(ip)
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("route to %s on %s: %v (%v)", ip, node, routes, err)
	}
	l, err := h.LinkByIndex(routes[0].LinkIndex)
	if err != nil {
		return nil, fmt.Errorf("link of the route to %s on %s: %w", ip, node, err)
	}
	return l, nil
}

// qdiscs lists the qdiscs of a node's link.
func (c *cluster) qdiscs(node string, l netlink.Link) ([]netlink.Qdisc, error) {
	h, err := netlink.NewHandleAt(c.nodeNS(node).Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	defer h.Close()
	return h.QdiscList(l)
}

// podnetState lists what podnet's agent installs on a node, one line
// each: routes with podnet's routing protocol, its VXLAN device, podnet's
// nftables tables with the agent's egress chain or any set or rule in
// them, its CNI conflist. kept lists what the plugins keep, as
// docs/kubernetes.md says: podnet tables holding only the plugins' empty
// chains.
func (c *cluster) podnetState(node string, routeProtocol netlink.RouteProtocol, device, egressChain, confDir string) (left, kept []string, err error) {
	h, err := netlink.NewHandleAt(c.nodeNS(node).Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, nil, err
	}
	defer h.Close()
	routes, err := h.RouteListFiltered(netlink.FAMILY_ALL, &netlink.Route{Protocol: routeProtocol, Table: unix.RT_TABLE_UNSPEC},
		netlink.RT_FILTER_PROTOCOL|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, nil, fmt.Errorf("routes of %s: %w", node, err)
	}
	for _, r := range routes {
		left = append(left, "route "+r.String())
	}
	if l, err := h.LinkByName(device); err == nil {
		left = append(left, fmt.Sprintf("device %s (%s)", device, l.Type()))
	}
	tables, err := nftTables(c.nodeNS(node))
	if err != nil {
		return nil, nil, err
	}
	for _, t := range tables {
		if !strings.HasPrefix(t.name, "podnet") {
			continue
		}
		s := fmt.Sprintf("nftables table %s %s: chains %v, sets %v, %d rules", t.family, t.name, t.chains, t.sets, t.rules)
		if t.rules > 0 || len(t.sets) > 0 || slices.Contains(t.chains, egressChain) || len(t.chains) == 0 {
			left = append(left, s)
		} else {
			kept = append(kept, s)
		}
	}
	confs, err := filesIn(confDir)
	if err != nil {
		return nil, nil, err
	}
	for _, f := range confs {
		left = append(left, "CNI configuration "+f)
	}
	return left, kept, nil
}

// nftTable is what one nftables table of a namespace holds.
type nftTable struct {
	family, name string
	chains, sets []string // sets and maps
	rules        int
}

// nftTables lists the nftables tables of a namespace with their content.
func nftTables(ns *netns.NS) ([]*nftTable, error) {
	out, err := sandbox.NFT(ns, "-j", "list", "ruleset")
	if err != nil {
		return nil, err
	}
	var doc struct {
		Nftables []map[string]struct{ Family, Table, Name string } `json:"nftables"`
	}
	if err := json.Unmarshal(out, &doc); err != nil {
		return nil, fmt.Errorf("parse nft -j output: %w", err)
	}
	var tables []*nftTable
	byName := map[string]*nftTable{}
	for _, obj := range doc.Nftables {
		for kind, o := range obj {
			if kind == "table" {
				t := &nftTable{family: o.Family, name: o.Name}
				tables = append(tables, t)
				byName[o.Family+" "+o.Name] = t
				continue
			}
			t := byName[o.Family+" "+o.Table]
			if t == nil {
				continue
			}
			switch kind {
			case "chain":
				t.chains = append(t.chains, o.Name)
			case "set", "map":
				t.sets = append(t.sets, o.Name)
			case "rule":
				t.rules++
			}
		}
	}
	return tables, nil
}

// nodeCondition returns the node's condition of type typ.
func nodeCondition(n *corev1.Node, typ corev1.NodeConditionType) (corev1.NodeCondition, bool) {
	for _, c := range n.Status.Conditions {
		if c.Type == typ {
			return c, true
		}
	}
	return corev1.NodeCondition{}, false
}

// filesIn lists the names of the files in dir (none when it does not
// exist).
func filesIn(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}
