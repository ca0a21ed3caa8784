// Package cniconf generates the configuration of podnet's cluster network
// on a node: the conflist the node agent installs in the CNI conf dir. It
// lives apart from the agent so that tools which need the same conflist
// without an agent (the CNI benchmark) generate it with the same code.
package cniconf

import "encoding/json"

// NetworkName is the name of podnet's cluster network.
const NetworkName = "podnet"

// FileName is the conflist's file in the CNI conf dir; "10-" sorts it
// before the usual defaults, so runtimes pick it.
const FileName = "10-podnet.conflist"

// Version is the cniVersion of the cluster conflist.
const Version = "1.1.0"

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
	Chain []string

	// Type is the interface plugin (default "podnet"); another type with
	// the same fields (the reference "ptp") gives the closest reference
	// counterpart of the same network.
	Type string
	// CNIVersion defaults to Version; Name to NetworkName.
	CNIVersion, Name string
}

// Conflist encodes the configuration as a conflist file's content: the
// interface plugin over the node's subnets with host-local IPAM, then the
// chained plugins.
func (c Cluster) Conflist() ([]byte, error) {
	typ, version, name := c.Type, c.CNIVersion, c.Name
	if typ == "" {
		typ = "podnet"
	}
	if version == "" {
		version = Version
	}
	if name == "" {
		name = NetworkName
	}
	ranges := make([]any, 0, len(c.Subnets))
	for _, s := range c.Subnets {
		ranges = append(ranges, []any{map[string]any{"subnet": s}})
	}
	plugins := []any{map[string]any{
		"type": typ,
		"mtu":  c.MTU,
		"ipam": map[string]any{"type": "host-local", "ranges": ranges, "dataDir": c.IPAMDir},
	}}
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
	return json.MarshalIndent(map[string]any{
		"cniVersion": version,
		"name":       name,
		"plugins":    plugins,
	}, "", "  ")
}
