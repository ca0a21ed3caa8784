package kube

import (
	"encoding/json"
	"fmt"
)

// The node's component configuration files (JSON, which is YAML) and
// command lines. Paths in them are the node's view: the standard paths
// are its own directories.

// ClusterDomain is the cluster's DNS domain, kubelet's clusterDomain:
// Services are <name>.<namespace>.svc.ClusterDomain.
const ClusterDomain = "cluster.local"

// kubeletConfig is the KubeletConfiguration of the node.
func (c NodeConfig) kubeletConfig() ([]byte, error) {
	authn := map[string]any{
		"anonymous": map[string]any{"enabled": false},
		"webhook":   map[string]any{"enabled": false},
	}
	if c.CAFile != "" {
		authn["x509"] = map[string]any{"clientCAFile": c.CAFile}
	}
	cfg := map[string]any{
		"apiVersion": "kubelet.config.k8s.io/v1beta1",
		"kind":       "KubeletConfiguration",
		// Pods' cgroups under the node's own root (created by the
		// supervisor), with the cgroupfs driver: there is no systemd.
		"cgroupDriver":           "cgroupfs",
		"cgroupRoot":             c.cgroupRoot(),
		"cgroupsPerQOS":          true,
		"enforceNodeAllocatable": []string{"pods"},
		"failSwapOn":             false,
		// Imported images must never be collected: there is no registry
		// to pull them again from.
		"imageGCHighThresholdPercent": 100,
		"imageGCLowThresholdPercent":  99,
		// Setting some thresholds sets the others to zero: no eviction
		// but at the edge of exhaustion.
		"evictionHard": map[string]string{
			"memory.available":  "1Mi",
			"nodefs.available":  "1%",
			"nodefs.inodesFree": "1%",
			"imagefs.available": "1%",
		},
		// kubelet sets the kernel tunables it wants; the files bound over
		// the global ones absorb that.
		"protectKernelDefaults": false,
		// Lowering its own OOM score takes CAP_SYS_RESOURCE.
		"oomScoreAdj":    0,
		"authentication": authn,
		"authorization":  map[string]any{"mode": "AlwaysAllow"},
		// A self-signed serving certificate in /var/lib/kubelet/pki.
		"serverTLSBootstrap":       false,
		"rotateCertificates":       false,
		"podLogsDir":               "/var/log/pods",
		"containerRuntimeEndpoint": "unix://" + containerdSocket,
		"resolvConf":               c.path("config", "resolv.conf"),
		// Ephemeral storage is accounted and limits enforced (eviction).
		// It also makes kubelet's cAdvisor collect the file systems'
		// usage, without which the eviction manager finds no stats for
		// the node's file system and never runs at all.
		"localStorageCapacityIsolation": true,
		"maxPods":                       110,
		"readOnlyPort":                  0,
		"healthzBindAddress":            "127.0.0.1",
		// Its default, under /usr/libexec, would be created on the machine.
		"volumePluginDir": "/var/lib/kubelet/volumeplugins",
	}
	if c.ClusterDNS != nil {
		cfg["clusterDNS"] = []string{c.ClusterDNS.String()}
		cfg["clusterDomain"] = ClusterDomain
	}
	if c.StaticPodDir != "" {
		cfg["staticPodPath"] = c.StaticPodDir
		cfg["fileCheckFrequency"] = "1s"
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("kubelet config: %w", err)
	}
	return b, nil
}

// kubeletArgs is kubelet's command line.
func (c NodeConfig) kubeletArgs() []string {
	args := []string{
		"--config=" + c.path("config", "kubelet.json"),
		"--hostname-override=" + c.Name,
		"--node-ip=" + c.nodeIPs(),
	}
	if c.Kubeconfig != "" {
		args = append(args, "--kubeconfig="+c.Kubeconfig)
	}
	return args
}

// nodeIPs is kubelet's --node-ip: IP, and IP6 in a dual-stack cluster.
func (c NodeConfig) nodeIPs() string {
	if c.IP6 != nil {
		return c.IP.String() + "," + c.IP6.String()
	}
	return c.IP.String()
}

// clusterCIDRs is kube-proxy's clusterCIDR: one prefix per family.
func (c NodeConfig) clusterCIDRs() string {
	if c.ClusterCIDR != "" && c.ClusterCIDR6 != "" {
		return c.ClusterCIDR + "," + c.ClusterCIDR6
	}
	return c.ClusterCIDR + c.ClusterCIDR6
}

// proxyConfig is the KubeProxyConfiguration of the node: its ProxyMode,
// in the node's network namespace. Conntrack sizes and timeouts of zero
// leave the global conntrack sysctls alone, and its OOM score stays (it
// takes CAP_SYS_RESOURCE to lower).
func (c NodeConfig) proxyConfig() ([]byte, error) {
	cfg := map[string]any{
		"apiVersion":       "kubeproxy.config.k8s.io/v1alpha1",
		"kind":             "KubeProxyConfiguration",
		"mode":             c.ProxyMode.OrDefault(),
		"hostnameOverride": c.Name,
		"clusterCIDR":      c.clusterCIDRs(),
		"clientConnection": map[string]any{"kubeconfig": c.ProxyKubeconfig},
		"conntrack": map[string]any{
			"maxPerCore":            0,
			"min":                   0,
			"tcpEstablishedTimeout": "0s",
			"tcpCloseWaitTimeout":   "0s",
			"udpTimeout":            "0s",
			"udpStreamTimeout":      "0s",
		},
		"oomScoreAdj":        0,
		"metricsBindAddress": "127.0.0.1:10249",
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("kube-proxy config: %w", err)
	}
	return b, nil
}

// proxyArgs is kube-proxy's command line.
func (c NodeConfig) proxyArgs() []string {
	return []string{"--config=" + c.path("config", "kube-proxy.json")}
}

// ContainerdMetricsAddress is where a node's containerd serves its
// Prometheus metrics (/v1/metrics), on the loopback of the node's network
// namespace.
const ContainerdMetricsAddress = "127.0.0.1:1338"

// containerdConfig is the node's containerd configuration: the standard
// root, state and socket (the node's own directories).
func (c NodeConfig) containerdConfig(runc, snapshotter string) (string, error) {
	return ContainerdConfig{
		Root:         "/var/lib/containerd",
		State:        "/run/containerd",
		Socket:       containerdSocket,
		SandboxImage: PauseImage,
		Snapshotter:  snapshotter,
		Runc:         runc,
		CNIBinDir:    "/opt/cni/bin",
		CNIConfDir:   "/etc/cni/net.d",
		// On the node's loopback: its own network namespace.
		MetricsAddress: ContainerdMetricsAddress,
	}.TOML()
}
