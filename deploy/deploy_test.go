package deploy

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/vishvananda/netlink"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/datastore/kubeapi"
	"github.com/podnet/podnet/internal/image"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/logtest"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// The objects of a manifest, decoded strictly (an unknown or misspelled
// field is an error) into the API's types.
type objects struct {
	sa        *corev1.ServiceAccount
	role      *rbacv1.ClusterRole
	binding   *rbacv1.ClusterRoleBinding
	policy    *admissionv1.ValidatingAdmissionPolicy
	pbinding  *admissionv1.ValidatingAdmissionPolicyBinding
	config    *corev1.ConfigMap
	daemonSet *appsv1.DaemonSet
	// crds are the CustomResourceDefinition documents, as written.
	crds []string
}

// decode decodes every document of manifest; each kind may appear once.
func decode(t *testing.T, manifest []byte) objects {
	t.Helper()
	var o objects
	for _, doc := range documents(manifest) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatal(err)
		}
		var dst any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ServiceAccount":
			o.sa = new(corev1.ServiceAccount)
			dst = o.sa
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			o.role = new(rbacv1.ClusterRole)
			dst = o.role
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			o.binding = new(rbacv1.ClusterRoleBinding)
			dst = o.binding
		case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicy":
			o.policy = new(admissionv1.ValidatingAdmissionPolicy)
			dst = o.policy
		case "admissionregistration.k8s.io/v1 ValidatingAdmissionPolicyBinding":
			o.pbinding = new(admissionv1.ValidatingAdmissionPolicyBinding)
			dst = o.pbinding
		case "v1 ConfigMap":
			o.config = new(corev1.ConfigMap)
			dst = o.config
		case "apps/v1 DaemonSet":
			o.daemonSet = new(appsv1.DaemonSet)
			dst = o.daemonSet
		case "apiextensions.k8s.io/v1 CustomResourceDefinition":
			o.crds = append(o.crds, doc)
			continue
		default:
			t.Fatalf("unexpected object %s %s:\n%s", tm.APIVersion, tm.Kind, doc)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), dst); err != nil {
			t.Fatalf("%s: %v\n%s", tm.Kind, err, doc)
		}
	}
	for name, p := range map[string]bool{
		"ServiceAccount": o.sa != nil, "ClusterRole": o.role != nil, "ClusterRoleBinding": o.binding != nil,
		"ValidatingAdmissionPolicy": o.policy != nil, "ValidatingAdmissionPolicyBinding": o.pbinding != nil,
		"ConfigMap": o.config != nil, "DaemonSet": o.daemonSet != nil,
	} {
		if !p {
			t.Errorf("no %s", name)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	return o
}

// agentConfig is the agent's configuration file in the ConfigMap.
func agentConfig(t *testing.T, cm *corev1.ConfigMap) map[string]any {
	t.Helper()
	var cfg map[string]any
	if err := yaml.UnmarshalStrict([]byte(cm.Data["config.yaml"]), &cfg); err != nil {
		t.Fatalf("ConfigMap %s config.yaml: %v", cm.Name, err)
	}
	return cfg
}

func TestManifest(t *testing.T) {
	o := decode(t, Manifest)
	const ns = "kube-system"
	for _, m := range []metav1.ObjectMeta{o.sa.ObjectMeta, o.config.ObjectMeta, o.daemonSet.ObjectMeta} {
		if m.Namespace != ns {
			t.Errorf("%s in namespace %q, want %s", m.Name, m.Namespace, ns)
		}
	}

	t.Run("RBAC", func(t *testing.T) {
		// Exactly the datastore's needs.
		want := kubeapi.Rules()
		if !equality.Semantic.DeepEqual(o.role.Rules, want) {
			t.Errorf("ClusterRole rules %+v, want %+v", o.role.Rules, want)
		}
		wantRef := rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: o.role.Name}
		wantSubj := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: o.sa.Name, Namespace: ns}}
		if o.binding.RoleRef != wantRef || !slices.Equal(o.binding.Subjects, wantSubj) {
			t.Errorf("ClusterRoleBinding %+v %+v, want %+v %+v", o.binding.RoleRef, o.binding.Subjects, wantRef, wantSubj)
		}
	})

	t.Run("admission policy", func(t *testing.T) {
		p := o.policy.Spec
		if p.FailurePolicy == nil || *p.FailurePolicy != admissionv1.Fail {
			t.Error("failurePolicy is not Fail")
		}
		user := fmt.Sprintf("request.userInfo.username == 'system:serviceaccount:%s:%s'", ns, o.sa.Name)
		if len(p.MatchConditions) != 1 || p.MatchConditions[0].Expression != user {
			t.Errorf("matchConditions %+v, want the one %s", p.MatchConditions, user)
		}
		var resources []string
		for _, r := range p.MatchConstraints.ResourceRules {
			if slices.Contains(r.APIGroups, "") && slices.Contains(r.Operations, admissionv1.Update) {
				resources = append(resources, r.Resources...)
			}
		}
		for _, r := range []string{"nodes", "nodes/status"} {
			if !slices.Contains(resources, r) {
				t.Errorf("the policy does not match updates of %s", r)
			}
		}
		if !slices.ContainsFunc(p.Validations, func(v admissionv1.Validation) bool {
			return strings.Contains(v.Expression, "request.userInfo.extra['authentication.kubernetes.io/node-name'] == [object.metadata.name]")
		}) {
			t.Error("no validation compares the token's node-name with the Node")
		}
		b := o.pbinding.Spec
		if b.PolicyName != o.policy.Name || !slices.Equal(b.ValidationActions, []admissionv1.ValidationAction{admissionv1.Deny}) {
			t.Errorf("policy binding %+v, want policy %s with Deny", b, o.policy.Name)
		}
	})

	ds := o.daemonSet
	pod := ds.Spec.Template.Spec
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want 1", len(pod.Containers))
	}
	c := pod.Containers[0]
	cfg := agentConfig(t, o.config)

	t.Run("DaemonSet", func(t *testing.T) {
		if !pod.HostNetwork || pod.ServiceAccountName != o.sa.Name || pod.PriorityClassName != "system-node-critical" {
			t.Errorf("hostNetwork %v, serviceAccount %q, priorityClass %q", pod.HostNetwork, pod.ServiceAccountName, pod.PriorityClassName)
		}
		if want := []corev1.Toleration{{Operator: corev1.TolerationOpExists}}; !slices.Equal(pod.Tolerations, want) {
			t.Errorf("tolerations %+v, want %+v (every taint)", pod.Tolerations, want)
		}
		if pod.TerminationGracePeriodSeconds == nil {
			t.Error("no terminationGracePeriodSeconds")
		}
		u := ds.Spec.UpdateStrategy
		if u.Type != appsv1.RollingUpdateDaemonSetStrategyType || u.RollingUpdate == nil || u.RollingUpdate.MaxUnavailable == nil || u.RollingUpdate.MaxUnavailable.IntValue() != 1 {
			t.Errorf("update strategy %+v, want a rolling update with maxUnavailable 1", u)
		}
		if c.Image != Ref || c.ImagePullPolicy != corev1.PullIfNotPresent {
			t.Errorf("image %s (%s), want %s (IfNotPresent)", c.Image, c.ImagePullPolicy, Ref)
		}
		if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
			t.Error("container not privileged")
		}
		if c.Resources.Requests.Cpu().IsZero() || c.Resources.Requests.Memory().IsZero() {
			t.Errorf("resource requests %v", c.Resources.Requests)
		}
		env := map[string]string{}
		for _, e := range c.Env {
			if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
				env[e.Name] = e.ValueFrom.FieldRef.FieldPath
			}
		}
		if env["NODE_NAME"] != "spec.nodeName" || env["NODE_IP"] != "status.hostIP" {
			t.Errorf("env %v, want NODE_NAME from spec.nodeName, NODE_IP from status.hostIP", env)
		}
		// The API server's own address, for a cluster without kube-proxy.
		if len(c.EnvFrom) != 1 || c.EnvFrom[0].ConfigMapRef == nil || c.EnvFrom[0].ConfigMapRef.Name != "kubernetes-services-endpoint" ||
			c.EnvFrom[0].ConfigMapRef.Optional == nil || !*c.EnvFrom[0].ConfigMapRef.Optional {
			t.Errorf("envFrom %+v, want the optional ConfigMap kubernetes-services-endpoint", c.EnvFrom)
		}
		if cfg["service-proxy"] != true {
			t.Errorf("service-proxy %v, want true: the agent is the nodes' service proxy", cfg["service-proxy"])
		}
		if cfg["network-policy"] != true {
			t.Errorf("network-policy %v, want true: the agent enforces NetworkPolicy", cfg["network-policy"])
		}
		for _, a := range []string{"--config=/etc/podnet/config.yaml", "--node-name=$(NODE_NAME)", "--node-ip=$(NODE_IP)"} {
			if !slices.Contains(c.Args, a) {
				t.Errorf("args %q lack %s", c.Args, a)
			}
		}
		if cfg["datastore"] != "kubernetes" {
			t.Errorf("datastore %v, want kubernetes", cfg["datastore"])
		}
		if cfg["cni-binary"] != CNIPath {
			t.Errorf("cni-binary %v, want the image's %s", cfg["cni-binary"], CNIPath)
		}
	})

	t.Run("probes", func(t *testing.T) {
		listen, _ := cfg["listen"].(string)
		host, port, ok := strings.Cut(listen, ":")
		if !ok || host != "127.0.0.1" {
			t.Fatalf("listen %q, want the node's loopback", listen)
		}
		for _, p := range []struct {
			probe *corev1.Probe
			path  string
		}{{c.ReadinessProbe, "/readyz"}, {c.LivenessProbe, "/healthz"}} {
			if p.probe == nil || p.probe.HTTPGet == nil {
				t.Errorf("no HTTP probe of %s", p.path)
				continue
			}
			g := p.probe.HTTPGet
			if g.Host != host || g.Port.String() != port || g.Path != p.path {
				t.Errorf("probe %s:%s%s, want %s:%s%s", g.Host, g.Port.String(), g.Path, host, port, p.path)
			}
		}
	})

	t.Run("volumes", func(t *testing.T) {
		mounts := map[string]corev1.VolumeMount{}
		for _, m := range c.VolumeMounts {
			mounts[m.Name] = m
		}
		hostPaths := map[string]bool{} // host path → read-only
		for _, v := range pod.Volumes {
			m, ok := mounts[v.Name]
			if !ok {
				t.Errorf("volume %s not mounted", v.Name)
				continue
			}
			switch {
			case v.HostPath != nil:
				if m.MountPath != v.HostPath.Path {
					t.Errorf("host path %s mounted at %s", v.HostPath.Path, m.MountPath)
				}
				hostPaths[v.HostPath.Path] = m.ReadOnly
			case v.ConfigMap != nil:
				if v.ConfigMap.Name != o.config.Name || m.MountPath != "/etc/podnet" {
					t.Errorf("ConfigMap %s mounted at %s, want %s at /etc/podnet", v.ConfigMap.Name, m.MountPath, o.config.Name)
				}
			default:
				t.Errorf("unexpected volume %+v", v)
			}
		}
		want := map[string]bool{"/opt/cni/bin": false, "/etc/cni/net.d": false, "/var/lib/podnet": false, "/run/podnet": false, "/lib/modules": true}
		if !equality.Semantic.DeepEqual(hostPaths, want) {
			t.Errorf("host paths (→ read-only) %v, want %v", hostPaths, want)
		}
		// The agent's directories are on the host.
		for _, k := range []string{"cni-bin-dir", "cni-conf-dir", "ipam-dir", "data-dir"} {
			dir, _ := cfg[k].(string)
			if !slices.ContainsFunc(slices.Collect(maps.Keys(hostPaths)), func(p string) bool {
				return dir == p || strings.HasPrefix(dir, p+"/")
			}) {
				t.Errorf("%s %q is in no host path volume", k, dir)
			}
		}
	})
}

