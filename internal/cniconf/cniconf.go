// Package cniconf generates the configuration of podnet's cluster network
// on a node: the conflist the node agent installs in the CNI conf dir. It
// lives apart from the agent so that tools which need the same conflist
// without an agent (the CNI benchmark) generate it with the same code.
package cniconf

import (
	"encoding/json"
	"slices"
)

// NetworkName is the name of podnet's cluster network.
const NetworkName = "podnet"

// FileName is the conflist's file in the CNI conf dir. Runtimes load the
// first file in lexical order (containerd's max_conf_num = 1), so "05-"
// sorts it before the defaults a host may already hold, such as
// containerd's 10-containerd-net.conflist or CRI-O's 10-crio-bridge.conflist.
const FileName = "05-podnet.conflist"

// Version is the CNI version a runtime of spec 1.1 (libcni 1.2 and later:
// containerd 2, CRI-O 1.30) picks from the conflist's cniVersions.
const Version = "1.1.0"

// CompatVersion is the conflist's cniVersion, which runtimes that predate
// cniVersions (containerd 1.6 and 1.7, whose libcni knows results up to
// 1.0.0) read instead, so that they can run podnet's network too.
const CompatVersion = "1.0.0"

// Cluster describes a node's cluster network configuration.
type Cluster struct {
	// Subnets are the node's pod subnets (one per family); host-local
	// gets one range set per subnet.
	Subnets []string
	// MTU of the pods' interfaces (the fabric's MTU).
	MTU int
	// IPAMDir is host-local's dataDir.
	IPAMDir string
	// Chain lists the plugins chained after the interface plugin:
	// portmap and bandwidth get their capabilities (portmap with snat).
	// Empty is the agent's default: the podnet plugin then honours the
	// portMappings and bandwidth capabilities itself, and the conflist is
	// that one plugin (one process per pod ADD). podnet declares only the
	// capabilities its chain does not hand to portmap or bandwidth.
	Chain []string
	// PolicyGate is the agent's policy gate socket, which the podnet
	// plugin tells each new pod's addresses ("policyGate"); "" leaves the
	// field out (network policy off).
	PolicyGate string

	// Type is the interface plugin (default "podnet"); another type with
	// the same fields (the reference "ptp") gives the closest reference
	// counterpart of the same network.
	Type string
	// CNIVersion, when set, is the conflist's only version; by default
	// runtimes pick Version, or CompatVersion when they are older.
	// Name defaults to NetworkName.
	CNIVersion, Name string
}

// Conflist encodes the configuration as a conflist file's content: the
// interface plugin over the node's subnets with host-local IPAM (podnet's
// declaring the capabilities it honours), then the chained plugins.
func (c Cluster) Conflist() ([]byte, error) {
	typ, name := c.Type, c.Name
	if typ == "" {
		typ = "podnet"
	}
	list := map[string]any{"cniVersion": c.CNIVersion}
	if c.CNIVersion == "" {
		list["cniVersion"] = CompatVersion
		list["cniVersions"] = []string{CompatVersion, Version}
	}
	if name == "" {
		name = NetworkName
	}
	ranges := make([]any, 0, len(c.Subnets))
	for _, s := range c.Subnets {
		ranges = append(ranges, []any{map[string]any{"subnet": s}})
	}
	first := map[string]any{
		"type": typ,
		"mtu":  c.MTU,
		"ipam": map[string]any{"type": "host-local", "ranges": ranges, "dataDir": c.IPAMDir},
	}
	if typ == "podnet" {
		if c.PolicyGate != "" {
			first["policyGate"] = c.PolicyGate
		}
		caps := map[string]bool{}
		if !slices.Contains(c.Chain, "portmap") {
			caps["portMappings"] = true
		}
		if !slices.Contains(c.Chain, "bandwidth") {
			caps["bandwidth"] = true
		}
		if len(caps) > 0 {
			first["capabilities"] = caps
		}
	}
	plugins := []any{first}
	for _, p := range c.Chain {
		conf := map[string]any{"type": p}
		switch p {
		case "portmap":
			conf["capabilities"] = map[string]bool{"portMappings": true}
			conf["snat"] = true
		case "bandwidth":
			conf["capabilities"] = map[string]bool{"bandwidth": true}
		}
		plugins = append(plugins, conf)
	}
	list["name"], list["plugins"] = name, plugins
	return json.MarshalIndent(list, "", "  ")
}
