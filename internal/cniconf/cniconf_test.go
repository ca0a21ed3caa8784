package cniconf

import (
	"encoding/json"
	"maps"
	"reflect"
	"testing"

	"github.com/containernetworking/cni/libcni"
)

// TestConflist checks the cluster conflist is what libcni loads: the
// interface plugin over the node's subnets, then the chain; the defaults
// are the agent's network, an explicit type and version the reference
// counterpart. By default libcni picks Version from cniVersions while a
// runtime that reads only cniVersion gets CompatVersion.
func TestConflist(t *testing.T) {
	for _, tc := range []struct {
		name                    string
		c                       Cluster
		wantName, wantVer, typ  string
		wantCompat              string
		wantRanges, wantPlugins int
		// wantCaps is the first plugin's capabilities.
		wantCaps map[string]bool
	}{
		{"agent defaults, dual stack: one plugin",
			Cluster{Subnets: []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, MTU: 1450, IPAMDir: "/run/podnet/ipam"},
			NetworkName, Version, "podnet", CompatVersion, 2, 1, map[string]bool{"portMappings": true, "bandwidth": true}},
		{"chained portmap and bandwidth",
			Cluster{Subnets: []string{"10.244.3.0/24"}, MTU: 1450, IPAMDir: "/run/podnet/ipam", Chain: []string{"portmap", "bandwidth"}},
			NetworkName, Version, "podnet", CompatVersion, 1, 3, nil},
		{"chained portmap only",
			Cluster{Subnets: []string{"10.244.3.0/24"}, MTU: 1450, IPAMDir: "/run/podnet/ipam", Chain: []string{"portmap"}},
			NetworkName, Version, "podnet", CompatVersion, 1, 2, map[string]bool{"bandwidth": true}},
		{"reference counterpart",
			Cluster{Subnets: []string{"10.244.3.0/24"}, MTU: 1500, IPAMDir: "/tmp/ipam", Chain: []string{"portmap", "bandwidth"}, Type: "ptp", CNIVersion: "1.0.0", Name: "ref"},
			"ref", "1.0.0", "ptp", "1.0.0", 1, 3, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := tc.c.Conflist()
			if err != nil {
				t.Fatal(err)
			}
			list, err := libcni.ConfListFromBytes(b)
			if err != nil {
				t.Fatalf("libcni rejects the conflist: %v\n%s", err, b)
			}
			if list.Name != tc.wantName || list.CNIVersion != tc.wantVer || len(list.Plugins) != tc.wantPlugins {
				t.Fatalf("conflist %s/%s with %d plugins:\n%s", list.Name, list.CNIVersion, len(list.Plugins), b)
			}
			var old struct {
				CNIVersion string `json:"cniVersion"`
			}
			if err := json.Unmarshal(b, &old); err != nil || old.CNIVersion != tc.wantCompat {
				t.Errorf("cniVersion for runtimes before cniVersions = %q (%v), want %q", old.CNIVersion, err, tc.wantCompat)
			}
			var first struct {
				Type string `json:"type"`
				MTU  int    `json:"mtu"`
				IPAM struct {
					Type    string              `json:"type"`
					Ranges  [][]json.RawMessage `json:"ranges"`
					DataDir string              `json:"dataDir"`
				} `json:"ipam"`
			}
			if err := json.Unmarshal(list.Plugins[0].Bytes, &first); err != nil {
				t.Fatal(err)
			}
			if first.Type != tc.typ || first.MTU != tc.c.MTU || first.IPAM.Type != "host-local" ||
				len(first.IPAM.Ranges) != tc.wantRanges || first.IPAM.DataDir != tc.c.IPAMDir {
				t.Errorf("first plugin: %+v", first)
			}
			for i, want := range tc.c.Chain {
				if got := list.Plugins[i+1].Network.Type; got != want {
					t.Errorf("plugin %d is %s, want %s", i+1, got, want)
				}
			}
			if got := list.Plugins[0].Network.Capabilities; !maps.Equal(got, tc.wantCaps) {
				t.Errorf("first plugin's capabilities %v, want %v", got, tc.wantCaps)
			}
			for _, p := range list.Plugins[1:] {
				want := map[string]string{"portmap": "portMappings", "bandwidth": "bandwidth"}[p.Network.Type]
				if !p.Network.Capabilities[want] {
					t.Errorf("%s lacks the %s capability: %s", p.Network.Type, want, p.Bytes)
				}
			}
		})
	}
}

// agentDefaults is the conflist of the agent's defaults on a dual-stack
// node, as it was before the policy gate: without a gate it must stay
// byte for byte the same, so that upgrading the agent rewrites no node's
// conflist.
const agentDefaults = `{
  "cniVersion": "1.0.0",
  "cniVersions": [
    "1.0.0",
    "1.1.0"
  ],
  "name": "podnet",
  "plugins": [
    {
      "capabilities": {
        "bandwidth": true,
        "portMappings": true
      },
      "ipam": {
        "dataDir": "/run/podnet/ipam",
        "ranges": [
          [
            {
              "subnet": "10.244.3.0/24"
            }
          ],
          [
            {
              "subnet": "fd00:10:244:3::/64"
            }
          ]
        ],
        "type": "host-local"
      },
      "mtu": 1450,
      "type": "podnet"
    }
  ]
}`

// TestPolicyGate: the gate socket is the podnet plugin's policyGate field
// when set and absent otherwise, the conflist otherwise unchanged.
func TestPolicyGate(t *testing.T) {
	c := Cluster{Subnets: []string{"10.244.3.0/24", "fd00:10:244:3::/64"}, MTU: 1450, IPAMDir: "/run/podnet/ipam"}
	for _, tc := range []struct {
		name, gate string
	}{
		{"no gate", ""},
		{"gate", "/run/podnet/policy.sock"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.PolicyGate = tc.gate
			b, err := c.Conflist()
			if err != nil {
				t.Fatal(err)
			}
			var list struct {
				Plugins []map[string]any `json:"plugins"`
			}
			if err := json.Unmarshal(b, &list); err != nil {
				t.Fatal(err)
			}
			got, ok := list.Plugins[0]["policyGate"]
			if tc.gate == "" && ok || tc.gate != "" && got != tc.gate {
				t.Errorf("policyGate = %v (present %v), want %q", got, ok, tc.gate)
			}
			if tc.gate == "" && string(b) != agentDefaults {
				t.Errorf("conflist without a gate changed:\n%s\nwant\n%s", b, agentDefaults)
			}
			delete(list.Plugins[0], "policyGate")
			var want struct {
				Plugins []map[string]any `json:"plugins"`
			}
			if err := json.Unmarshal([]byte(agentDefaults), &want); err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(list, want) {
				t.Errorf("conflist differs beyond policyGate:\n%s", b)
			}
		})
	}
}
