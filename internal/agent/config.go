// Package agent is podnet's node daemon: it finds the node's underlay,
// opens the datastore, settles the cluster configuration, and runs the
// node's controllers (internal/agent/controller): membership (the node's
// pod subnets), routes (the fabric to every other node), egress (the
// masquerade of traffic leaving the cluster), service-proxy (the Services,
// in kubernetes mode: internal/services), network-policy (NetworkPolicy
// and the cluster tiers, in kubernetes mode: internal/policy/enforce),
// cni-install (the plugins and their configuration) and pod-count; it serves their health, status and
// metrics. Each controller converges the kernel to the desired state at
// start and on every change, so a restart changes nothing that works.
package agent

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/policy/gate"
	"github.com/podnet/podnet/internal/services"
)

// Config is the agent's configuration (flags and the config file).
type Config struct {
	// NodeName identifies the node in the datastore (default: hostname).
	NodeName string
	// Datastore is "embedded" (run a single-node etcd in the agent),
	// "etcd" (connect to EtcdEndpoints) or "kubernetes" (the Node objects
	// of the Kubernetes API: see internal/datastore/kubeapi).
	Datastore string
	// Kubeconfig reaches the Kubernetes API in kubernetes mode; "" is the
	// in-cluster configuration (the pod's service account).
	Kubeconfig    string
	EtcdEndpoints []string
	EtcdCAFile    string
	EtcdCertFile  string
	EtcdKeyFile   string
	// EtcdClientURL and EtcdPeerURL are where the embedded server listens
	// (defaults: https://<node IP>:2379 and https://127.0.0.1:2380).
	EtcdClientURL string
	EtcdPeerURL   string

	// Datastore security (see store.go and docs/agent-datastore.md).
	//
	// JoinToken (or the file JoinTokenFile holds) lets a client of another
	// agent's embedded datastore obtain its client certificate from that
	// agent's join endpoint, JoinURL (default https://<first endpoint's
	// host>:2378). JoinListen is where an embedding agent serves the join
	// endpoint (default <node IP>:2378). InsecureDatastore allows plaintext
	// datastore URLs on non-loopback addresses.
	JoinToken         string
	JoinTokenFile     string
	JoinURL           string
	JoinListen        string
	InsecureDatastore bool
	// Prefix is the datastore key prefix.
	Prefix string
	// DataDir keeps the embedded etcd's data and the node's last lease.
	DataDir string

	// Cluster is the cluster configuration this agent proposes; the first
	// agent's proposal is stored and wins.
	Cluster cluster.Config
	// AcceptClusterChange lets the agent start although the stored
	// cluster configuration differs from the one it last ran with.
	AcceptClusterChange bool
	// LeaseTTL is the grace period after which a dead node's subnet is
	// reclaimed and its routes removed everywhere; in kubernetes mode, how
	// long the watch of the Nodes may fail before the agent reports it.
	LeaseTTL time.Duration

	// Iface is the underlay interface (default: the default route's);
	// NodeIP and NodeIP6 default to its first global addresses.
	Iface   string
	NodeIP  net.IP
	NodeIP6 net.IP

	// CNIBinDir receives the plugin binary and its links, CNIConfDir the
	// conflist; CNIBinary is the podnet-cni to install (default: beside
	// the agent's executable); IPAMDir is host-local's dataDir.
	CNIBinDir  string
	CNIConfDir string
	CNIBinary  string
	IPAMDir    string
	// Chain lists the plugins chained after podnet in the conflist; by
	// default none: podnet honours the portMappings and bandwidth
	// capabilities itself (see cniconf.Cluster).
	Chain []string

	// Egress masquerades pod traffic leaving the cluster CIDRs.
	Egress bool
	// ServiceProxy makes the agent the node's service proxy in place of
	// kube-proxy (package services; --datastore kubernetes only).
	ServiceProxy bool
	// NodePortAddresses are the networks whose local addresses serve
	// NodePorts (kube-proxy's --nodeport-addresses); empty: the node's
	// underlay addresses.
	NodePortAddresses []netip.Prefix
	// ServiceProxyHealthAddr is where the service proxy serves /healthz
	// and /livez for load balancers ("" = off), as kube-proxy's
	// --healthz-bind-address.
	ServiceProxyHealthAddr string
	// NetworkPolicy enforces NetworkPolicy and the ClusterNetworkPolicy
	// tiers on the node's pods (package policy/enforce; --datastore
	// kubernetes only).
	NetworkPolicy bool
	// NetworkPolicyLogGroup is the nflog group denied packets are logged
	// to (rate-limited); 0 logs none.
	NetworkPolicyLogGroup uint16
	// NetworkPolicyGate is the unix socket through which the CNI plugin's
	// ADD waits for a new pod's policy to be in the kernel ("" = none).
	NetworkPolicyGate string
	// Listen is the address of /healthz, /readyz, /status and /metrics
	// ("" = off); loopback by default, since /status tells the node's
	// addresses, subnets and peers to whoever asks.
	Listen string
	// Resync is the period of the full reconcile that backs up the
	// event-driven one.
	Resync time.Duration

	// NetNS is the node's network namespace, where the agent finds the
	// underlay and programs the fabric and nftables; nil is the agent's
	// own (tests run an agent in-process for a throwaway namespace).
	NetNS *netns.NS
}

