package lab

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/kube"
)

// KubeProxyNone runs no kube-proxy in the Kubernetes lab: podnet's
// service proxy (the ConfigMap's service-proxy) serves the Services.
const KubeProxyNone kube.ProxyMode = "none"

// serviceProxyKey is the key of podnet's config.yaml that turns its
// service proxy on.
const serviceProxyKey = "service-proxy"

// The lab's Service over its Deployment's pods (Kubernetes mode), which
// the connectivity matrix reaches through its ClusterIP and NodePort: the
// pods' built-in server on checkPort behind port 80.
const (
	PodsService     = PodsDeployment
	PodsServicePort = 80
	PodsNodePort    = 30777
)

// podnetServiceProxy tells whether deploy/podnet.yaml's config.yaml has
// podnet's service proxy option (present) and turns it on (on).
func podnetServiceProxy() (present, on bool, err error) {
	items, err := manifestItems(deploy.Manifest, "deploy/podnet.yaml")
	if err != nil {
		return false, false, err
	}
	for _, obj := range items {
		if obj["kind"] != "ConfigMap" {
			continue
		}
		cfg, err := configOf(obj)
		if err != nil {
			return false, false, err
		}
		v, present := cfg[serviceProxyKey]
		on, _ := v.(bool)
		return present, on, nil
	}
	return false, false, errors.New("deploy/podnet.yaml: no ConfigMap")
}

// resolveKubeProxy settles a Kubernetes spec's kube-proxy: left empty, it
// is none when podnet's manifest turns its service proxy on, else
// iptables; none needs a podnet that has a service proxy, or nothing
// would serve Services.
func (s *Spec) resolveKubeProxy() error {
	if !s.Kubernetes {
		return nil
	}
	present, on, err := podnetServiceProxy()
	if err != nil {
		return err
	}
	switch {
	case s.KubeProxy == "" && on:
		s.KubeProxy = KubeProxyNone
	case s.KubeProxy == "":
		s.KubeProxy = kube.ProxyIPTables
	case s.KubeProxy == KubeProxyNone && !present:
		return fmt.Errorf("kube-proxy %s: this podnet has no service proxy (no %s in deploy/podnet.yaml's config.yaml): nothing would serve Services", KubeProxyNone, serviceProxyKey)
	}
	return nil
}

// validKubeProxy checks the spec's kube-proxy choice.
func (s Spec) validKubeProxy() error {
	switch {
	case s.KubeProxy != "" && !s.Kubernetes:
		return fmt.Errorf("kube-proxy %q: only the Kubernetes lab runs kube-proxy (add --kubernetes)", s.KubeProxy)
	case s.KubeProxy == "", s.KubeProxy == kube.ProxyIPTables, s.KubeProxy == kube.ProxyNFTables, s.KubeProxy == KubeProxyNone:
		return nil
	}
	return fmt.Errorf("kube-proxy %q: want %s, %s or %s", s.KubeProxy, kube.ProxyIPTables, kube.ProxyNFTables, KubeProxyNone)
}

// runService creates the lab's NodePort Service over its Deployment's
// pods (dual-stack in a dual-stack lab: a ClusterIP of each family) and
// waits until its EndpointSlices list every replica ready.
func (l *Lab) runService(ctx context.Context, c kubernetes.Interface, replicas int) (*corev1.Service, error) {
	labels := podsLabels()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: PodsService, Namespace: PodsNamespace, Labels: labels},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: labels,
			Ports: []corev1.ServicePort{{
				Protocol: corev1.ProtocolTCP, Port: PodsServicePort, NodePort: PodsNodePort,
				TargetPort: intstr.FromInt32(checkPort),
			}},
		},
	}
	if l.Spec.IPv6 {
		dual := corev1.IPFamilyPolicyRequireDualStack
		svc.Spec.IPFamilyPolicy = &dual
	}
	created, err := c.CoreV1().Services(PodsNamespace).Create(ctx, svc, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		created, err = c.CoreV1().Services(PodsNamespace).Get(ctx, PodsService, metav1.GetOptions{})
	}
	if err != nil {
		return nil, fmt.Errorf("service %s/%s: %w", PodsNamespace, PodsService, err)
	}
	err = waitFor(ctx, "the lab Service's endpoints", func(ctx context.Context) (string, bool) {
		ready, err := readyEndpoints(ctx, c, PodsNamespace, PodsService)
		if err != nil {
			return err.Error(), false
		}
		var status []string
		all := len(created.Spec.IPFamilies) > 0
		for _, f := range created.Spec.IPFamilies {
			n := ready[discoveryv1.AddressType(f)]
			status = append(status, fmt.Sprintf("%s: %d of %d", f, n, replicas))
			all = all && n == replicas
		}
		return "endpoints ready: " + strings.Join(status, ", "), all
	})
	return created, err
}

// clusterIPs are a Service's ClusterIPs, one per family it has.
func clusterIPs(svc *corev1.Service) []string {
	if len(svc.Spec.ClusterIPs) > 0 {
		return svc.Spec.ClusterIPs
	}
	return []string{svc.Spec.ClusterIP}
}

// readyEndpoints counts the ready endpoints of a Service's EndpointSlices
// by address type (a dual-stack Service has slices of each family).
func readyEndpoints(ctx context.Context, c kubernetes.Interface, namespace, service string) (map[discoveryv1.AddressType]int, error) {
	slices, err := c.DiscoveryV1().EndpointSlices(namespace).List(ctx, metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=" + service})
	if err != nil {
		return nil, fmt.Errorf("endpoint slices of %s/%s: %w", namespace, service, err)
	}
	n := map[discoveryv1.AddressType]int{}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || *e.Conditions.Ready {
				n[s.AddressType]++
			}
		}
	}
	return n, nil
}

// RouteToNode routes dst (an externalIP, a LoadBalancer ingress IP: an
// address no namespace holds) from the outside network to the node: the
// outside host sends it to the router, the router to the node's underlay
// address. UnrouteToNode removes both routes.
func (l *Lab) RouteToNode(dst *net.IPNet, node string) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	return l.externalRoutes(func(s *space, gw net.IP) error { return addRoute(s, dst, gw) }, n)
}

// UnrouteToNode removes the routes RouteToNode added for dst; routes
// already gone are no error.
func (l *Lab) UnrouteToNode(dst *net.IPNet, node string) error {
	n, err := l.node(node)
	if err != nil {
		return err
	}
	return l.externalRoutes(func(s *space, gw net.IP) error {
		err := s.h.RouteDel(&netlink.Route{Dst: dst, Gw: gw})
		if err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("delete route %v via %s: %w", dst, gw, err)
		}
		return nil
	}, n)
}

// externalRoutes applies f to the outside host's route (via the router)
// and the router's (via the node n).
func (l *Lab) externalRoutes(f func(s *space, gw net.IP) error, n *Node) error {
	var errs []error
	for _, hop := range []struct {
		role string
		gw   net.IP
	}{{Outside, outsideGW}, {"router", net.ParseIP(n.IP).To4()}} {
		s, err := openNS(l.nsName(hop.role))
		if err != nil {
			errs = append(errs, err)
			continue
		}
		errs = append(errs, f(s, hop.gw))
		s.close()
	}
	return errors.Join(errs...)
}
