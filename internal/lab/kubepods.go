package lab

import (
	"context"
	"fmt"
	"path"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// KubePods lists the running pods of the lab's Kubernetes in namespace
// matching the label selector as lab pods — Name "namespace/name", Node,
// IPs from status.podIPs, NetNS its sandbox's namespace — so that
// CheckPods runs the matrix over them. Host-network pods are left out
// (they have the node's network, not a pod's).
func (l *Lab) KubePods(ctx context.Context, namespace, selector string) ([]*Pod, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	list, err := c.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{LabelSelector: selector})
	if err != nil {
		return nil, fmt.Errorf("pods %s in %s: %w", selector, namespace, err)
	}
	var pods []*Pod
	for i := range list.Items {
		kp := &list.Items[i]
		if kp.Status.Phase != corev1.PodRunning || kp.DeletionTimestamp != nil || kp.Spec.HostNetwork {
			continue
		}
		p := &Pod{Name: kp.Namespace + "/" + kp.Name, Node: kp.Spec.NodeName}
		for _, ip := range kp.Status.PodIPs {
			p.IPs = append(p.IPs, ip.IP)
		}
		pid, err := l.sandboxPID(kp)
		if err != nil {
			return nil, err
		}
		p.NetNS = fmt.Sprintf("/proc/%d/ns/net", pid)
		pods = append(pods, p)
	}
	sort.Slice(pods, func(i, j int) bool {
		if pods[i].Node != pods[j].Node {
			return podLess(pods[i].Node+"-p0", pods[j].Node+"-p0")
		}
		return pods[i].Name < pods[j].Name
	})
	return pods, nil
}

// PodNetNS opens the network namespace of the lab's Kubernetes pod
// namespace/name, found through its sandbox's process.
func (l *Lab) PodNetNS(ctx context.Context, namespace, name string) (*netns.NS, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	kp, err := c.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", namespace, name, err)
	}
	pid, err := l.sandboxPID(kp)
	if err != nil {
		return nil, err
	}
	return netns.Open(fmt.Sprintf("/proc/%d/ns/net", pid))
}

// OpenNetNS opens the network namespace of the lab's pod or node name,
// of the outside host (Outside), or in Kubernetes mode of the pod
// namespace/name.
func (l *Lab) OpenNetNS(ctx context.Context, name string) (*netns.NS, error) {
	if ns, pod, ok := strings.Cut(name, "/"); ok && l.Spec.Kubernetes {
		return l.PodNetNS(ctx, ns, pod)
	}
	nsName, err := l.Namespace(name)
	if err != nil {
		return nil, err
	}
	return openNamed(nsName)
}

// qosDirs are where kubelet (cgroupfs driver, cgroupsPerQOS) puts a pod's
// cgroup below the node's cgroup root, by the pod's QoS class.
var qosDirs = map[corev1.PodQOSClass]string{
	corev1.PodQOSGuaranteed: "kubepods",
	corev1.PodQOSBurstable:  "kubepods/burstable",
	corev1.PodQOSBestEffort: "kubepods/besteffort",
}

// sandboxPID finds a process of the pod's sandbox in the pod's cgroup on
// its node: the pause process, or any process of the pod (they all share
// the sandbox's network namespace).
func (l *Lab) sandboxPID(kp *corev1.Pod) (int, error) {
	where := fmt.Sprintf("pod %s/%s", kp.Namespace, kp.Name)
	if kp.Spec.NodeName == "" {
		return 0, fmt.Errorf("%s is not scheduled", where)
	}
	kn, err := l.KubeNode(kp.Spec.NodeName)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", where, err)
	}
	qos, ok := qosDirs[kp.Status.QOSClass]
	if !ok {
		return 0, fmt.Errorf("%s: unknown QoS class %q", where, kp.Status.QOSClass)
	}
	cgroup := path.Join(kn.CgroupRoot(), qos, "pod"+string(kp.UID))
	pids := kube.CgroupProcs(cgroup)
	if len(pids) == 0 {
		return 0, fmt.Errorf("%s: no process in its cgroup %s on %s", where, cgroup, kp.Spec.NodeName)
	}
	for _, pid := range pids {
		if comm, _, ok := procStat(pid); ok && comm == "pause" {
			return pid, nil
		}
	}
	return pids[0], nil
}
