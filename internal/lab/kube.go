package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/image"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/netns"
)

// The Kubernetes mode's cluster: the control plane's host on segment 1
// (an address no node takes: nodes are .1 to .200), the Service ranges
// (IPv6 of a dual-stack lab: the API server takes /108 or longer), and
// the Deployment whose pods are the lab's.
const (
	cpSegment    = 1
	cpHost       = 250
	cpRole       = "cp"
	serviceCIDR  = "10.96.0.0/16"
	serviceCIDR6 = "fd00:10:96::/112"
	nodeCIDRMask = 24
	// PodsNamespace and PodsSelector find the lab's pods (the Deployment
	// PodsDeployment's) in the API.
	PodsNamespace  = metav1.NamespaceDefault
	PodsDeployment = "lab"
	PodsSelector   = "app.kubernetes.io/name=podnet-lab"
)

// ClusterDNS is the address kubelet gives pods as their name server: the
// kube-dns Service's ClusterIP, in the Service range, for a cluster DNS
// deployed into the lab (the conformance run's CoreDNS); none runs by
// default.
const ClusterDNS = "10.96.0.10"

// Waits of the Kubernetes mode (the podnet pods start only once their
// node's kubelet registered; a node is Ready only once podnet wrote its
// CNI configuration).
const (
	kubeWait     = 5 * time.Minute
	kubePollStep = 250 * time.Millisecond
)

// KubeState is what the Kubernetes mode runs besides the nodes'
// namespaces, each part recorded before it is started.
type KubeState struct {
	// NS is the control plane's namespace, IP its address on segment 1.
	NS string `json:"ns"`
	IP string `json:"ip"`
	// Dir is the control plane's directory (kube.OpenControlPlane).
	Dir string `json:"dir"`
	// Bins are the Kubernetes binaries (kube.Build).
	Bins kube.Binaries `json:"binaries"`
	// Images are the archives every node imports: pause, busybox and
	// podnet's.
	Images []string `json:"images,omitempty"`
	// Port is where `podnet lab forward` serves the API server on the
	// machine's loopback, for Kubeconfig.
	Port int `json:"port,omitempty"`
}

// upKube brings up the Kubernetes mode on the underlay and the nodes'
// namespaces: the control plane, the nodes, podnet, then the lab's pods.
func (l *Lab) upKube(ctx context.Context, start time.Time, nodes []*Node) error {
	t := time.Now()
	bins, err := kube.Build(ctx, kube.BuildConfig{Out: l.Out})
	if err != nil {
		return err
	}
	l.progress("kubernetes %s binaries ready after %s", kube.Version, since(t))
	ks := &KubeState{NS: l.nsName(cpRole), IP: segmentIP(cpSegment, cpHost).String(), Dir: controlPlaneDir(l.Dir), Bins: bins}
	if err := l.update(func() { l.Kube = ks }); err != nil {
		return err
	}
	if err := l.buildHost(cpRole, cpSegment, ks.IP, ""); err != nil {
		return err
	}
	t = time.Now()
	// The images are written while the control plane starts.
	imagesDone := make(chan error, 1)
	go func(start time.Time) {
		images, err := l.writeImages(ctx)
		if err == nil {
			l.progress("images pause, busybox and %s written after %s", deploy.Ref, since(start))
			err = l.update(func() { ks.Images = images })
		}
		imagesDone <- err
	}(t)
	cpCfg := kube.ControlPlaneConfig{
		Bins: bins, Dir: ks.Dir, NetNS: filepath.Join(netns.RunDir, ks.NS), IP: segmentIP(cpSegment, cpHost),
		ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: nodeCIDRMask, ServiceCIDR: serviceCIDR, Detach: true,
	}
	if l.Spec.IPv6 {
		cpCfg.ClusterCIDR6, cpCfg.NodeCIDRMaskSize6, cpCfg.ServiceCIDR6 = clusterCIDR6, subnetSize6, serviceCIDR6
	}
	cp, err := kube.StartControlPlane(ctx, cpCfg)
	if err != nil {
		return errors.Join(err, <-imagesDone)
	}
	l.progress("control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) in %s at https://%s:%d ready after %s",
		ks.NS, ks.IP, kube.APIServerPort, since(t))
	if err := errors.Join(l.startForwarder(), <-imagesDone); err != nil {
		return err
	}
	err = parallel(nodes, func(n *Node) error {
		t := time.Now()
		if err := l.startKubeNode(ctx, cp, n); err != nil {
			return err
		}
		l.progress("node %s: %s started in %s", n.Name, l.nodeComponents(), since(t))
		return nil
	})
	if err != nil {
		return err
	}
	client, err := cp.Client()
	if err != nil {
		return err
	}
	manifest, err := l.podnetManifest()
	if err != nil {
		return err
	}
	t = time.Now()
	if _, err := l.Kubectl(ctx, bytes.NewReader(manifest), "apply", "-f", "-"); err != nil {
		return err
	}
	l.progress("podnet applied (deploy/podnet.yaml, backend %s) in %s", l.Spec.Backend, since(t))
	t = time.Now()
	if err := waitFor(ctx, "the podnet DaemonSet to roll out", func(ctx context.Context) (string, bool) {
		return daemonSetRolledOut(ctx, client, len(nodes))
	}); err != nil {
		return err
	}
	l.progress("podnet DaemonSet rolled out: a ready agent on each of %d nodes after %s", len(nodes), since(t))
	if err := waitFor(ctx, "every node to be Ready", func(ctx context.Context) (string, bool) {
		return nodesReady(ctx, client, len(nodes))
	}); err != nil {
		return err
	}
	l.progress("every node Ready after %s", since(t))
	if err := l.routeControlPlane(ctx, client, nodes); err != nil {
		return err
	}
	l.progress("control plane routed to every node's podCIDR (the API server reaches the pods)")
	if err := l.recordJoins(ctx, nodes); err != nil {
		return err
	}
	if replicas := l.Spec.PodsPerNode * len(nodes); replicas > 0 {
		t = time.Now()
		if err := l.runPods(ctx, client, replicas); err != nil {
			return err
		}
		pods, err := l.KubePods(ctx, PodsNamespace, PodsSelector)
		if err != nil {
			return err
		}
		l.progress("%d pods of Deployment %s/%s running after %s", len(pods), PodsNamespace, PodsDeployment, since(t))
		for _, p := range pods {
			l.progress("pod %s on %s: %s", p.Name, p.Node, strings.Join(p.IPs, ", "))
		}
		t = time.Now()
		svc, err := l.runService(ctx, client, replicas)
		if err != nil {
			return err
		}
		l.progress("Service %s/%s: ClusterIP %s port %d, NodePort %d, %d endpoints ready after %s",
			PodsNamespace, PodsService, strings.Join(clusterIPs(svc), ", "), PodsServicePort, PodsNodePort, replicas, since(t))
	}
	l.progress("lab %s up in %s", l.Name, since(start))
	return nil
}

