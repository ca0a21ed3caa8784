package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/lab"
)

// The sides of the comparison.
const (
	podnetSide    = "podnet"
	referenceSide = "reference"
)

// referenceLabel marks the node of the reference plugins; podnet's
// DaemonSet is kept off nodes that have it.
const referenceLabel = "bench.podnet.dev/cni"

// referenceConflist is the conflist the reference node gets, in its CNI
// conf dir: named to sort before podnet's (containerd 1.6 takes the
// lexically first), although podnet's is removed.
const referenceConflist = "05-reference.conflist"

// refPlugins are the reference plugins the conflist needs (loopback:
// containerd runs it for the pod's lo).
var refPlugins = []string{"bridge", "host-local", "portmap", "loopback"}

// reference is the reference plugins' installation.
type reference struct {
	Dir     string `json:"dir"`
	Version string `json:"version,omitempty"` // the package's, when dpkg knows it
}

// referencePlugins checks that dir holds the reference plugins.
func referencePlugins(dir string) (reference, error) {
	for _, p := range refPlugins {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			return reference{}, fmt.Errorf("reference plugin %s: %w (apt-get install containernetworking-plugins; .ci/deps installs it)", p, err)
		}
	}
	r := reference{Dir: dir}
	if out, err := exec.Command("dpkg-query", "-S", filepath.Join(dir, "bridge")).Output(); err == nil {
		pkg, _, _ := strings.Cut(strings.TrimSpace(string(out)), ":")
		if v, err := exec.Command("dpkg-query", "-W", "-f=${Version}", pkg).Output(); err == nil {
			r.Version = pkg + " " + string(v)
		}
	}
	return r, nil
}

func (r reference) describe() string {
	s := "reference bridge (cni0, isGateway, ipMasq, hairpinMode) + host-local + portmap, cniVersion 1.0.0, plugins of " + r.Dir
	if r.Version != "" {
		s += " (" + r.Version + ")"
	}
	return s
}

// referenceConf is the usual reference conflist of a Kubernetes node
// (containerd's own, as its install scripts write it), over the node's
// podCIDR.
func referenceConf(podCIDR string) ([]byte, error) {
	return json.MarshalIndent(map[string]any{
		"cniVersion": "1.0.0",
		"name":       "reference",
		"plugins": []any{
			map[string]any{
				"type":        "bridge",
				"bridge":      "cni0",
				"isGateway":   true,
				"ipMasq":      true,
				"hairpinMode": true,
				"ipam": map[string]any{
					"type":   "host-local",
					"ranges": [][]map[string]string{{{"subnet": podCIDR}}},
					"routes": []map[string]string{{"dst": "0.0.0.0/0"}},
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}, "", "  ")
}

// useReference turns node into the reference side: podnet's DaemonSet
// kept off it (its agent pod goes; the kernel state it made stays, as
// an agent's restart leaves it), then its CNI bin dir holds the reference
// plugins alone and its conf dir the reference conflist alone.
func (b *bench) useReference(ctx context.Context, node string, ref reference) error {
	patch := fmt.Sprintf(`{"metadata":{"labels":{%q:%q}}}`, referenceLabel, referenceSide)
	if _, err := b.c.CoreV1().Nodes().Patch(ctx, node, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("label node %s: %w", node, err)
	}
	affinity := fmt.Sprintf(`{"spec":{"template":{"spec":{"affinity":{"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":`+
		`{"nodeSelectorTerms":[{"matchExpressions":[{"key":%q,"operator":"DoesNotExist"}]}]}}}}}}}`, referenceLabel)
	if _, err := b.c.AppsV1().DaemonSets(metav1.NamespaceSystem).Patch(ctx, "podnet", types.StrategicMergePatchType, []byte(affinity), metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("keep podnet off %s: %w", node, err)
	}
	if err := poll(ctx, b.o.roundTimeout, "podnet's DaemonSet off "+node, func(ctx context.Context) (string, bool, error) {
		return podnetOnlyElsewhere(ctx, b.c, node)
	}); err != nil {
		return err
	}
	kn, err := b.l.KubeNode(node)
	if err != nil {
		return err
	}
	n, err := b.c.CoreV1().Nodes().Get(ctx, node, metav1.GetOptions{})
	if err != nil {
		return err
	}
	if n.Spec.PodCIDR == "" {
		return fmt.Errorf("node %s has no podCIDR", node)
	}
	conf, err := referenceConf(n.Spec.PodCIDR)
	if err != nil {
		return err
	}
	binDir := filepath.Join(kn.FS(), "opt/cni/bin")
	old, err := os.ReadDir(binDir)
	if err != nil {
		return err
	}
	for _, e := range old {
		if err := os.RemoveAll(filepath.Join(binDir, e.Name())); err != nil {
			return err
		}
	}
	for _, p := range refPlugins {
		if err := copyFile(filepath.Join(ref.Dir, p), filepath.Join(binDir, p)); err != nil {
			return fmt.Errorf("reference plugin %s: %w", p, err)
		}
	}
	confDir := filepath.Join(kn.FS(), "etc/cni/net.d")
	if err := os.WriteFile(filepath.Join(confDir, referenceConflist), conf, 0o644); err != nil {
		return err
	}
	if err := os.Remove(filepath.Join(confDir, cniconf.FileName)); err != nil && !os.IsNotExist(err) {
		return err
	}
	fmt.Fprintf(os.Stderr, "node %s: podnet's agent gone, reference conflist over %s installed\n", node, n.Spec.PodCIDR)
	return nil
}

// podnetOnlyElsewhere tells whether podnet's DaemonSet has rolled out
// its new template to every other node and runs no pod on node.
func podnetOnlyElsewhere(ctx context.Context, c kubernetes.Interface, node string) (string, bool, error) {
	ds, err := c.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "podnet", metav1.GetOptions{})
	if err != nil {
		return "", false, err
	}
	pods, err := c.CoreV1().Pods(metav1.NamespaceSystem).List(ctx, metav1.ListOptions{
		LabelSelector: "app.kubernetes.io/name=podnet", FieldSelector: "spec.nodeName=" + node,
	})
	if err != nil {
		return "", false, err
	}
	st := ds.Status
	status := fmt.Sprintf("%d desired, %d updated, %d ready, %d podnet pods on %s", st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady, len(pods.Items), node)
	return status, st.ObservedGeneration >= ds.Generation && st.UpdatedNumberScheduled == st.DesiredNumberScheduled &&
		st.NumberReady == st.DesiredNumberScheduled && len(pods.Items) == 0, nil
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// nodeSelector pins a side's pods to its node (through the scheduler).
func nodeSelector(node string) map[string]string {
	return map[string]string{corev1.LabelHostname: node}
}

// bench is the run: the lab and its admin client.
type bench struct {
	l *lab.Lab
	c kubernetes.Interface
	o options
}

func newBench(l *lab.Lab, o options) (*bench, error) {
	c, err := l.Client()
	if err != nil {
		return nil, err
	}
	return &bench{l: l, c: c, o: o}, nil
}
