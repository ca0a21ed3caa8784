package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/bench/internal/benchlab"
	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/lab"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// cleanup collects what the benchmark built, removed in reverse order
// whatever happens.
type cleanup []func() error

func (c *cleanup) add(f func() error) { *c = append(*c, f) }

func (c cleanup) run() error {
	var errs []error
	for i := len(c) - 1; i >= 0; i-- {
		errs = append(errs, c[i]())
	}
	return errors.Join(errs...)
}

// vethPair is the same-node reference: two namespaces joined by a bare
// veth pair, 10.99.0.1/24 and 10.99.0.2/24, nothing else.
func vethPair(c *cleanup) (endpoint, endpoint, error) {
	var ends [2]endpoint
	var nss [2]*netns.Temp
	for i := range nss {
		ns, err := netns.NewTemp("pnbveth")
		if err != nil {
			return ends[0], ends[1], err
		}
		c.add(ns.Remove)
		nss[i] = ns
	}
	h0, err := netlink.NewHandleAt(nss[0].Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return ends[0], ends[1], err
	}
	defer h0.Close()
	h1, err := netlink.NewHandleAt(nss[1].Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return ends[0], ends[1], err
	}
	defer h1.Close()
	v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(nss[1].Fd())}
	if err := h0.LinkAdd(v); err != nil {
		return ends[0], ends[1], fmt.Errorf("bare veth pair: %w", err)
	}
	for i, h := range []*netlink.Handle{h0, h1} {
		l, err := h.LinkByName("eth0")
		if err != nil {
			return ends[0], ends[1], err
		}
		ip := net.IPv4(10, 99, 0, byte(i+1)).To4()
		if err := h.AddrAdd(l, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return ends[0], ends[1], err
		}
		if err := h.LinkSetUp(l); err != nil {
			return ends[0], ends[1], err
		}
		ends[i] = endpoint{Label: fmt.Sprintf("veth%d", i+1), NS: nss[i].Name, IP: ip}
	}
	return ends[0], ends[1], nil
}

// cniPair attaches two pods to one node through libcni with conf (one
// plugin plus its IPAM) under the given plugins: podnet's (links to
// podnet-cni) or the reference ones (CNI path).
func cniPair(ctx context.Context, c *cleanup, prefix string, o sandbox.Options, conf sandbox.Conf) (endpoint, endpoint, error) {
	var ends [2]endpoint
	o.Prefix = prefix
	sb, err := sandbox.New(o)
	if err != nil {
		return ends[0], ends[1], err
	}
	c.add(sb.Close)
	if ipam, ok := conf["ipam"].(sandbox.Conf); ok {
		ipam["dataDir"] = sb.DataDir(prefix)
	}
	list, err := sandbox.ConfList{Name: "bench-" + prefix, CNIVersion: "1.0.0", Plugins: []sandbox.Conf{conf}}.List()
	if err != nil {
		return ends[0], ends[1], err
	}
	for i := range ends {
		p, err := sb.NewPod()
		if err != nil {
			return ends[0], ends[1], err
		}
		r, err := sb.Add(ctx, list, p.RT(nil))
		if err != nil {
			return ends[0], ends[1], fmt.Errorf("%s ADD: %s", prefix, cniruntime.Describe(err))
		}
		c.add(func() error { return sb.Del(context.Background(), list, p.RT(nil)) })
		res, err := current.NewResultFromResult(r)
		if err != nil {
			return ends[0], ends[1], err
		}
		if len(res.IPs) == 0 {
			return ends[0], ends[1], fmt.Errorf("%s ADD gave no address", prefix)
		}
		ends[i] = endpoint{Label: fmt.Sprintf("%s-pod%d", prefix, i+1), NS: p.NS.Name, IP: res.IPs[0].Address.IP}
	}
	return ends[0], ends[1], nil
}

// twoNodeLab brings up a lab of two nodes on one segment with the backend,
// two pods on n1 and one on n2; it is taken down by the cleanup.
func twoNodeLab(ctx context.Context, c *cleanup, tag string, backend cluster.Backend, bins lab.Binaries, progress io.Writer) (*lab.Lab, error) {
	name := benchlab.Name("bdp-" + tag)
	l, err := lab.New("", name, lab.Spec{Nodes: 2, Segments: 1, Backend: backend, PodsPerNode: 0}, bins, progress)
	if err != nil {
		return nil, err
	}
	c.add(func() error { return lab.Down("", name) })
	if err := l.Up(ctx); err != nil {
		return nil, err
	}
	for _, node := range []string{"n1", "n1", "n2"} {
		if _, err := l.AddPod(ctx, node); err != nil {
			return nil, err
		}
	}
	return l, nil
}

// labPod and labNode are the endpoints of a lab's pod and node (IPv4).
func labPod(l *lab.Lab, name string) (endpoint, error) {
	for _, p := range l.Pods {
		if p.Name == name {
			for _, a := range p.IPs {
				if ip := net.ParseIP(a).To4(); ip != nil {
					return endpoint{Label: name, NS: p.NS, IP: ip}, nil
				}
			}
		}
	}
	return endpoint{}, fmt.Errorf("lab %s has no pod %s with an IPv4 address", l.Name, name)
}

func labNode(l *lab.Lab, name string) (endpoint, error) {
	for _, n := range l.Nodes {
		if n.Name == name {
			return endpoint{Label: name + ".eth0", NS: n.NS, IP: net.ParseIP(n.IP).To4()}, nil
		}
	}
	return endpoint{}, fmt.Errorf("lab %s has no node %s", l.Name, name)
}