// TestManifestCRD checks that the manifest opens with the
// ClusterNetworkPolicy CRD of the network-policy-api release the module
// requires, its standard channel's, verbatim, and that the cleanup leaves
// it out.
func TestManifestCRD(t *testing.T) {
	const module = "sigs.k8s.io/network-policy-api"
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Version}} {{.Dir}}", module).Output()
	if err != nil {
		t.Fatalf("go list -m %s: %v", module, err)
	}
	version, dir, _ := strings.Cut(strings.TrimSpace(string(out)), " ")
	want, err := os.ReadFile(filepath.Join(dir, "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	docs := documents(Manifest)
	o := decode(t, Manifest)
	if len(o.crds) != 1 || docs[0] != o.crds[0] {
		t.Fatalf("%d CRDs, want 1 as the first document", len(o.crds))
	}
	var lines []string
	for _, l := range strings.SplitAfter(o.crds[0], "\n") {
		if len(lines) > 0 || !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if got := strings.Join(lines, ""); got != string(want) {
		t.Errorf("the CRD is not %s %s's standard one verbatim", module, version)
	}
	if !strings.Contains(o.crds[0], module+" "+version) {
		t.Errorf("the CRD's comment does not say it is %s %s's", module, version)
	}
	if c := decode(t, CleanupManifest); len(c.crds) != 0 {
		t.Error("the cleanup holds the CRD: applying it would bring it back")
	}
}

func TestCleanupManifest(t *testing.T) {
	want, err := CleanupOf(Manifest)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(CleanupManifest, want) {
		t.Fatal("deploy/podnet-cleanup.yaml is not podnet.yaml's: run go generate ./deploy")
	}
	agent, cleanup := decode(t, Manifest), decode(t, CleanupManifest)
	// The same objects but the DaemonSet.
	for _, p := range []struct{ a, b any }{
		{agent.sa, cleanup.sa}, {agent.role, cleanup.role}, {agent.binding, cleanup.binding},
		{agent.policy, cleanup.policy}, {agent.pbinding, cleanup.pbinding}, {agent.config, cleanup.config},
	} {
		if !equality.Semantic.DeepEqual(p.a, p.b) {
			t.Errorf("the cleanup's %T differs from podnet.yaml's", p.a)
		}
	}
	ds, ads := cleanup.daemonSet, agent.daemonSet
	if ds.Name == ads.Name || ds.Namespace != ads.Namespace {
		t.Errorf("cleanup DaemonSet %s/%s, agent's %s/%s", ds.Namespace, ds.Name, ads.Namespace, ads.Name)
	}
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	asel, err := metav1.LabelSelectorAsSelector(ads.Spec.Selector)
	if err != nil {
		t.Fatal(err)
	}
	if sel.Matches(labels.Set(ads.Spec.Template.Labels)) || asel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Error("the DaemonSets' selectors match each other's pods")
	}
	// The agent's pod, its container running leave --wait with the
	// agent's arguments and its readiness probe (answered once left),
	// polled every 2 s, and no other probe.
	pod, apod := ds.Spec.Template.Spec.DeepCopy(), ads.Spec.Template.Spec.DeepCopy()
	c, ac := &pod.Containers[0], &apod.Containers[0]
	if want := append([]string{"leave", "--wait"}, ac.Args...); !slices.Equal(c.Args, want) {
		t.Errorf("cleanup args %q, want %q", c.Args, want)
	}
	if c.ReadinessProbe == nil || ac.ReadinessProbe == nil || !equality.Semantic.DeepEqual(c.ReadinessProbe.ProbeHandler, ac.ReadinessProbe.ProbeHandler) || c.ReadinessProbe.PeriodSeconds != 2 {
		t.Errorf("the cleanup container's readiness probe %+v, want the agent's %+v every 2 s", c.ReadinessProbe, ac.ReadinessProbe)
	}
	if c.LivenessProbe != nil || c.StartupProbe != nil {
		t.Error("the cleanup container has a liveness or startup probe")
	}
	c.Name, c.Args = ac.Name, ac.Args
	c.ReadinessProbe, ac.ReadinessProbe, ac.LivenessProbe = nil, nil, nil
	if !equality.Semantic.DeepEqual(pod, apod) {
		t.Errorf("the cleanup pod differs from the agent's beyond its container's name, args and probes:\n%+v\n%+v", pod, apod)
	}
}

// TestMakefileImage checks that the Makefile's image defaults,
// $(IMAGE):$(VERSION), are the Ref the manifests run.
func TestMakefileImage(t *testing.T) {
	root, err := sandbox.ModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	mk, err := os.ReadFile(filepath.Join(root, "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	value := func(name string) string {
		m := regexp.MustCompile(`(?m)^` + name + `\s*\?=\s*(\S+)\s*$`).FindSubmatch(mk)
		if m == nil {
			t.Fatalf("Makefile sets no default %s", name)
		}
		return string(m[1])
	}
	if got := value("IMAGE") + ":" + value("VERSION"); got != Ref {
		t.Errorf("make image builds %s, the manifests run %s", got, Ref)
	}
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binDir is the directory of the built podnet-cni, podnet-agent and
// podnet: $PODNET_BIN_DIR (make test sets it to make build's), else
// `make build` into a temporary directory of the test binary.
func binDir(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binPath = os.Getenv("PODNET_BIN_DIR"); binPath != "" {
			return
		}
		root, err := sandbox.ModuleRoot()
		if err != nil {
			binErr = err
			return
		}
		if _, err := exec.LookPath("make"); err != nil {
			binErr = fmt.Errorf("no PODNET_BIN_DIR and no make: %w", err)
			return
		}
		if binPath, binErr = os.MkdirTemp("", "podnet-deploy-bin-"); binErr != nil {
			return
		}
		cmd := exec.CommandContext(context.Background(), "make", "-C", root, "build", "BIN="+binPath, "GO="+sandbox.GoTool())
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("make build: %w\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

func TestMain(m *testing.M) {
	code := m.Run()
	if os.Getenv("PODNET_BIN_DIR") == "" && binPath != "" {
		os.RemoveAll(binPath)
	}
	os.Exit(code)
}

// TestBinariesStatic fails when make build links a program dynamically:
// the image has no libc or loader to run it.
func TestBinariesStatic(t *testing.T) {
	dir := binDir(t)
	for _, name := range []string{"podnet-cni", "podnet-agent", "podnet"} {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if err := static(b); err != nil {
				t.Error(err)
			}
		})
	}
}

// static reports why the ELF program b is not static, if it is not.
func static(b []byte) error {
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("dynamically linked: has %s", p.Type)
		}
	}
	return nil
}

// TestImage builds the image of make build's programs and reads it back:
// the three programs, executable and static, the agent its entrypoint.
func TestImage(t *testing.T) {
	dir := binDir(t)
	spec, err := Image(dir, Ref)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(t.TempDir(), "podnet-image.tar")
	if err := image.Write(archive, spec); err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(Ref)
	if err != nil {
		t.Fatal(err)
	}
	img, err := tarball.ImageFromPath(archive, &tag)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{AgentPath}) {
		t.Errorf("entrypoint %q, want %s", cf.Config.Entrypoint, AgentPath)
	}
	files := map[string]*tar.Header{}
	contents := map[string][]byte{}
	tr := tar.NewReader(mutate.Extract(img))
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := "/" + strings.TrimSuffix(h.Name, "/")
		files[p] = h
		if contents[p], err = io.ReadAll(tr); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{AgentPath, CNIPath, CLIPath} {
		h, ok := files[p]
		if !ok {
			t.Errorf("the image has no %s", p)
			continue
		}
		if h.Typeflag != tar.TypeReg || h.Mode&0o111 != 0o111 {
			t.Errorf("%s: type %c mode %o, want an executable file", p, h.Typeflag, h.Mode)
		}
		want, err := os.ReadFile(filepath.Join(dir, filepath.Base(p)))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(contents[p], want) {
			t.Errorf("%s differs from the built one", p)
		}
		if err := static(contents[p]); err != nil {
			t.Errorf("%s: %v", p, err)
		}
	}
}

