package cri

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// podSpec is what the test asks of one pod.
type podSpec struct {
	name        string
	ports       []*runtimeapi.PortMapping
	annotations map[string]string
}

// runPod runs a pod sandbox the way kubelet asks for one: metadata with
// a fresh UID, hostname, log directory (which kubelet creates), cluster
// DNS, port mappings, kubelet's labels, the pod's cgroup parent and
// namespace options (pod network, container PID, pod IPC).
func (n *node) runPod(ctx context.Context, p podSpec) (string, error) {
	uid := cniruntime.RandomID()[:32]
	logDir := filepath.Join(n.sb.Dir, "pods", "default_"+p.name+"_"+uid)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return "", err
	}
	r, err := n.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: p.name, Namespace: "default", Uid: uid},
		Hostname:     p.name,
		LogDirectory: logDir,
		DnsConfig: &runtimeapi.DNSConfig{
			Servers:  []string{"10.96.0.10"},
			Searches: []string{"default.svc.cluster.local", "svc.cluster.local", "cluster.local"},
			Options:  []string{"ndots:5"},
		},
		PortMappings: p.ports,
		Labels: map[string]string{
			"io.kubernetes.pod.name":      p.name,
			"io.kubernetes.pod.namespace": "default",
			"io.kubernetes.pod.uid":       uid,
		},
		Annotations: p.annotations,
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			CgroupParent: n.cgroup,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
				NamespaceOptions: &runtimeapi.NamespaceOption{
					Network: runtimeapi.NamespaceMode_POD,
					Pid:     runtimeapi.NamespaceMode_CONTAINER,
					Ipc:     runtimeapi.NamespaceMode_POD,
				},
			},
		},
	}})
	if err != nil {
		return "", fmt.Errorf("RunPodSandbox %s: %w", p.name, err)
	}
	return r.PodSandboxId, nil
}

// pod is a running pod sandbox as PodSandboxStatus reports it.
type pod struct {
	name, id string
	ip       net.IP
	// netns is the pod's network namespace path, the CNI_NETNS
	// containerd gave the plugins (in containerd's mount namespace).
	netns string
	// cniResult is the CNI result as containerd kept it.
	cniResult json.RawMessage
	// ns is the pod's network namespace, open until the test ends.
	ns *netns.NS
}

// status asks PodSandboxStatus (verbose, as crictl inspectp does) for the
// pod's IP and network namespace, and opens the namespace until the test
// ends.
func (n *node) status(t *testing.T, ctx context.Context, name, id string) (*pod, error) {
	st, err := n.rt.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: id, Verbose: true})
	if err != nil {
		return nil, fmt.Errorf("PodSandboxStatus %s: %w", name, err)
	}
	p := &pod{name: name, id: id}
	if s := st.GetStatus(); s.GetState() != runtimeapi.PodSandboxState_SANDBOX_READY {
		return nil, fmt.Errorf("pod %s is %v", name, s.GetState())
	}
	if p.ip = net.ParseIP(st.GetStatus().GetNetwork().GetIp()); p.ip == nil {
		return nil, fmt.Errorf("pod %s: no IP in status %v", name, st.GetStatus().GetNetwork())
	}
	var info struct {
		RuntimeSpec struct {
			Linux struct {
				Namespaces []struct{ Type, Path string }
			}
		} `json:"runtimeSpec"`
		CNIResult json.RawMessage `json:"cniResult"`
	}
	if err := json.Unmarshal([]byte(st.Info["info"]), &info); err != nil {
		return nil, fmt.Errorf("pod %s: verbose info: %w", name, err)
	}
	for _, ns := range info.RuntimeSpec.Linux.Namespaces {
		if ns.Type == "network" {
			p.netns = ns.Path
		}
	}
	if p.netns == "" {
		return nil, fmt.Errorf("pod %s: no network namespace in the runtime spec", name)
	}
	p.cniResult = info.CNIResult
	f, err := n.open(p.netns)
	if err != nil {
		return nil, fmt.Errorf("pod %s: %w", name, err)
	}
	defer f.Close()
	if p.ns, err = netns.Open(fmt.Sprintf("/proc/self/fd/%d", f.Fd())); err != nil {
		return nil, fmt.Errorf("pod %s: open its namespace: %w", name, err)
	}
	t.Cleanup(func() { p.ns.Close() })
	return p, nil
}

// remove stops and removes the pod, in kubelet's order.
func (n *node) remove(ctx context.Context, p *pod) error {
	if _, err := n.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("StopPodSandbox %s: %w", p.name, err)
	}
	if _, err := n.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.id}); err != nil {
		return fmt.Errorf("RemovePodSandbox %s: %w", p.name, err)
	}
	return nil
}

// leftovers lists what podnet keeps on the node for the pod sandbox id,
// one line each, starting with what it is: links with its identity
// ("veth …" the host end, "ifb …" bandwidth's), IPAM allocations naming
// it ("allocation …") and nftables rules with its identity ("rule …").
func (n *node) leftovers(id string) ([]string, error) {
	var out []string
	links, err := sandbox.Links(n.sb.Host.NS)
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		if strings.Contains(l.Alias, id) {
			out = append(out, fmt.Sprintf("%s %s (%s)", l.Type, l.Name, l.Alias))
		}
	}
	allocs, err := sandbox.Allocations(n.ipamDir, id)
	if err != nil {
		return nil, err
	}
	for _, a := range allocs {
		if a.IP == "" || strings.Contains(a.Data, id) {
			out = append(out, fmt.Sprintf("allocation %s (%q)", a.Path, a.Data))
		}
	}
	rules, err := sandbox.PodnetRules(n.sb.Host.NS)
	if err != nil {
		return nil, err
	}
	for _, r := range rules {
		if strings.Contains(r.Comment, id) {
			out = append(out, "rule "+r.String())
		}
	}
	return out, nil
}