// controlPlaneDir is the control plane's directory in the lab's.
func controlPlaneDir(labDir string) string { return filepath.Join(labDir, "control-plane") }

// update changes the state and saves it.
func (l *Lab) update(f func()) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	f()
	return l.save()
}

// kubeState is the Kubernetes mode's state, or an error outside it.
func (l *Lab) kubeState() (*KubeState, error) {
	if l.Kube == nil {
		return nil, fmt.Errorf("lab %s is not a Kubernetes lab (podnet lab up --kubernetes makes one)", l.Name)
	}
	return l.Kube, nil
}

// notKube refuses an operation of the plain lab in Kubernetes mode.
func (l *Lab) notKube(what string) error {
	if l.Spec.Kubernetes {
		return fmt.Errorf("%s: lab %s runs Kubernetes, which owns its pods and nodes (use kubectl: podnet lab kubectl -- ...)", what, l.Name)
	}
	return nil
}

// ControlPlane opens the lab's Kubernetes control plane.
func (l *Lab) ControlPlane() (*kube.ControlPlane, error) {
	ks, err := l.kubeState()
	if err != nil {
		return nil, err
	}
	return kube.OpenControlPlane(ks.Dir)
}

// Client is a cluster administrator's client of the lab's Kubernetes; it
// works from the machine's namespace (its connections are made inside
// the control plane's).
func (l *Lab) Client() (kubernetes.Interface, error) {
	cp, err := l.ControlPlane()
	if err != nil {
		return nil, err
	}
	return cp.Client()
}

// KubeNode opens the Kubernetes node (containerd, kubelet, kube-proxy)
// of the lab's node name.
func (l *Lab) KubeNode(name string) (*kube.Node, error) {
	if _, err := l.kubeState(); err != nil {
		return nil, err
	}
	n, err := l.node(name)
	if err != nil {
		return nil, err
	}
	return kube.OpenNode(n.Dir)
}

// Kubectl runs the lab's kubectl with args inside the control plane's
// namespace as the cluster administrator and returns its standard output;
// a failure carries its standard error.
func (l *Lab) Kubectl(ctx context.Context, stdin io.Reader, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	if err := l.RunKubectl(ctx, stdin, &out, &errb, args...); err != nil {
		return out.Bytes(), fmt.Errorf("%w\n%s", err, strings.TrimSpace(errb.String()))
	}
	return out.Bytes(), nil
}

