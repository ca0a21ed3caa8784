package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"
)

// The policy demo (Kubernetes mode): the pods labelled as clients, and
// the two NetworkPolicies in the lab's namespace.
const (
	// networkPolicyKey is the agent configuration's switch of NetworkPolicy
	// enforcement (podnet-agent --network-policy).
	networkPolicyKey = "network-policy"
	clientLabel      = "role"
	clientValue      = "client"
	denyPolicy       = "lab-deny-ingress"
	allowPolicy      = "lab-allow-clients"
	// policyWait bounds the wait for the agents to enforce, or lift, the
	// demo's policies.
	policyWait = 30 * time.Second
)

// NetworkPolicyOn tells whether podnet's agents enforce NetworkPolicy:
// the network-policy switch of the podnet ConfigMap the cluster runs.
func (l *Lab) NetworkPolicyOn(ctx context.Context) (bool, error) {
	c, err := l.Client()
	if err != nil {
		return false, err
	}
	cm, err := c.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		return false, fmt.Errorf("podnet's ConfigMap: %w", err)
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		return false, fmt.Errorf("podnet's config.yaml: %w", err)
	}
	on, _ := cfg[networkPolicyKey].(bool)
	return on, nil
}

// PolicyDemo shows NetworkPolicy on the lab's pods: it labels every third
// pod role=client, applies a default-deny ingress policy and one allowing
// ingress from the clients to the lab's pods, waits until the matrix
// shows exactly that (a pod reaches another only if it is a client; every
// pod still reaches the outside: egress is not isolated), prints it with
// the denied cells marked, then removes the policies and labels and waits
// until every pod reaches every pod again. Without network policy on it
// says so and does nothing.
func (l *Lab) PolicyDemo(ctx context.Context, out io.Writer) error {
	on, err := l.NetworkPolicyOn(ctx)
	if err != nil {
		return err
	}
	if !on {
		fmt.Fprintf(out, "network policy is off (%s in podnet's ConfigMap): skipping the policy demo\n", networkPolicyKey)
		return nil
	}
	c, err := l.Client()
	if err != nil {
		return err
	}
	pods, err := l.KubePods(ctx, PodsNamespace, PodsSelector)
	if err != nil {
		return err
	}
	clients := map[string]bool{}
	for i, p := range pods {
		if i%3 == 0 {
			clients[p.Name] = true
		}
	}
	undo := func() error {
		for _, name := range []string{denyPolicy, allowPolicy} {
			err := c.NetworkingV1().NetworkPolicies(PodsNamespace).Delete(context.Background(), name, metav1.DeleteOptions{})
			if err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete NetworkPolicy %s: %w", name, err)
			}
		}
		for name := range clients {
			if err := labelPod(context.Background(), c, name, clientLabel, nil); err != nil && !apierrors.IsNotFound(err) {
				return err
			}
		}
		return nil
	}
	for name := range clients {
		if err := labelPod(ctx, c, name, clientLabel, clientValue); err != nil {
			return errors.Join(err, undo())
		}
	}
	for _, np := range demoPolicies() {
		if _, err := c.NetworkingV1().NetworkPolicies(PodsNamespace).Create(ctx, np, metav1.CreateOptions{}); err != nil {
			return errors.Join(fmt.Errorf("create NetworkPolicy %s: %w", np.Name, err), undo())
		}
	}
	var names, clientNames []string
	for _, p := range pods {
		names = append(names, p.Name)
	}
	prefix := commonPrefix(names)
	for _, p := range pods {
		if clients[p.Name] {
			clientNames = append(clientNames, strings.TrimPrefix(p.Name, prefix))
		}
	}
	fmt.Fprintf(out, "NetworkPolicy in %s: %s (every pod isolated for ingress), %s (ingress from pods labelled %s=%s: %s)\n",
		PodsNamespace, denyPolicy, allowPolicy, clientLabel, clientValue, strings.Join(clientNames, ", "))
	allowed := func(p Probe) bool { return p.From == p.To || p.To == Outside || clients[p.From] }
	r, err := l.checkUntil(ctx, pods, allowed)
	if err != nil {
		return errors.Join(err, undo())
	}
	r.Print(out)
	var enforced error
	if n := r.Failures(); n > 0 {
		enforced = fmt.Errorf("%d probes not as the policies say after %s", n, policyWait)
	}
	if err := undo(); err != nil {
		return errors.Join(enforced, err)
	}
	if r, err = l.checkUntil(ctx, pods, nil); err != nil {
		return errors.Join(enforced, err)
	}
	fmt.Fprintf(out, "policies and labels removed: %d probes, %d failures\n", len(r.Probes)+len(r.Outside), r.Failures())
	if r.Failures() > 0 {
		r.Print(out)
		return errors.Join(enforced, fmt.Errorf("%d probes failed once the policies were removed", r.Failures()))
	}
	return enforced
}

// checkUntil runs the pod matrix (without the Service's probes) until
// every probe does what allowed says, for up to policyWait, and returns
// the last report.
func (l *Lab) checkUntil(ctx context.Context, pods []*Pod, allowed func(Probe) bool) (*Report, error) {
	deadline := time.Now().Add(policyWait)
	for {
		r, err := l.checkPods(ctx, pods, false)
		if err != nil {
			return nil, err
		}
		r.Allowed = allowed
		if r.Failures() == 0 || time.Now().After(deadline) {
			return r, nil
		}
		select {
		case <-ctx.Done():
			return r, ctx.Err()
		case <-time.After(kubePollStep):
		}
	}
}

// demoPolicies are the demo's NetworkPolicies in the lab's namespace.
func demoPolicies() []*networkingv1.NetworkPolicy {
	meta := func(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name, Namespace: PodsNamespace} }
	lab := metav1.LabelSelector{MatchLabels: podsLabels()}
	return []*networkingv1.NetworkPolicy{
		{ObjectMeta: meta(denyPolicy), Spec: networkingv1.NetworkPolicySpec{
			PodSelector: lab, PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress},
		}},
		{ObjectMeta: meta(allowPolicy), Spec: networkingv1.NetworkPolicySpec{
			PodSelector: lab,
			Ingress: []networkingv1.NetworkPolicyIngressRule{{From: []networkingv1.NetworkPolicyPeer{{
				PodSelector: &metav1.LabelSelector{MatchLabels: map[string]string{clientLabel: clientValue}},
			}}}},
		}},
	}
}

// labelPod sets (value a string) or removes (nil) a label of the lab's
// pod "namespace/name".
func labelPod(ctx context.Context, c kubernetes.Interface, pod, key string, value any) error {
	ns, name, _ := strings.Cut(pod, "/")
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]any{key: value}}})
	if err != nil {
		return err
	}
	if _, err := c.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label pod %s %s: %w", pod, key, err)
	}
	return nil
}
