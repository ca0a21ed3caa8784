package cnp_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"text/template"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/sets"
	k8syaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/config"
	"sigs.k8s.io/yaml"

	api "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/network-policy-api/conformance"
	"sigs.k8s.io/network-policy-api/conformance/tests"
	"sigs.k8s.io/network-policy-api/conformance/utils/flags"
	k8sutil "sigs.k8s.io/network-policy-api/conformance/utils/kubernetes"
	"sigs.k8s.io/network-policy-api/conformance/utils/suite"
)

// sctp is whether the cluster's kernel has SCTP. Without it the base
// manifests' SCTP servers (agnhost porter) cannot listen and their pods
// never become ready: they are left out, and so are the cases testing
// SCTP (sctpCases). The cases mixing SCTP probes into their TCP and UDP
// checks (InlineCIDRPeers, Gress, PortRange, AdminTierIngressTCP) run:
// their SCTP probes fail.
var sctp = flag.Bool("sctp", true, "the cluster's kernel has SCTP; false: leave out the base SCTP servers and the SCTP cases")

// sctpCases are the suite's cases testing SCTP.
var sctpCases = []string{
	"CNPAdminTierEgressSCTP", "CNPAdminTierIngressSCTP",
	"CNPBaselineTierEgressSCTP", "CNPBaselineTierIngressSCTP",
}

// The base manifests' namespaces and the StatefulSet serving in each
// (suite.ConformanceTestSuite.Setup waits for the same).
var (
	baseNamespaces = []string{
		"network-policy-conformance-gryffindor",
		"network-policy-conformance-slytherin",
		"network-policy-conformance-hufflepuff",
		"network-policy-conformance-ravenclaw",
		"network-policy-conformance-forbidden-forrest",
	}
	baseStatefulSets = []string{"harry-potter", "draco-malfoy", "cedric-diggory", "luna-lovegood", "centaur"}
)

// hostNetworkPorts are the host-network pods' ports: the suite's
// default range (suite.ConformanceTestSuite.Setup).
var hostNetworkPorts = []int{34345, 34346, 34347, 34348, 34349, 34350, 34351, 34352}

// TestClusterNetworkPolicy runs the conformance profile ClusterNetworkPolicy
// as upstream's TestConformanceProfiles does (the same flags) and writes
// its ConformanceReport to -report-output; with -sctp=false the SCTP
// servers and cases are left out (the cases reported as skipped).
func TestClusterNetworkPolicy(t *testing.T) {
	cfg, err := config.GetConfig()
	if err != nil {
		t.Fatalf("kubeconfig: %v", err)
	}
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatalf("client: %v", err)
	}
	if err := api.Install(c.Scheme()); err != nil {
		t.Fatalf("scheme: %v", err)
	}
	if err := apiextensionsv1.AddToScheme(c.Scheme()); err != nil {
		t.Fatalf("scheme: %v", err)
	}
	clientSet, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatalf("clientset: %v", err)
	}
	impl, err := suite.ParseImplementation(*flags.ImplementationOrganization, *flags.ImplementationProject,
		*flags.ImplementationURL, *flags.ImplementationVersion, *flags.ImplementationContact, *flags.ImplementationAdditionalInformation)
	if err != nil {
		t.Fatalf("implementation: %v", err)
	}
	profiles := suite.ParseConformanceProfiles(*flags.ConformanceProfiles)
	if profiles.Len() == 0 {
		profiles = sets.New(suite.CNPConformanceProfileName)
	}
	var skip []string
	if !*sctp {
		skip = sctpCases
	}
	s, err := suite.NewConformanceProfileTestSuite(suite.ConformanceProfileOptions{
		Options: suite.Options{
			Client:                     c,
			ClientSet:                  clientSet,
			KubeConfig:                 *cfg,
			Debug:                      *flags.ShowDebug,
			CleanupBaseResources:       *flags.CleanupBaseResources,
			SupportedFeatures:          suite.ParseSupportedFeatures(*flags.SupportedFeatures),
			ExemptFeatures:             suite.ParseSupportedFeatures(*flags.ExemptFeatures),
			EnableAllSupportedFeatures: *flags.EnableAllSupportedFeatures,
			HostNetworkPortRangeStart:  hostNetworkPorts[0],
			HostNetworkPortRangeEnd:    hostNetworkPorts[len(hostNetworkPorts)-1],
			SkipTests:                  skip,
		},
		Implementation:      *impl,
		ConformanceProfiles: profiles,
	})
	if err != nil {
		t.Fatalf("suite: %v", err)
	}
	if *sctp {
		s.Setup(t)
	} else {
		setupWithoutSCTP(t, s, c)
	}
	if err := s.Run(t, tests.ConformanceTests); err != nil {
		t.Fatalf("run: %v", err)
	}
	report, err := s.Report()
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	b, err := yaml.Marshal(report)
	if err != nil {
		t.Fatalf("report: %v", err)
	}
	if out := *flags.ReportOutput; out != "" {
		if err := os.WriteFile(out, b, 0o644); err != nil {
			t.Fatalf("report: %v", err)
		}
	}
	t.Logf("Conformance report:\n%s", b)
}