// RunKubectl runs the lab's kubectl with args inside the control plane's
// namespace as the cluster administrator, with the given standard
// streams (podnet lab kubectl).
func (l *Lab) RunKubectl(ctx context.Context, stdin io.Reader, stdout, stderr io.Writer, args ...string) error {
	ks, err := l.kubeState()
	if err != nil {
		return err
	}
	cp, err := kube.OpenControlPlane(ks.Dir)
	if err != nil {
		return err
	}
	ns, err := netns.OpenNamed(ks.NS)
	if err != nil {
		return err
	}
	defer ns.Close()
	cmd := exec.CommandContext(ctx, ks.Bins.Kubectl, append([]string{"--kubeconfig", cp.AdminKubeconfig()}, args...)...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, stdout, stderr
	if err := ns.Do(cmd.Start); err != nil {
		return fmt.Errorf("kubectl: %w", err)
	}
	if err := cmd.Wait(); err != nil {
		return fmt.Errorf("kubectl %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// Kubeconfig is the path of the cluster administrator's kubeconfig for
// the machine's own kubectl: its server is the lab's forwarder on the
// machine's loopback.
func (l *Lab) Kubeconfig() string { return filepath.Join(l.Dir, "kubeconfig") }

// writeImages writes the archives every node imports: the pod images of
// internal/kube and podnet's image (deploy.Image) made of the lab's
// binaries.
func (l *Lab) writeImages(ctx context.Context) ([]string, error) {
	dir := filepath.Join(l.Dir, "images")
	images, err := kube.PodImages(ctx, dir)
	if err != nil {
		return nil, err
	}
	// deploy.Image takes the programs from one directory, by name.
	bin := filepath.Join(dir, "bin")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		return nil, err
	}
	for name, path := range l.Bins.required(l.Spec) {
		if err := os.Symlink(path, filepath.Join(bin, name)); err != nil {
			return nil, fmt.Errorf("podnet image: %w", err)
		}
	}
	spec, err := deploy.Image(bin, deploy.Ref)
	if err != nil {
		return nil, err
	}
	podnet := filepath.Join(dir, "podnet.tar")
	if err := image.Write(podnet, spec); err != nil {
		return nil, fmt.Errorf("podnet image: %w", err)
	}
	return append(images, podnet), nil
}

// startKubeNode runs the node's containerd, kubelet and kube-proxy (in
// the spec's mode; none with KubeProxyNone) in its namespace, with the
// lab's images imported.
func (l *Lab) startKubeNode(ctx context.Context, cp *kube.ControlPlane, n *Node) error {
	kubelet, err := cp.Kubeconfig("system:node:"+n.Name, "system:nodes")
	if err != nil {
		return err
	}
	cfg := kube.NodeConfig{
		Bins: l.Kube.Bins, Name: n.Name, NetNS: filepath.Join(netns.RunDir, n.NS), IP: net.ParseIP(n.IP), Dir: n.Dir,
		Kubeconfig: kubelet, CAFile: cp.CAFile(), ClusterCIDR: clusterCIDR, ClusterDNS: net.ParseIP(ClusterDNS),
		Images: l.Kube.Images, Supervisor: []string{l.Bins.CLI, "kube-node"}, Detach: true,
	}
	if n.IP6 != "" {
		cfg.IP6, cfg.ClusterCIDR6 = net.ParseIP(n.IP6), clusterCIDR6
	}
	if l.Spec.KubeProxy != KubeProxyNone {
		if cfg.ProxyKubeconfig, err = cp.Kubeconfig("system:kube-proxy"); err != nil {
			return err
		}
		cfg.ProxyMode = l.Spec.KubeProxy
	}
	_, err = kube.StartNode(ctx, cfg)
	return err
}

// nodeComponents names what startKubeNode runs, for progress lines.
func (l *Lab) nodeComponents() string {
	if l.Spec.KubeProxy == KubeProxyNone {
		return "containerd (images imported), kubelet (no kube-proxy: podnet serves Services)"
	}
	return "containerd (images imported), kubelet, " + l.serviceProxy()
}

// serviceProxy names what serves the Kubernetes lab's Services.
func (l *Lab) serviceProxy() string {
	if l.Spec.KubeProxy == KubeProxyNone {
		return "podnet's service proxy"
	}
	return fmt.Sprintf("kube-proxy (%s mode)", l.Spec.KubeProxy.OrDefault())
}

// podnetManifest is deploy.Manifest as a List for kubectl apply, its
// ConfigMap holding the lab's cluster CIDRs, backend and service proxy;
// everything else as shipped.
func (l *Lab) podnetManifest() ([]byte, error) {
	items, err := l.adaptedItems(deploy.Manifest, "deploy/podnet.yaml")
	if err != nil {
		return nil, err
	}
	if l.Spec.KubeProxy == KubeProxyNone {
		// Without kube-proxy the kubernetes Service is podnet's own to
		// program: the agent reaches the API server at its address.
		items = append(items, map[string]any{
			"apiVersion": "v1", "kind": "ConfigMap",
			"metadata": map[string]any{"name": "kubernetes-services-endpoint", "namespace": "kube-system"},
			"data": map[string]any{
				"KUBERNETES_SERVICE_HOST": segmentIP(cpSegment, cpHost).String(),
				"KUBERNETES_SERVICE_PORT": strconv.Itoa(kube.APIServerPort),
			},
		})
	}
	return json.Marshal(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
}

// CleanupManifest is deploy.CleanupManifest, podnet's uninstall, as a
// YAML stream for kubectl, its ConfigMap holding the lab's values as
// podnetManifest's does: the cleanup must run with the cluster's
// configuration (docs/kubernetes.md), which in a dual-stack lab is not
// the shipped one.
func (l *Lab) CleanupManifest() ([]byte, error) {
	items, err := l.adaptedItems(deploy.CleanupManifest, "deploy/podnet-cleanup.yaml")
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	for _, obj := range items {
		y, err := yaml.Marshal(obj)
		if err != nil {
			return nil, fmt.Errorf("deploy/podnet-cleanup.yaml: %w", err)
		}
		b.WriteString("---\n")
		b.Write(y)
	}
	return b.Bytes(), nil
}

// adaptedItems are the objects of manifest (a file of deploy/, named
// name), its ConfigMap adapted to the lab (adaptConfig).
func (l *Lab) adaptedItems(manifest []byte, name string) ([]map[string]any, error) {
	items, err := manifestItems(manifest, name)
	if err != nil {
		return nil, err
	}
	for _, obj := range items {
		if obj["kind"] == "ConfigMap" {
			if err := l.adaptConfig(obj); err != nil {
				return nil, err
			}
		}
	}
	return items, nil
}

// manifestItems are the objects of manifest, a file of deploy/ named
// name.
func manifestItems(manifest []byte, name string) ([]map[string]any, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(manifest), 4096)
	var items []map[string]any
	for {
		var obj map[string]any
		if err := dec.Decode(&obj); errors.Is(err, io.EOF) {
			return items, nil
		} else if err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		if obj != nil {
			items = append(items, obj)
		}
	}
}

// configOf is the agent configuration (config.yaml) of podnet's ConfigMap.
func configOf(cm map[string]any) (map[string]any, error) {
	data, _ := cm["data"].(map[string]any)
	text, ok := data["config.yaml"].(string)
	if !ok {
		return nil, errors.New("deploy/podnet.yaml: ConfigMap without config.yaml")
	}
	var cfg map[string]any
	if err := yaml.Unmarshal([]byte(text), &cfg); err != nil {
		return nil, fmt.Errorf("deploy/podnet.yaml: config.yaml: %w", err)
	}
	return cfg, nil
}

// adaptConfig sets the lab's values in podnet's ConfigMap: its cluster
// CIDR (and IPv6 one, dual-stack) and backend, and podnet's service
// proxy on exactly when the lab runs no kube-proxy (two proxies would
// fight over the Services).
func (l *Lab) adaptConfig(cm map[string]any) error {
	cfg, err := configOf(cm)
	if err != nil {
		return err
	}
	cfg["cluster-cidr"] = clusterCIDR
	cfg["node-subnet-size"] = nodeCIDRMask
	if l.Spec.IPv6 {
		cfg["cluster-cidr6"] = clusterCIDR6
		cfg["node-subnet-size6"] = subnetSize6
	}
	cfg["backend"] = string(l.Spec.Backend)
	if _, ok := cfg[serviceProxyKey]; ok {
		cfg[serviceProxyKey] = l.Spec.KubeProxy == KubeProxyNone
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return err
	}
	cm["data"].(map[string]any)["config.yaml"] = string(b)
	return nil
}

// waitFor polls cond until it holds, for up to kubeWait; the error tells
// what cond last reported.
func waitFor(ctx context.Context, what string, cond func(context.Context) (string, bool)) error {
	ctx, cancel := context.WithTimeout(ctx, kubeWait)
	defer cancel()
	for {
		status, ok := cond(ctx)
		if ok {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w (%s)", what, ctx.Err(), status)
		case <-time.After(kubePollStep):
		}
	}
}

// daemonSetRolledOut tells whether podnet's DaemonSet runs a ready,
// current pod on each of the nodes.
func daemonSetRolledOut(ctx context.Context, c kubernetes.Interface, nodes int) (string, bool) {
	ds, err := c.AppsV1().DaemonSets(metav1.NamespaceSystem).Get(ctx, "podnet", metav1.GetOptions{})
	if err != nil {
		return err.Error(), false
	}
	st := ds.Status
	status := fmt.Sprintf("%d desired, %d updated, %d ready", st.DesiredNumberScheduled, st.UpdatedNumberScheduled, st.NumberReady)
	return status, st.ObservedGeneration >= ds.Generation && int(st.DesiredNumberScheduled) == nodes &&
		st.UpdatedNumberScheduled == st.DesiredNumberScheduled && st.NumberReady == st.DesiredNumberScheduled
}

// nodesReady tells whether all nodes registered and are Ready.
func nodesReady(ctx context.Context, c kubernetes.Interface, nodes int) (string, bool) {
	list, err := c.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return err.Error(), false
	}
	var notReady []string
	for _, n := range list.Items {
		if !nodeReady(&n) {
			notReady = append(notReady, n.Name)
		}
	}
	sort.Strings(notReady)
	return fmt.Sprintf("%d of %d registered, not Ready: %v", len(list.Items), nodes, notReady), len(list.Items) == nodes && len(notReady) == 0
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podsLabels are the labels of the lab's Deployment, its pods and its
// Service (PodsSelector).
func podsLabels() map[string]string {
	k, v, _ := strings.Cut(PodsSelector, "=")
	return map[string]string{k: v}
}

// runPods creates the lab's Deployment of busybox pods, spread evenly
// over the nodes, and waits until every replica is ready.
func (l *Lab) runPods(ctx context.Context, c kubernetes.Interface, replicas int) error {
	labels := podsLabels()
	r := int32(replicas)
	grace := int64(1)
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: PodsDeployment, Namespace: PodsNamespace, Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Replicas: &r,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: &grace,
					TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
						MaxSkew: 1, TopologyKey: corev1.LabelHostname, WhenUnsatisfiable: corev1.DoNotSchedule,
						LabelSelector: &metav1.LabelSelector{MatchLabels: labels},
					}},
					Containers: []corev1.Container{{
						Name: "sleep", Image: kube.BusyboxImage, ImagePullPolicy: corev1.PullNever,
						Command: []string{"sleep", "1000000000"},
					}},
				},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(PodsNamespace).Create(ctx, d, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("deployment %s: %w", PodsDeployment, err)
	}
	return waitFor(ctx, "the lab's pods", func(ctx context.Context) (string, bool) {
		d, err := c.AppsV1().Deployments(PodsNamespace).Get(ctx, PodsDeployment, metav1.GetOptions{})
		if err != nil {
			return err.Error(), false
		}
		return fmt.Sprintf("%d of %d ready", d.Status.ReadyReplicas, replicas),
			d.Status.ObservedGeneration >= d.Generation && int(d.Status.ReadyReplicas) == replicas && int(d.Status.UpdatedReplicas) == replicas
	})
}

// downKube stops what the Kubernetes mode of the lab name in dir runs,
// from the files its parts left and the forwarder's command line (also
// when the lab's state is gone): the nodes (with their pods, mounts and
// cgroups), the control plane and the forwarder.
func downKube(name, dir string) error {
	var errs []error
	nodeStates, _ := filepath.Glob(filepath.Join(dir, "nodes", "*", "state.json"))
	var nodes []*Node
	for _, s := range nodeStates {
		nodes = append(nodes, &Node{Dir: filepath.Dir(s)})
	}
	errs = append(errs, parallel(nodes, func(n *Node) error {
		kn, err := kube.OpenNode(n.Dir)
		if err != nil {
			return err
		}
		return kn.Stop()
	}))
	if _, err := os.Stat(filepath.Join(controlPlaneDir(dir), "state.json")); err == nil {
		cp, err := kube.OpenControlPlane(controlPlaneDir(dir))
		if err == nil {
			err = cp.Stop()
		}
		errs = append(errs, err)
	}
	kube.KillLeft(0, func() []int { return kube.ProcsWithArg(forwarderNetNS(name)) })
	return errors.Join(errs...)
}
