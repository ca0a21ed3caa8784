// Package kubetest runs, for tests, a real Kubernetes control plane
// (internal/kube: etcd, kube-apiserver, kube-controller-manager with
// --allocate-node-cidrs, kube-scheduler) in a throwaway network namespace,
// and users bound to exactly the RBAC rules a test names.
package kubetest

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/podnet/podnet/internal/kube"
)

// The control plane's networks: the controller manager allocates /24s of
// clusterCIDR to the Nodes.
const (
	clusterCIDR = "10.244.0.0/16"
	serviceCIDR = "10.96.0.0/16"
)

// startTimeout bounds building (or finding in the cache) the binaries and
// starting the control plane.
const startTimeout = 10 * time.Minute

// Start builds (or finds in the cache) the Kubernetes binaries and starts
// a control plane in the network namespace at nsPath, serving on ip (an
// address of that namespace), its state in dir: pod network 10.244.0.0/16
// (a /24 a Node), Services 10.96.0.0/16. The caller stops it.
func Start(ctx context.Context, nsPath string, ip net.IP, dir string) (*kube.ControlPlane, error) {
	bins, err := kube.Build(ctx, kube.BuildConfig{Out: io.Discard})
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	cp, err := kube.StartControlPlane(ctx, kube.ControlPlaneConfig{
		Bins: bins, Dir: dir, NetNS: nsPath, IP: ip,
		ClusterCIDR: clusterCIDR, NodeCIDRMaskSize: 24, ServiceCIDR: serviceCIDR,
	})
	if err != nil {
		return nil, fmt.Errorf("kubetest: %w", err)
	}
	return cp, nil
}

// ControlPlane starts a control plane as Start does, stopped when the
// test ends, and returns it with an administrator's client; it skips the
// test when not root.
func ControlPlane(t testing.TB, nsPath string, ip net.IP) (*kube.ControlPlane, kubernetes.Interface) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a control plane in a network namespace")
	}
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	cp, err := Start(ctx, nsPath, ip, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	admin, err := cp.Client()
	if err != nil {
		t.Fatal(err)
	}
	return cp, admin
}

// BindUser gives user exactly rules, cluster-wide (a ClusterRole and its
// binding, both named after the user), and returns the path of the user's
// kubeconfig once the authorizer allows every verb of every rule (it
// learns of the binding a moment after it is created).
func BindUser(ctx context.Context, cp *kube.ControlPlane, user string, rules []rbacv1.PolicyRule) (string, error) {
	admin, err := cp.Client()
	if err != nil {
		return "", fmt.Errorf("kubetest: %w", err)
	}
	kubeconfig, err := cp.Kubeconfig(user)
	if err != nil {
		return "", fmt.Errorf("kubetest: kubeconfig of %s: %w", user, err)
	}
	rbac := admin.RbacV1()
	if _, err := rbac.ClusterRoles().Create(ctx, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: user}, Rules: rules,
	}, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("kubetest: ClusterRole %s: %w", user, err)
	}
	if _, err := rbac.ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: user},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: user}},
	}, metav1.CreateOptions{}); err != nil {
		return "", fmt.Errorf("kubetest: ClusterRoleBinding %s: %w", user, err)
	}
	for _, r := range rules {
		for _, group := range r.APIGroups {
			for _, res := range r.Resources {
				resource, sub, _ := strings.Cut(res, "/")
				for _, verb := range r.Verbs {
					attrs := &authorizationv1.ResourceAttributes{Verb: verb, Group: group, Resource: resource, Subresource: sub}
					if err := waitAllowed(ctx, admin, user, attrs); err != nil {
						return "", err
					}
				}
			}
		}
	}
	return kubeconfig, nil
}

// waitAllowed polls the authorizer until it allows user attrs, failing at
// ctx's end.
func waitAllowed(ctx context.Context, admin kubernetes.Interface, user string, attrs *authorizationv1.ResourceAttributes) error {
	for {
		review, err := admin.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: user, ResourceAttributes: attrs},
		}, metav1.CreateOptions{})
		if err == nil && review.Status.Allowed {
			return nil
		}
		if err == nil {
			err = fmt.Errorf("denied: %s", review.Status.Reason)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kubetest: %s not allowed to %s %s/%s %s: %w", user, attrs.Verb, attrs.Group, attrs.Resource, attrs.Subresource, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// User is BindUser for a test: it fails the test when the user cannot be
// bound within a minute.
func User(t testing.TB, cp *kube.ControlPlane, user string, rules []rbacv1.PolicyRule) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kubeconfig, err := BindUser(ctx, cp, user, rules)
	if err != nil {
		t.Fatal(err)
	}
	return kubeconfig
}
