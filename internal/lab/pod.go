package lab

import (
	"context"
	"fmt"
	"path/filepath"
	"sort"

	"github.com/containernetworking/cni/libcni"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
)

// runtime is a container runtime on the node: libcni with the node's CNI
// bin dir and the conflist its agent wrote.
func runtimeOf(n *Node) (*cniruntime.Runtime, *libcni.NetworkConfigList, func(), error) {
	ns, err := netns.OpenNamed(n.NS)
	if err != nil {
		return nil, nil, nil, err
	}
	list, err := libcni.LoadConfList(filepath.Join(n.Dir, "net.d"), cniconf.NetworkName)
	if err != nil {
		ns.Close()
		return nil, nil, nil, fmt.Errorf("CNI configuration of %s: %w", n.Name, err)
	}
	rt := cniruntime.NewRuntime(ns.NS, []string{filepath.Join(n.Dir, "bin")}, filepath.Join(n.Dir, "cni-cache"), nil)
	return rt, list, func() { ns.Close() }, nil
}

// podName picks the node's lowest free pod name.
func (l *Lab) podName(node string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	for j := 1; ; j++ {
		name := fmt.Sprintf("%s-p%d", node, j)
		taken := false
		for _, p := range l.Pods {
			taken = taken || p.Name == name
		}
		if !taken {
			return name
		}
	}
}

// AddPod creates a pod on the node and attaches it the way a container
// runtime does: a network namespace, then ADD through libcni.
func (l *Lab) AddPod(ctx context.Context, nodeName string) (*Pod, error) {
	if err := l.notKube("pod add"); err != nil {
		return nil, err
	}
	n, err := l.node(nodeName)
	if err != nil {
		return nil, err
	}
	rt, list, done, err := runtimeOf(n)
	if err != nil {
		return nil, err
	}
	defer done()
	name := l.podName(n.Name)
	ns, err := l.makeNS(name)
	if err != nil {
		return nil, err
	}
	defer ns.close()
	p := &Pod{Name: name, Node: n.Name, NS: l.nsName(name), ContainerID: cniruntime.RandomID()}
	r, err := rt.Add(ctx, list, p.runtimeConf())
	if err != nil {
		return nil, fmt.Errorf("ADD %s on %s: %s", name, n.Name, cniruntime.Describe(err))
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, err
	}
	for _, ip := range res.IPs {
		p.IPs = append(p.IPs, ip.Address.IP.String())
	}
	l.mu.Lock()
	l.Pods = append(l.Pods, p)
	sort.Slice(l.Pods, func(i, j int) bool { return podLess(l.Pods[i].Name, l.Pods[j].Name) })
	err = l.save()
	l.mu.Unlock()
	return p, err
}

func (p *Pod) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: p.ContainerID, NetNS: filepath.Join(netns.RunDir, p.NS), IfName: "eth0"}
}

// DelPod detaches the pod (DEL through libcni) and removes its namespace.
func (l *Lab) DelPod(ctx context.Context, name string) error {
	if err := l.notKube("pod del"); err != nil {
		return err
	}
	p, err := l.pod(name)
	if err != nil {
		return err
	}
	n, err := l.node(p.Node)
	if err != nil {
		return err
	}
	rt, list, done, err := runtimeOf(n)
	if err != nil {
		return err
	}
	defer done()
	if err := rt.Del(ctx, list, p.runtimeConf()); err != nil {
		return fmt.Errorf("DEL %s on %s: %s", name, n.Name, cniruntime.Describe(err))
	}
	if err := netns.DeleteNamed(p.NS); err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, q := range l.Pods {
		if q == p {
			l.Pods = append(l.Pods[:i], l.Pods[i+1:]...)
			break
		}
	}
	l.forgetNS(p.NS)
	return l.save()
}

// forgetNS drops a namespace from the state; the caller holds mu.
func (l *Lab) forgetNS(name string) {
	for i, n := range l.Namespaces {
		if n == name {
			l.Namespaces = append(l.Namespaces[:i], l.Namespaces[i+1:]...)
			return
		}
	}
}

// podsOf lists the node's pods.
func (l *Lab) podsOf(node string) []*Pod {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []*Pod
	for _, p := range l.Pods {
		if p.Node == node {
			out = append(out, p)
		}
	}
	return out
}

// podLess orders pod names n<i>-p<j> by node, then pod number.
func podLess(a, b string) bool {
	var ai, aj, bi, bj int
	fmt.Sscanf(a, "n%d-p%d", &ai, &aj)
	fmt.Sscanf(b, "n%d-p%d", &bi, &bj)
	if ai != bi {
		return ai < bi
	}
	return aj < bj
}