// Defaults returns the configuration of a node that sets nothing.
func Defaults() Config {
	return Config{
		Datastore:              "embedded",
		Prefix:                 "/podnet/",
		DataDir:                "/var/lib/podnet",
		Cluster:                cluster.Config{ClusterCIDR: "10.244.0.0/16", SubnetSize: 24, Backend: cluster.Auto, VNI: 1, VXLANPort: 4789},
		LeaseTTL:               60 * time.Second,
		CNIBinDir:              "/opt/cni/bin",
		CNIConfDir:             "/etc/cni/net.d",
		IPAMDir:                "/run/podnet/ipam",
		Egress:                 true,
		ServiceProxyHealthAddr: services.DefaultHealthAddr,
		NetworkPolicyGate:      gate.DefaultSocket,
		Listen:                 "127.0.0.1:9099",
		Resync:                 30 * time.Second,
	}
}

// Validate reports the first problem of a configuration.
func (c *Config) Validate() error {
	var errs []error
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is empty"))
	}
	switch c.Datastore {
	case "embedded":
	case "etcd":
		if len(c.EtcdEndpoints) == 0 {
			errs = append(errs, errors.New("--datastore=etcd needs --etcd-endpoints"))
		}
	case "kubernetes":
		if len(c.EtcdEndpoints) > 0 {
			errs = append(errs, errors.New("--etcd-endpoints is for --datastore=etcd, not kubernetes"))
		}
	default:
		errs = append(errs, fmt.Errorf("unknown datastore %q (embedded, etcd or kubernetes)", c.Datastore))
	}
	if c.Kubeconfig != "" && c.Datastore != "kubernetes" {
		errs = append(errs, errors.New("--kubeconfig is for --datastore=kubernetes"))
	}
	if c.ServiceProxy && c.Datastore != "kubernetes" {
		errs = append(errs, errors.New("--service-proxy needs --datastore=kubernetes: it follows the Services and EndpointSlices of the Kubernetes API"))
	}
	if c.NetworkPolicy && c.Datastore != "kubernetes" {
		errs = append(errs, errors.New("--network-policy needs --datastore=kubernetes: it follows the NetworkPolicies, Pods and Namespaces of the Kubernetes API"))
	}
	for _, p := range c.NodePortAddresses {
		if !p.IsValid() {
			errs = append(errs, fmt.Errorf("node-port address network %s is invalid", p))
		}
	}
	errs = append(errs, c.validateDatastoreSecurity()...)
	if c.LeaseTTL < 5*time.Second {
		errs = append(errs, fmt.Errorf("lease TTL %s is shorter than 5s", c.LeaseTTL))
	}
	if c.Resync <= 0 {
		errs = append(errs, fmt.Errorf("resync period %s must be positive", c.Resync))
	}
	if c.NodeIP != nil && c.NodeIP.To4() == nil {
		errs = append(errs, fmt.Errorf("node IP %s is not IPv4", c.NodeIP))
	}
	if c.NodeIP6 != nil && c.NodeIP6.To4() != nil {
		errs = append(errs, fmt.Errorf("node IPv6 %s is not IPv6", c.NodeIP6))
	}
	cl := c.Cluster
	cl.Default()
	if err := cl.Validate(); err != nil {
		errs = append(errs, err)
	}
	for _, p := range []struct{ name, dir string }{{"data dir", c.DataDir}, {"CNI bin dir", c.CNIBinDir}, {"CNI conf dir", c.CNIConfDir}, {"IPAM dir", c.IPAMDir}} {
		if p.dir == "" {
			errs = append(errs, fmt.Errorf("%s is empty", p.name))
		}
	}
	return errors.Join(errs...)
}
