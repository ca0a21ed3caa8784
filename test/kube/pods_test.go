package kube

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// testLabel marks the tests' pods with the step that made them.
const testLabel = "podnet.dev/test"

// podTimeout bounds the wait for pods to run, or to be gone.
const podTimeout = 3 * time.Minute

// podSpec is a busybox pod of the tests.
type podSpec struct {
	name string
	// namespace is the pod's; empty is testNamespace.
	namespace string
	// node pins the pod (spec.nodeName); empty leaves it to the scheduler.
	node        string
	step        string // testLabel's value
	labels      map[string]string
	annotations map[string]string
	ports       []corev1.ContainerPort
	// lingering pods ignore SIGTERM: deleted, they stay terminating (their
	// network with them) for lingerGrace, until kubelet kills them.
	lingering bool
	// script, when set, is the shell script the container runs instead of
	// waiting (it exits at once on SIGTERM all the same).
	script string
}

// ns is the pod's namespace.
func (s podSpec) ns() string {
	if s.namespace == "" {
		return testNamespace
	}
	return s.namespace
}

// lingerGrace is the termination grace period of lingering pods.
const lingerGrace = 120

// pod is the API object of spec: busybox waiting to be stopped, which it
// is at once (a shell as PID 1 ignores SIGTERM unless it traps it), or,
// lingering, only once its grace period is over.
func (s podSpec) pod() *corev1.Pod {
	labels := map[string]string{testLabel: s.step}
	for k, v := range s.labels {
		labels[k] = v
	}
	grace := int64(1)
	command := []string{"sh", "-c", "trap 'exit 0' TERM; sleep 1000000 & wait"}
	switch {
	case s.lingering:
		grace = lingerGrace
		command = []string{"sh", "-c", "sleep 1000000 & wait"}
	case s.script != "":
		command = []string{"sh", "-c", "trap 'exit 0' TERM; " + s.script}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: s.name, Namespace: s.ns(), Labels: labels, Annotations: s.annotations},
		Spec: corev1.PodSpec{
			NodeName:                      s.node,
			TerminationGracePeriodSeconds: &grace,
			Containers: []corev1.Container{{
				Name: "main", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
				Command: command,
				Ports:   s.ports,
			}},
		},
	}
}

// runPods creates the pods and waits until each runs with an IP; they
// are deleted when t ends. The pods are returned by name (names must be unique
// across the specs' namespaces).
func (c *cluster) runPods(t *testing.T, ctx context.Context, specs ...podSpec) map[string]*corev1.Pod {
	t.Helper()
	names := map[string][]string{} // by namespace
	var order []string
	for _, s := range specs {
		if names[s.ns()] == nil {
			order = append(order, s.ns())
		}
		names[s.ns()] = append(names[s.ns()], s.name)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), podTimeout)
		defer cancel()
		for _, ns := range order {
			if err := c.deletePodsIn(ctx, ns, names[ns]...); err != nil {
				t.Error(err)
			}
		}
	})
	if err := c.createPods(ctx, specs...); err != nil {
		t.Fatal(err)
	}
	pods := map[string]*corev1.Pod{}
	for _, ns := range order {
		got, err := c.waitRunningIn(ctx, ns, names[ns]...)
		if err != nil {
			t.Fatal(err)
		}
		for n, p := range got {
			pods[n] = p
		}
	}
	return pods
}

// createPods creates the pods in the API.
func (c *cluster) createPods(ctx context.Context, specs ...podSpec) error {
	for _, s := range specs {
		if _, err := c.client.CoreV1().Pods(s.ns()).Create(ctx, s.pod(), metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("create pod %s/%s: %w", s.ns(), s.name, err)
		}
	}
	return nil
}

// waitRunning waits until the named pods of testNamespace run with an
// IP, and returns them by name.
func (c *cluster) waitRunning(ctx context.Context, names ...string) (map[string]*corev1.Pod, error) {
	return c.waitRunningIn(ctx, testNamespace, names...)
}

// waitRunningIn is waitRunning in namespace.
func (c *cluster) waitRunningIn(ctx context.Context, namespace string, names ...string) (map[string]*corev1.Pod, error) {
	want := map[string]bool{}
	for _, n := range names {
		want[n] = true
	}
	var got map[string]*corev1.Pod
	err := poll(ctx, podTimeout, fmt.Sprintf("%d pods of %s running", len(names), namespace), func(ctx context.Context) error {
		list, err := c.client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		got = map[string]*corev1.Pod{}
		var waiting []string
		for i := range list.Items {
			p := &list.Items[i]
			if !want[p.Name] {
				continue
			}
			if p.Status.Phase == corev1.PodRunning && p.Status.PodIP != "" {
				got[p.Name] = p
			} else {
				waiting = append(waiting, fmt.Sprintf("%s %s on %q: %s", p.Name, p.Status.Phase, p.Spec.NodeName, podWhy(p)))
			}
		}
		if len(got) == len(want) {
			return nil
		}
		sort.Strings(waiting)
		return fmt.Errorf("%d of %d running; waiting: %s", len(got), len(want), strings.Join(first(waiting, 5), "; "))
	})
	return got, err
}