// setupWithoutSCTP is the suite's Setup with the base manifests' SCTP
// servers left out: the host-network ports and manifests for the cases,
// the base namespaces and pods created (deleted at the end unless
// -cleanup-base-resources=false) and waited for.
func setupWithoutSCTP(t *testing.T, s *suite.ConformanceProfileTestSuite, c client.Client) {
	s.HostNetworkPorts = hostNetworkPorts
	s.Applier.HostNetworkPorts = hostNetworkPorts
	s.Applier.FS = s.FS
	if !s.SupportedFeatures.Has(suite.SupportClusterNetworkPolicy) {
		return
	}
	objs, err := baseWithoutSCTP()
	if err != nil {
		t.Fatalf("base manifests: %v", err)
	}
	for _, obj := range objs {
		ctx, cancel := context.WithTimeout(context.Background(), s.TimeoutConfig.CreateTimeout)
		err := c.Create(ctx, obj)
		cancel()
		if err != nil {
			t.Fatalf("base manifests: creating %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		if s.Cleanup {
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), s.TimeoutConfig.DeleteTimeout)
				defer cancel()
				if err := c.Delete(ctx, obj); err != nil && !apierrors.IsNotFound(err) {
					t.Errorf("base manifests: deleting %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
			})
		}
	}
	k8sutil.NamespacesMustBeReady(t, c, s.TimeoutConfig, baseNamespaces, baseStatefulSets)
}

// baseWithoutSCTP are the objects of the suite's base manifests (its
// template filled in with hostNetworkPorts) without the containers serving
// SCTP (SERVE_SCTP_PORT_* in their environment).
func baseWithoutSCTP() ([]*unstructured.Unstructured, error) {
	raw, err := conformance.Manifests.ReadFile("base/manifests.yaml")
	if err != nil {
		return nil, err
	}
	tmpl, err := template.New("base").Parse(string(raw))
	if err != nil {
		return nil, err
	}
	var filled bytes.Buffer
	if err := tmpl.Execute(&filled, k8sutil.TemplateData{HostNetworkPorts: hostNetworkPorts}); err != nil {
		return nil, err
	}
	dec := k8syaml.NewYAMLOrJSONDecoder(&filled, 4096)
	var objs []*unstructured.Unstructured
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, err
		}
		if len(obj.Object) == 0 {
			continue
		}
		if obj.GetKind() == "StatefulSet" {
			if err := dropSCTPServers(obj); err != nil {
				return nil, err
			}
		}
		objs = append(objs, obj)
	}
}

// dropSCTPServers removes from a StatefulSet's pod template the containers
// serving SCTP.
func dropSCTPServers(sts *unstructured.Unstructured) error {
	path := []string{"spec", "template", "spec", "containers"}
	containers, _, err := unstructured.NestedSlice(sts.Object, path...)
	if err != nil {
		return err
	}
	containers = slices.DeleteFunc(containers, func(c any) bool {
		container, _ := c.(map[string]any)
		env, _, _ := unstructured.NestedSlice(container, "env")
		return slices.ContainsFunc(env, func(e any) bool {
			v, _ := e.(map[string]any)
			name, _, _ := unstructured.NestedString(v, "name")
			return strings.HasPrefix(name, "SERVE_SCTP_PORT_")
		})
	})
	return unstructured.SetNestedSlice(sts.Object, containers, path...)
}
