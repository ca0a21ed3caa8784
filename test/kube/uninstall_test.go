package kube

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/fabric/routed"
	nftegress "github.com/podnet/podnet/internal/nft/egress"
)

// testUninstall removes podnet as docs/kubernetes.md says: delete
// deploy/podnet.yaml, apply deploy/podnet-cleanup.yaml (with the lab's
// configuration: lab.CleanupManifest), wait for its pods on every Node,
// delete it. Then no node (of those in the API) has podnet's
// routes, VXLAN device, conflist, or nftables tables but the plugins'
// empty chains (a node that ran a hostPort pod keeps its portmap base
// chains, as docs/kubernetes.md says), every Node says
// NetworkUnavailable=True (PodnetLeft) without podnet's annotations, and
// the plugin binaries stay, as documented (running pods need them for
// their DEL).
func testUninstall(t *testing.T, ctx context.Context, c *cluster) {
	live, err := c.client.CoreV1().ConfigMaps(metav1.NamespaceSystem).Get(ctx, "podnet-config", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cleanup, err := c.lab.CleanupManifest()
	if err != nil {
		t.Fatal(err)
	}
	if err := sameConfig(live, cleanup); err != nil {
		t.Fatalf("the cleanup must run with the cluster's configuration (docs/kubernetes.md): %v", err)
	}
	kubectl := func(manifest []byte, args ...string) {
		var stdin io.Reader
		if manifest != nil {
			stdin = bytes.NewReader(manifest)
		}
		out, err := c.lab.Kubectl(ctx, stdin, args...)
		if err != nil {
			t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), strings.TrimSpace(string(out)))
	}
	start := time.Now()
	kubectl(deploy.Manifest, "delete", "--cascade=foreground", "-f", "-")
	kubectl(cleanup, "apply", "-f", "-")
	// Not `kubectl rollout status` (docs/kubernetes.md): the DaemonSet
	// controller has no handler for Node deletions, so when it has not
	// seen NodeDeleted's deletion yet it still counts that node, and its
	// pod for it stays Pending for good. What the uninstall needs is a
	// ready cleanup pod on every Node that exists.
	err = poll(ctx, 2*time.Minute, "a ready podnet-cleanup pod on every Node", func(ctx context.Context) error {
		nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		pods, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/component=cleanup"})
		if err != nil {
			return err
		}
		ready := map[string]bool{}
		for i := range pods.Items {
			p := &pods.Items[i]
			if p.DeletionTimestamp == nil && podCondition(p, corev1.PodReady).Status == corev1.ConditionTrue {
				ready[p.Spec.NodeName] = true
			}
		}
		var missing []string
		for _, n := range nodes.Items {
			if !ready[n.Name] {
				missing = append(missing, n.Name)
			}
		}
		if len(missing) > 0 {
			return fmt.Errorf("no ready cleanup pod on %s", strings.Join(missing, ", "))
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	// What each node's leave did, and how often it ran.
	kubectl(nil, "-n", "kube-system", "get", "pods", "-l", "app.kubernetes.io/component=cleanup", "-o", "wide")
	c.logPods(t, ctx, "app.kubernetes.io/component=cleanup", 20)
	kubectl(cleanup, "delete", "-f", "-")
	t.Logf("uninstalled in %s", time.Since(start).Round(time.Millisecond))

	nodes, err := c.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) == 0 {
		t.Fatal("no Node left in the API to check")
	}
	for i := range nodes.Items {
		n := &nodes.Items[i]
		left, kept, err := c.podnetState(n.Name, routed.RouteProtocol, routed.DefaultDevice, nftegress.Chain, filepath.Join(c.kn[n.Name].FS(), "etc/cni/net.d"))
		if err != nil {
			t.Fatal(err)
		}
		if len(left) > 0 {
			t.Errorf("node %s keeps podnet's network after the uninstall:\n  %s", n.Name, strings.Join(left, "\n  "))
		}
		for _, k := range kept {
			t.Logf("node %s keeps, as documented, the plugins' %s", n.Name, k)
		}
		plugin := filepath.Join(c.kn[n.Name].FS(), "opt/cni/bin/podnet-cni")
		if _, err := os.Stat(plugin); err != nil {
			t.Errorf("node %s: the plugin binary, which the uninstall leaves for the pods' DEL: %v", n.Name, err)
		}
		cond, ok := nodeCondition(n, corev1.NodeNetworkUnavailable)
		if !ok || cond.Status != corev1.ConditionTrue || cond.Reason != kubeapi.ReasonLeft {
			t.Errorf("node %s: NetworkUnavailable %q reason %q, want %q reason %q", n.Name, cond.Status, cond.Reason, corev1.ConditionTrue, kubeapi.ReasonLeft)
		}
		for _, a := range []string{kubeapi.AnnotationNodeIP, kubeapi.AnnotationNodeIP6, kubeapi.AnnotationVTEPMAC} {
			if v, ok := n.Annotations[a]; ok {
				t.Errorf("node %s keeps annotation %s=%s", n.Name, a, v)
			}
		}
	}
	err = poll(ctx, time.Minute, "no podnet pod left", func(ctx context.Context) error {
		pods, err := c.client.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=podnet"})
		if err == nil && len(pods.Items) > 0 {
			err = fmt.Errorf("%d podnet pods, e.g. %s on %s", len(pods.Items), pods.Items[0].Name, pods.Items[0].Spec.NodeName)
		}
		return err
	})
	if err != nil {
		t.Error(err)
	}
}

// sameConfig fails unless the cluster's podnet-config holds the agent
// configuration the cleanup manifest's ConfigMap holds.
func sameConfig(live *corev1.ConfigMap, manifest []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	for {
		var cm corev1.ConfigMap
		if err := dec.Decode(&cm); errors.Is(err, io.EOF) {
			return errors.New("the cleanup manifest has no ConfigMap")
		} else if err != nil {
			return err
		}
		if cm.Kind != "ConfigMap" {
			continue
		}
		var want, got map[string]any
		if err := yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &want); err != nil {
			return fmt.Errorf("the cleanup manifest's config.yaml: %w", err)
		}
		if err := yaml.Unmarshal([]byte(live.Data["config.yaml"]), &got); err != nil {
			return fmt.Errorf("the cluster's config.yaml: %w", err)
		}
		if !reflect.DeepEqual(want, got) {
			return fmt.Errorf("the cluster's podnet-config %v, the cleanup manifest's %v", got, want)
		}
		return nil
	}
}
