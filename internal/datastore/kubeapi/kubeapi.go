// Package kubeapi is podnet's datastore in the Kubernetes API (a
// datastore.Store; podnet-agent --datastore kubernetes): the Node objects
// are the node records.
//
//   - A node's pod subnets are its spec.podCIDRs as kube-controller-manager
//     allocates them (--allocate-node-cidrs): one IPv4 and/or one IPv6 CIDR.
//     Join waits for them. Subnets are only ever read from spec.podCIDRs,
//     never from annotations.
//   - What its peers need, the agent publishes on its own Node as
//     annotations (AnnotationNodeIP, AnnotationNodeIP6, AnnotationVTEPMAC),
//     through the nodes/status subresource, as flannel does.
//   - Once the node's fabric is up, the agent sets the Node's
//     NetworkUnavailable condition to False (reason PodnetIsUp); leaving
//     sets it to True (PodnetLeft) and removes the annotations.
//   - The cluster configuration is the agent's own (every agent of the
//     DaemonSet is given the same one by its ConfigMap): nothing is stored.
//   - The peers are followed with an informer on the Nodes: a Node is a peer
//     once it has podCIDRs and podnet's annotations; a Node deleted from the
//     API leaves the set at once.
//
// An outage of the API server tears nothing down: the informer keeps the
// last known peers, Healthy reports the broken watch once it lasted longer
// than the grace period, and everything resumes when the API answers again.
//
// The agent's credentials need exactly Rules: get, list and watch on nodes,
// patch on nodes/status, get, list and watch on services and
// endpointslices for the service proxy, and on networkpolicies, pods,
// namespaces and clusternetworkpolicies for network policy (see
// docs/agent-datastore.md).
package kubeapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/datastore"
	"github.com/podnet/podnet/internal/netns"
)

// DefaultGrace is the grace period used when Config.Grace is 0.
const DefaultGrace = 60 * time.Second

// DefaultTimeout is the request timeout used when Config.Timeout is 0.
const DefaultTimeout = 10 * time.Second

// Config reaches the Kubernetes API.
type Config struct {
	// NodeName is this node's Node object; it must exist.
	NodeName string
	// Kubeconfig is a kubeconfig file; "" is the in-cluster configuration
	// (the pod's service account).
	Kubeconfig string
	// Cluster is the cluster configuration EnsureClusterConfig settles on
	// (defaulted and validated).
	Cluster cluster.Config
	// Grace is how long the watch of the Nodes may fail before Healthy
	// reports it, default DefaultGrace.
	Grace time.Duration
	// Timeout bounds each request other than the watch, default
	// DefaultTimeout.
	Timeout time.Duration
	// NetNS is the network namespace the API server is reached from; nil
	// is the process's own. (Give the server as an IP address: a host name
	// may be resolved outside NetNS.)
	NetNS *netns.NS
	// Log receives the datastore's own messages. Nil discards them.
	Log *slog.Logger
	// Metrics, when set, receives the datastore's counters.
	Metrics prometheus.Registerer
}

// Rules are the RBAC rules the agent's credentials need, and all it uses:
// read and follow the Nodes, patch a Node's status (its annotations and
// its NetworkUnavailable condition go through nodes/status), and, for the
// service proxy (package services), read and follow the Services and
// EndpointSlices, and for network policy (package policy/enforce), the
// NetworkPolicies, Pods, Namespaces and ClusterNetworkPolicies.
func Rules() []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
		{APIGroups: []string{""}, Resources: []string{"services"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"pods", "namespaces"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"networking.k8s.io"}, Resources: []string{"networkpolicies"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{"policy.networking.k8s.io"}, Resources: []string{"clusternetworkpolicies"}, Verbs: []string{"get", "list", "watch"}},
	}
}

// Store is a connection to the Kubernetes API.
type Store struct {
	cfg    Config
	rc     *rest.Config
	client kubernetes.Interface
	log    *slog.Logger

	refusedRecords prometheus.Counter

	// The Node informer, started by the first user.
	informerOnce sync.Once
	nodes        *nodeInformer
	stop         context.CancelFunc
	done         chan struct{}
}