// TestConfigKeys checks that every key of the agent's configuration in
// the ConfigMap is a flag of the built podnet-agent.
func TestConfigKeys(t *testing.T) {
	out, err := exec.Command(filepath.Join(binDir(t), "podnet-agent"), "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("podnet-agent --help: %v\n%s", err, out)
	}
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^\s+(?:-\w, )?--([a-z0-9-]+)`).FindAllSubmatch(out, -1) {
		flags[string(m[1])] = true
	}
	for k := range agentConfig(t, decode(t, Manifest).config) {
		if !flags[k] {
			t.Errorf("ConfigMap key %q is no podnet-agent flag", k)
		}
	}
}

// TestLeaveWait runs the cleanup container's command, podnet-agent leave
// --wait, on a node (a throwaway network namespace) whose agent ran and
// stopped: leave removes the node's conflist, then the process waits
// until SIGTERM and exits 0. A leave whose datastore is gone still
// removes the conflist, and exits with the error instead of waiting.
func TestLeaveWait(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces)")
	}
	agentBin := filepath.Join(binDir(t), "podnet-agent")
	ns, err := netns.NewTemp("pnleave")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	// The node's underlay: a veth pair with an address and a default route.
	if err := ns.Do(func() error {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}, PeerName: "eth0p"}
		if err := netlink.LinkAdd(veth); err != nil {
			return err
		}
		for _, n := range []string{"eth0", "eth0p"} {
			l, err := netlink.LinkByName(n)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		addr, err := netlink.ParseAddr("192.0.2.10/24")
		if err != nil {
			return err
		}
		l, err := netlink.LinkByName("eth0")
		if err != nil {
			return err
		}
		if err := netlink.AddrAdd(l, addr); err != nil {
			return err
		}
		return netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP("192.0.2.1")})
	}); err != nil {
		t.Fatalf("underlay: %v", err)
	}
	dir := t.TempDir()
	conflist := filepath.Join(dir, "conf", cniconf.FileName)
	args := []string{"--node-name=n1", "--backend=host-gw", "--listen=",
		"--data-dir=" + filepath.Join(dir, "data"), "--cni-conf-dir=" + filepath.Dir(conflist),
		"--cni-bin-dir=" + filepath.Join(dir, "bin"), "--ipam-dir=" + filepath.Join(dir, "ipam")}
	start := func(extra ...string) (*exec.Cmd, *logtest.Buffer, chan error) {
		t.Helper()
		cmd := exec.Command(agentBin, append(extra, args...)...)
		out := &logtest.Buffer{}
		cmd.Stdout, cmd.Stderr = out, out
		if err := ns.Do(cmd.Start); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-done
		})
		return cmd, out, done
	}
	wait := func(what string, done chan error, cond func() bool) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for !cond() {
			select {
			case err := <-done:
				t.Fatalf("podnet-agent exited (%v) waiting for %s", err, what)
			case <-deadline:
				t.Fatalf("no %s after 30s", what)
			case <-tick.C:
			}
		}
	}
	exists := func() bool { _, err := os.Stat(conflist); return err == nil }

	agent, out, done := start()
	wait("conflist", done, exists)
	if err := agent.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("agent: %v\n%s", err, out)
	}
	done <- nil // for the cleanup's wait

	leave, out, done := start("leave", "--wait")
	wait("the conflist removed", done, func() bool { return !exists() })
	wait("left", done, func() bool { return strings.Contains(out.String(), "waiting for SIGTERM") })
	if err := leave.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("leave --wait: %v\n%s", err, out)
	}
	done <- nil

	// The datastore's data gone: leave cleans the node, and fails.
	if err := os.WriteFile(conflist, []byte("{}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(dir, "data")); err != nil {
		t.Fatal(err)
	}
	_, out, done = start("leave", "--wait")
	select {
	case err := <-done:
		if err == nil {
			t.Fatalf("leave without a datastore succeeded:\n%s", out)
		}
		done <- nil
	case <-time.After(60 * time.Second):
		t.Fatalf("leave --wait without a datastore did not exit:\n%s", out)
	}
	if exists() {
		t.Errorf("the conflist is still there after a leave without a datastore:\n%s", out)
	}
}