// podWhy says why a pod does not run yet: its conditions' and
// containers' reasons.
func podWhy(p *corev1.Pod) string {
	var why []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			why = append(why, string(c.Type)+": "+c.Message)
		}
	}
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			why = append(why, w.Reason+": "+w.Message)
		}
	}
	return strings.Join(why, ", ")
}

// first returns at most n elements of s.
func first(s []string, n int) []string {
	if len(s) > n {
		return append(s[:n:n], fmt.Sprintf("(%d more)", len(s)-n))
	}
	return s
}

// deletePods deletes the named pods of testNamespace and waits until the
// API has none of them (kubelet confirmed they stopped).
func (c *cluster) deletePods(ctx context.Context, names ...string) error {
	return c.deletePodsIn(ctx, testNamespace, names...)
}

// deletePodsIn is deletePods in namespace.
func (c *cluster) deletePodsIn(ctx context.Context, namespace string, names ...string) error {
	for _, n := range names {
		err := c.client.CoreV1().Pods(namespace).Delete(ctx, n, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete pod %s/%s: %w", namespace, n, err)
		}
	}
	return poll(ctx, podTimeout, fmt.Sprintf("%d pods of %s deleted", len(names), namespace), func(ctx context.Context) error {
		var left []string
		for _, n := range names {
			_, err := c.client.CoreV1().Pods(namespace).Get(ctx, n, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
			case err != nil:
				return err
			default:
				left = append(left, n)
			}
		}
		if len(left) > 0 {
			return fmt.Errorf("still in the API: %s", strings.Join(first(left, 5), ", "))
		}
		return nil
	})
}

// podNS opens a pod's network namespace until t ends.
func (c *cluster) podNS(t *testing.T, ctx context.Context, p *corev1.Pod) *netns.NS {
	t.Helper()
	ns, err := c.lab.PodNetNS(ctx, p.Namespace, p.Name)
	if err != nil {
		t.Fatalf("network namespace of pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// podIP is the pod's IPv4 address.
func podIP(p *corev1.Pod) net.IP { return net.ParseIP(p.Status.PodIP).To4() }

// podIP6 is the pod's IPv6 address; nil when it has none.
func podIP6(p *corev1.Pod) net.IP {
	for _, a := range p.Status.PodIPs {
		if ip := net.ParseIP(a.IP); ip != nil && ip.To4() == nil {
			return ip
		}
	}
	return nil
}

// cri is a CRI runtime client of the node's containerd; closed when t
// ends.
func (c *cluster) cri(t *testing.T, node string) runtimeapi.RuntimeServiceClient {
	t.Helper()
	conn, err := kube.DialCRI(c.kn[node].ContainerdSocket())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return runtimeapi.NewRuntimeServiceClient(conn)
}

// sandboxID is the ID of the ready sandbox of the API pod p, as its
// node's containerd lists it.
func (c *cluster) sandboxID(ctx context.Context, rt runtimeapi.RuntimeServiceClient, p *corev1.Pod) (string, error) {
	r, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State:         &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
		LabelSelector: map[string]string{"io.kubernetes.pod.uid": string(p.UID)},
	}})
	if err != nil {
		return "", fmt.Errorf("ListPodSandbox on %s: %w", p.Spec.NodeName, err)
	}
	if len(r.Items) != 1 {
		return "", fmt.Errorf("pod %s: %d ready sandboxes on %s, want 1", p.Name, len(r.Items), p.Spec.NodeName)
	}
	return r.Items[0].Id, nil
}

// liveSandboxes lists the ready sandboxes of the node's containerd, by
// ID, naming their pods.
func liveSandboxes(ctx context.Context, rt runtimeapi.RuntimeServiceClient) (map[string]string, error) {
	r, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{Filter: &runtimeapi.PodSandboxFilter{
		State: &runtimeapi.PodSandboxStateValue{State: runtimeapi.PodSandboxState_SANDBOX_READY},
	}})
	if err != nil {
		return nil, fmt.Errorf("ListPodSandbox: %w", err)
	}
	live := map[string]string{}
	for _, s := range r.Items {
		live[s.Id] = s.GetMetadata().GetNamespace() + "/" + s.GetMetadata().GetName()
	}
	return live, nil
}
