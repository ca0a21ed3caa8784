// Command podnet-agent is podnet's node daemon: run on every node, it makes
// the nodes one pod network (see internal/agent).
//
//	podnet-agent [flags]         run the agent
//	podnet-agent leave [flags]   take a stopped node out of the cluster
//	                             (--wait: then wait for SIGTERM)
//
// Every flag can also be set in a YAML file (--config) under the flag's
// name; flags given on the command line win over the file.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"gopkg.in/yaml.v3"
	"k8s.io/klog/v2"

	"github.com/podnet/podnet/internal/agent"
)

// Version is podnet's release (set at link time with -X main.Version=…).
var Version = "dev"

func main() {
	if err := command().Execute(); err != nil {
		os.Exit(1)
	}
}

func command() *cobra.Command {
	cfg := agent.Defaults()
	var (
		configFile, nodeIP, nodeIP6, logLevel, logFormat string
		nodePortAddresses                                []string
	)
	newAgent := func(cmd *cobra.Command) (*agent.Agent, error) {
		if err := applyFile(cmd.Flags(), configFile); err != nil {
			return nil, err
		}
		if cfg.NodeName == "" {
			h, err := os.Hostname()
			if err != nil {
				return nil, fmt.Errorf("node name: %w", err)
			}
			cfg.NodeName = h
		}
		for _, p := range []struct {
			s   string
			dst *net.IP
		}{{nodeIP, &cfg.NodeIP}, {nodeIP6, &cfg.NodeIP6}} {
			if p.s == "" {
				continue
			}
			if *p.dst = net.ParseIP(p.s); *p.dst == nil {
				return nil, fmt.Errorf("invalid IP address %q", p.s)
			}
		}
		cfg.NodePortAddresses = nil
		for _, a := range nodePortAddresses {
			p, err := netip.ParsePrefix(a)
			if err != nil {
				return nil, fmt.Errorf("--nodeport-addresses: %w", err)
			}
			cfg.NodePortAddresses = append(cfg.NodePortAddresses, p.Masked())
		}
		log, err := logger(logLevel, logFormat)
		if err != nil {
			return nil, err
		}
		log = log.With("node", cfg.NodeName)
		// client-go's own messages (its informers' retries) join the
		// agent's log instead of going to stderr in klog's format; klog's
		// logger is process-wide, so it is set here, once.
		klog.SetSlogLogger(log.With("component", "client-go"))
		return agent.New(cfg, log)
	}
	root := &cobra.Command{
		Use:           "podnet-agent",
		Short:         "podnet's node agent: leases the node a pod subnet and connects it to every other node",
		Version:       Version,
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := newAgent(cmd)
			if err != nil {
				return report(err)
			}
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return report(a.Run(ctx))
		},
	}
	var wait bool
	leave := &cobra.Command{
		Use:   "leave",
		Short: "take this node out of the cluster (stop its agent first): revoke its lease, remove its routes, rules and CNI configuration",
		RunE: func(cmd *cobra.Command, _ []string) error {
			a, err := newAgent(cmd)
			if err != nil {
				return report(err)
			}
			if err := a.Leave(cmd.Context()); err != nil || !wait {
				return report(err)
			}
			fmt.Fprintln(os.Stderr, "podnet-agent: left the cluster; ready, waiting for SIGTERM")
			ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return report(a.ServeLeft(ctx))
		},
	}
	leave.Flags().BoolVar(&wait, "wait", false, "once left, answer /readyz on --listen and wait for SIGTERM instead of exiting (as the container of a DaemonSet: deploy/podnet-cleanup.yaml)")
	root.AddCommand(leave)

	f := root.PersistentFlags()
	f.StringVar(&configFile, "config", "", "YAML file of flag values (keys are flag names)")
	f.StringVar(&cfg.NodeName, "node-name", "", "this node's name (default: hostname)")
	f.StringVar(&cfg.Datastore, "datastore", cfg.Datastore, "embedded (run a single-node etcd in the agent), etcd (use --etcd-endpoints) or kubernetes (the Kubernetes API's Node objects)")
	f.StringVar(&cfg.Kubeconfig, "kubeconfig", "", "--datastore=kubernetes: kubeconfig file of the API server (default: in-cluster, the pod's service account)")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "etcd client URLs (an external cluster or the embedding agent's)")
	f.StringVar(&cfg.EtcdCAFile, "etcd-cafile", "", "CA certificate of the etcd servers")
	f.StringVar(&cfg.EtcdCertFile, "etcd-certfile", "", "client certificate for etcd")
	f.StringVar(&cfg.EtcdKeyFile, "etcd-keyfile", "", "client key for etcd")
	f.StringVar(&cfg.EtcdClientURL, "etcd-client-url", "", "embedded etcd: client URL to listen on and advertise (default https://<node IP>:2379, mutual TLS)")
	f.StringVar(&cfg.EtcdPeerURL, "etcd-peer-url", "", "embedded etcd: peer URL (default https://127.0.0.1:2380)")
	f.StringVar(&cfg.JoinToken, "join-token", "", "client of another agent's embedded etcd: the token (its <data-dir>/join-token) that obtains this node's certificate")
	f.StringVar(&cfg.JoinTokenFile, "join-token-file", "", "like --join-token, read from a file")
	f.StringVar(&cfg.JoinURL, "join-url", "", "the join endpoint for --join-token (default https://<first etcd endpoint's host>:2378)")
	f.StringVar(&cfg.JoinListen, "join-listen", "", "embedded etcd: address of the join endpoint (default <node IP>:2378)")
	f.BoolVar(&cfg.InsecureDatastore, "insecure-datastore", false, "allow plaintext (http://) datastore URLs on non-loopback addresses: anyone on the network can then read and rewrite the cluster's state")
	f.StringVar(&cfg.Prefix, "etcd-prefix", cfg.Prefix, "key prefix of podnet's data in etcd")
	f.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "embedded etcd data and the node's last lease")
	f.StringVar(&cfg.Cluster.ClusterCIDR, "cluster-cidr", cfg.Cluster.ClusterCIDR, "IPv4 pod network of the cluster")
	f.StringVar(&cfg.Cluster.ClusterCIDR6, "cluster-cidr6", "", "IPv6 pod network of the cluster (dual-stack)")
	f.IntVar(&cfg.Cluster.SubnetSize, "node-subnet-size", cfg.Cluster.SubnetSize, "prefix length of each node's IPv4 pod subnet")
	f.IntVar(&cfg.Cluster.SubnetSize6, "node-subnet-size6", 0, "prefix length of each node's IPv6 pod subnet")
	f.StringVar((*string)(&cfg.Cluster.Backend), "backend", string(cfg.Cluster.Backend), "auto (host-gw to peers on the same link, VXLAN to the others), host-gw or vxlan")
	f.IntVar(&cfg.Cluster.VNI, "vxlan-vni", cfg.Cluster.VNI, "VXLAN network identifier")
	f.IntVar(&cfg.Cluster.VXLANPort, "vxlan-port", cfg.Cluster.VXLANPort, "VXLAN UDP port")
	f.IntVar(&cfg.Cluster.MTU, "mtu", 0, "pod MTU (0: the underlay's, minus the VXLAN overhead when VXLAN may be used)")
	f.BoolVar(&cfg.AcceptClusterChange, "accept-cluster-change", false, "start although the cluster configuration in the datastore differs from the one this node last ran with")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "grace period before a dead node's subnet is reclaimed and its routes removed (kubernetes: how long the watch of the Nodes may fail before /readyz reports it)")
	f.StringVar(&cfg.Iface, "iface", "", "underlay interface (default: the one holding --node-ip, else the default route's)")
	f.StringVar(&nodeIP, "node-ip", "", "this node's underlay IPv4 address (default: the interface's first)")
	f.StringVar(&nodeIP6, "node-ip6", "", "this node's underlay IPv6 address (default: the interface's first global one)")
	f.StringVar(&cfg.CNIBinDir, "cni-bin-dir", cfg.CNIBinDir, "where the CNI plugins are installed")
	f.StringVar(&cfg.CNIConfDir, "cni-conf-dir", cfg.CNIConfDir, "where the CNI configuration is written")
	f.StringVar(&cfg.CNIBinary, "cni-binary", "", "podnet-cni binary to install (default: beside podnet-agent)")
	f.StringVar(&cfg.IPAMDir, "ipam-dir", cfg.IPAMDir, "host-local's state directory for the cluster network")
	f.StringSliceVar(&cfg.Chain, "cni-chain", cfg.Chain, "plugins chained after podnet in the conflist (none by default: podnet honours the portMappings and bandwidth capabilities itself; chaining portmap or bandwidth hands that capability to it)")
	f.BoolVar(&cfg.Egress, "egress-masquerade", cfg.Egress, "masquerade pod traffic leaving the cluster CIDRs")
	f.BoolVar(&cfg.ServiceProxy, "service-proxy", cfg.ServiceProxy, "be the node's service proxy in place of kube-proxy (--datastore=kubernetes; kube-proxy must not run beside it): Services and EndpointSlices programmed into nftables")
	f.StringSliceVar(&nodePortAddresses, "nodeport-addresses", nil, "--service-proxy: CIDRs whose local addresses serve NodePorts and health check node ports (default: the node's underlay addresses; 0.0.0.0/0,::/0: every local address)")
	f.StringVar(&cfg.ServiceProxyHealthAddr, "service-proxy-health-addr", cfg.ServiceProxyHealthAddr, "--service-proxy: address of the proxy's /healthz and /livez for load balancers, as kube-proxy's --healthz-bind-address (empty: off)")
	f.BoolVar(&cfg.NetworkPolicy, "network-policy", cfg.NetworkPolicy, "enforce NetworkPolicy and the ClusterNetworkPolicy admin and baseline tiers on the node's pods in nftables (--datastore=kubernetes)")
	f.Uint16Var(&cfg.NetworkPolicyLogGroup, "network-policy-log-group", cfg.NetworkPolicyLogGroup, "--network-policy: nflog group denied packets are logged to, rate-limited, prefixed with the tier, direction and policy (0: not logged)")
	f.StringVar(&cfg.NetworkPolicyGate, "network-policy-gate", cfg.NetworkPolicyGate, "--network-policy: unix socket through which the CNI plugin's ADD waits for a new pod's policy to be in the kernel (empty: off)")
	f.StringVar(&cfg.Listen, "listen", cfg.Listen, "address of /healthz, /readyz, /status and /metrics (empty: off); loopback by default, widen it (e.g. <node IP>:9099) only where scrapers need it")
	f.DurationVar(&cfg.Resync, "resync", cfg.Resync, "period of the full reconcile behind the event-driven one")
	f.StringVar(&logLevel, "log-level", "info", "debug, info, warn or error")
	f.StringVar(&logFormat, "log-format", "text", "text or json")
	return root
}

// applyFile sets every flag the file names and the command line did not.
func applyFile(flags *pflag.FlagSet, path string) error {
	if path == "" {
		return nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config file: %w", err)
	}
	var values map[string]any
	if err := yaml.Unmarshal(b, &values); err != nil {
		return fmt.Errorf("config file %s: %w", path, err)
	}
	for k, v := range values {
		fl := flags.Lookup(k)
		if fl == nil || k == "config" {
			return fmt.Errorf("config file %s: unknown key %q", path, k)
		}
		if fl.Changed {
			continue
		}
		s := fmt.Sprint(v)
		if list, ok := v.([]any); ok {
			parts := make([]string, len(list))
			for i, e := range list {
				parts[i] = fmt.Sprint(e)
			}
			s = strings.Join(parts, ",")
		}
		if err := flags.Set(k, s); err != nil {
			return fmt.Errorf("config file %s: %s: %w", path, k, err)
		}
	}
	return nil
}

func logger(level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("log level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	}
	return nil, fmt.Errorf("unknown log format %q (text or json)", format)
}

func report(err error) error {
	if err != nil {
		fmt.Fprintln(os.Stderr, "podnet-agent:", err)
	}
	return err
}