var _ datastore.Store = (*Store)(nil)

// Open connects to the API server (cfg.Kubeconfig's, or in-cluster) and
// reads the node's Node object; it fails when the API does not answer
// within the timeout or the Node does not exist.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("datastore: kubernetes: no node name")
	}
	rc, err := restConfig(cfg)
	if err != nil {
		return nil, err
	}
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("datastore: kubernetes client: %w", err)
	}
	if cfg.Grace <= 0 {
		cfg.Grace = DefaultGrace
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	s := &Store{cfg: cfg, rc: rc, client: client, log: cfg.Log,
		refusedRecords: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podnet_agent_node_records_refused_total", Help: "Node objects refused as peers because of malformed podnet annotations or podCIDRs.",
		}),
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if cfg.Metrics != nil {
		if err := cfg.Metrics.Register(s.refusedRecords); err != nil {
			return nil, fmt.Errorf("datastore: metrics: %w", err)
		}
	}
	if _, err := s.getNode(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// restConfig is the client configuration: the kubeconfig file's or the
// in-cluster one, protobuf, dialling from cfg.NetNS.
func restConfig(cfg Config) (*rest.Config, error) {
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("datastore: kubernetes client configuration: %w", err)
	}
	rc.UserAgent = "podnet-agent"
	rc.ContentType = runtime.ContentTypeProtobuf
	rc.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if ns := cfg.NetNS; ns != nil {
		d := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
		rc.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return ns.DialContext(ctx, d, network, addr)
		}
	}
	return rc, nil
}

// getNode reads the node's Node object from the API server.
func (s *Store) getNode(ctx context.Context) (*corev1.Node, error) {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.Timeout)
	defer cancel()
	n, err := s.client.CoreV1().Nodes().Get(ctx, s.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("datastore: the Node %q does not exist in the Kubernetes API (is --node-name the kubelet's node name?): %w", s.cfg.NodeName, err)
	}
	if err != nil {
		return nil, fmt.Errorf("datastore: read the Node %q: %w", s.cfg.NodeName, err)
	}
	return n, nil
}

// EnsureClusterConfig returns the configured cluster configuration,
// defaulted and validated (nothing is stored in Kubernetes mode: every
// agent is given the same), with one line per field want sets to another
// value.
func (s *Store) EnsureClusterConfig(_ context.Context, want cluster.Config) (cluster.Config, []string, error) {
	c := s.cfg.Cluster
	c.Default()
	if err := c.Validate(); err != nil {
		return cluster.Config{}, nil, fmt.Errorf("datastore: %w", err)
	}
	var diffs []string
	for _, f := range c.Diff(want, true) {
		diffs = append(diffs, fmt.Sprintf("%s: configured %s, wanted %s", f.Field, f.A, f.B))
	}
	return c, diffs, nil
}

// Clientset is the store's client of the Kubernetes API (reaching it
// from Config.NetNS, with the store's credentials), for the agent's
// other users of the API: the service proxy's informers.
func (s *Store) Clientset() kubernetes.Interface { return s.client }

// RESTConfig is a copy of the client configuration behind Clientset,
// for the agent's clients of other API groups (the ClusterNetworkPolicy
// CRD's).
func (s *Store) RESTConfig() *rest.Config { return rest.CopyConfig(s.rc) }

// Close stops the Node informer, if it runs; it is the Store's last call.
func (s *Store) Close() error {
	s.informerOnce.Do(func() {}) // no informer starts after Close
	if s.stop != nil {
		s.stop()
		<-s.done
	}
	return nil
}

// informer starts the Node informer on first use and returns it.
func (s *Store) informer() *nodeInformer {
	s.informerOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		s.stop, s.done = cancel, make(chan struct{})
		s.nodes = newNodeInformer(s.client, s.log)
		go func() {
			defer close(s.done)
			s.nodes.run(ctx)
		}()
	})
	return s.nodes
}
