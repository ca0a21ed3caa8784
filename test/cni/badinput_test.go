package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// badCase is one malformed call of a plugin binary.
type badCase struct {
	name    string
	plugin  string
	command string
	// conf edits the plugin's valid configuration (nil: unchanged);
	// stdin, when set, replaces it entirely.
	conf  func(c map[string]any)
	stdin string
	// env edits the valid environment: a value of "-" unsets the key.
	env  map[string]string
	code uint
}

// TestBadInput executes the plugin binaries directly, as a runtime would,
// with malformed configurations and environments: each call must fail with
// a spec error on stdout carrying the right code, a non-zero exit and no
// Go panic, create nothing, and leave a pod added before intact.
func TestBadInput(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	good := sandbox.ConfList{Name: "podnet-br", CNIVersion: "1.1.0", Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/16", dataDir)),
	}}
	list := mustList(t, good)
	goodPod := newPod(t, sb)
	r, err := sb.Add(ctx, list, goodPod.RT(nil))
	if err != nil {
		t.Fatalf("ADD of the good pod: %s", cniruntime.Describe(err))
	}
	goodRes := toCurrent(t, r)

	notNS := filepath.Join(t.TempDir(), "not-a-netns")
	if err := os.WriteFile(notNS, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	subnet := func(s string) func(map[string]any) {
		return func(c map[string]any) {
			c["ipam"].(map[string]any)["ranges"] = []any{[]any{map[string]any{"subnet": s}}}
		}
	}
	rangeOf := func(r map[string]any) func(map[string]any) {
		return func(c map[string]any) { c["ipam"].(map[string]any)["ranges"] = []any{[]any{r}} }
	}
	del := func(keys ...string) func(map[string]any) {
		return func(c map[string]any) {
			for _, k := range keys {
				delete(c, k)
			}
		}
	}
	set := func(k string, v any) func(map[string]any) {
		return func(c map[string]any) { c[k] = v }
	}
	setIPAM := func(k string, v any) func(map[string]any) {
		return func(c map[string]any) { c["ipam"].(map[string]any)[k] = v }
	}
	const (
		codeIncompatible = 1
		codeUnknownCont  = 3
		codeInvalidEnv   = 4
		codeDecoding     = 6
		codeInvalidConf  = 7
	)
	cases := []badCase{
		{name: "malformed JSON", stdin: `{"cniVersion":"1.1.0","name":"podnet-br","type":"bridge",`, code: codeDecoding},
		{name: "not JSON at all", stdin: `cniVersion=1.1.0`, code: codeDecoding},
		{name: "field of the wrong type", conf: set("mtu", "big"), code: codeDecoding},
		{name: "ipam of the wrong type", conf: set("ipam", "host-local"), code: codeDecoding},
		{name: "unknown cniVersion", conf: set("cniVersion", "9.9.9"), code: codeIncompatible},
		{name: "missing cniVersion", conf: del("cniVersion"), code: codeInvalidConf},
		{name: "missing name", conf: del("name"), code: codeInvalidConf},
		{name: "bad CIDR", conf: subnet("10.88.0.0/33"), code: codeInvalidConf},
		{name: "not a CIDR", conf: subnet("banana"), code: codeInvalidConf},
		{name: "range outside subnet", conf: rangeOf(map[string]any{"subnet": "10.88.0.0/16", "rangeStart": "10.99.0.5"}), code: codeInvalidConf},
		{name: "range end before start", conf: rangeOf(map[string]any{"subnet": "10.88.0.0/16", "rangeStart": "10.88.0.50", "rangeEnd": "10.88.0.10"}), code: codeInvalidConf},
		{name: "CNI_NETNS missing", env: map[string]string{"CNI_NETNS": "-"}, code: codeInvalidEnv},
		{name: "CNI_NETNS not a netns", env: map[string]string{"CNI_NETNS": notNS}, code: codeInvalidEnv},
		{name: "CNI_NETNS another namespace type", env: map[string]string{"CNI_NETNS": "/proc/self/ns/uts"}, code: codeInvalidEnv},
		{name: "CNI_NETNS nonexistent", env: map[string]string{"CNI_NETNS": "/var/run/netns/podnet-no-such-ns"}, code: codeUnknownCont},
		// The host's own namespace as the container's: ADD would configure
		// the host's links, DEL delete the host's bridge.
		{name: "CNI_NETNS is the plugin's own", env: map[string]string{"CNI_NETNS": "/proc/self/ns/net"}, code: codeInvalidEnv},
		{name: "CNI_NETNS is the host's, by name", env: map[string]string{"CNI_NETNS": sb.Host.Path()}, code: codeInvalidEnv},
		{name: "DEL of the host's bridge", command: "DEL", env: map[string]string{"CNI_NETNS": sb.Host.Path(), "CNI_IFNAME": "cni0"}, code: codeInvalidEnv},
		{name: "ifname over 15 chars", env: map[string]string{"CNI_IFNAME": "eth0123456789abc"}, code: codeInvalidEnv},
		{name: "ifname with a slash", env: map[string]string{"CNI_IFNAME": "eth/0"}, code: codeInvalidEnv},
		{name: "CNI_COMMAND missing", env: map[string]string{"CNI_COMMAND": "-"}, code: codeInvalidEnv},
		{name: "CNI_COMMAND unknown", env: map[string]string{"CNI_COMMAND": "FROB"}, code: codeInvalidEnv},
		{name: "CNI_CONTAINERID missing", env: map[string]string{"CNI_CONTAINERID": "-"}, code: codeInvalidEnv},
		{name: "CNI_CONTAINERID with bad characters", env: map[string]string{"CNI_CONTAINERID": "bad/id"}, code: codeInvalidEnv},
		{name: "CNI_PATH missing", env: map[string]string{"CNI_PATH": "-"}, code: codeInvalidEnv},
		{name: "CNI_ARGS malformed", env: map[string]string{"CNI_ARGS": "garbage"}, code: codeInvalidEnv},
		{name: "CNI_ARGS unknown key", env: map[string]string{"CNI_ARGS": "FROB=1"}, code: codeInvalidEnv},
		{name: "DEL malformed JSON", command: "DEL", stdin: `{"cniVersion":"1.1.0","name":"podnet-br",`, code: codeDecoding},
		{name: "DEL unknown cniVersion", command: "DEL", conf: set("cniVersion", "9.9.9"), code: codeIncompatible},
		{name: "CHECK without prevResult", command: "CHECK", code: codeInvalidConf},
		{name: "GC malformed JSON", command: "GC", stdin: `{"cniVersion":"1.1.0","name":"podnet-br",`, code: codeDecoding},
		{name: "STATUS bad CIDR", command: "STATUS", conf: subnet("10.88.0.0/33"), code: codeInvalidConf},
		{name: "host-local bad CIDR", plugin: "host-local", conf: subnet("10.88.0.0/40"), code: codeInvalidConf},
		{name: "host-local range outside subnet", plugin: "host-local", conf: rangeOf(map[string]any{"subnet": "10.88.0.0/16", "rangeEnd": "10.89.0.1"}), code: codeInvalidConf},
		{name: "host-local malformed JSON", plugin: "host-local", stdin: `{"cniVersion":`, code: codeDecoding},
		{name: "host-local unknown cniVersion", plugin: "host-local", conf: set("cniVersion", "0.0.7"), code: codeIncompatible},
		{name: "loopback malformed JSON", plugin: "loopback", stdin: `[`, code: codeDecoding},
		{name: "loopback CNI_NETNS nonexistent", plugin: "loopback", env: map[string]string{"CNI_NETNS": "/var/run/netns/podnet-no-such-ns", "CNI_IFNAME": "lo"}, code: codeUnknownCont},
		{name: "loopback CNI_NETNS not a netns", plugin: "loopback", env: map[string]string{"CNI_NETNS": notNS, "CNI_IFNAME": "lo"}, code: codeInvalidEnv},
	}
	if sandbox.Supports(bin, "ptp") == nil {
		cases = append(cases,
			badCase{name: "ptp without IPAM", plugin: "ptp", conf: del("ipam"), code: codeInvalidConf},
			badCase{name: "ptp bad CIDR", plugin: "ptp", conf: subnet("10.88.0.0/99"), code: codeInvalidConf},
		)
	} else {
		t.Error("ptp not registered in cmd/podnet-cni yet: its bad-input cases did not run")
	}
	if sandbox.Supports(bin, "static") == nil {
		cases = append(cases,
			badCase{name: "static bad address", plugin: "static",
				conf: setIPAM("addresses", []any{map[string]any{"address": "10.90.0.300/24"}}), code: codeInvalidConf},
			badCase{name: "static address without prefix", plugin: "static",
				conf: setIPAM("addresses", []any{map[string]any{"address": "10.90.0.3"}}), code: codeInvalidConf},
		)
	} else {
		t.Error("static not registered in cmd/podnet-cni yet: its bad-input cases did not run")
	}

	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			victim := newPod(t, sb)
			defer victim.Remove()
			plugin := tc.plugin
			if plugin == "" {
				plugin = "bridge"
			}
			conf := validConf(plugin, dataDir)
			if tc.conf != nil {
				tc.conf(conf)
			}
			stdin := tc.stdin
			if stdin == "" {
				b, err := json.Marshal(conf)
				if err != nil {
					t.Fatal(err)
				}
				stdin = string(b)
			}
			command := tc.command
			if command == "" {
				command = "ADD"
			}
			env := map[string]string{
				"CNI_COMMAND":     command,
				"CNI_CONTAINERID": cniruntime.RandomID(),
				"CNI_NETNS":       victim.Path(),
				"CNI_IFNAME":      "eth0",
				"CNI_PATH":        bin,
			}
			if plugin == "loopback" {
				env["CNI_IFNAME"] = "lo"
			}
			for k, v := range tc.env {
				env[k] = v
			}
			var envList []string
			for k, v := range env {
				if v != "-" {
					envList = append(envList, k+"="+v)
				}
			}
			out, err := sandbox.Exec(ctx, sb.Host.NS, filepath.Join(bin, plugin), envList, []byte(stdin))
			if err != nil {
				t.Fatalf("exec %s: %v", plugin, err)
			}
			combined := string(out.Stdout) + string(out.Stderr)
			if strings.Contains(combined, "panic:") || strings.Contains(combined, "goroutine ") {
				t.Fatalf("Go panic:\n%s", combined)
			}
			if out.ExitCode == 0 {
				t.Errorf("exit code 0, want non-zero (stdout %q, stderr %q)", out.Stdout, out.Stderr)
			}
			e, ok := out.Error()
			if !ok {
				t.Fatalf("stdout is not a CNI error: %q (stderr %q)", out.Stdout, out.Stderr)
			}
			if e.Code != tc.code {
				t.Errorf("error code %d (%s: %s), want %d", e.Code, e.Msg, e.Details, tc.code)
			}
			if e.Msg == "" {
				t.Error("error has no msg")
			}
			// Nothing created: no interface in the victim pod, one veth (the
			// good pod's) in the host.
			if l, err := sandbox.Links(victim.NS.NS); err == nil && len(l) != 1 {
				t.Errorf("the failed call left links in the pod: %v", names(l))
			}
			// The good pod is intact.
			hostLinks, err := sandbox.Links(sb.Host.NS)
			if err != nil {
				t.Fatal(err)
			}
			if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) != 1 {
				t.Errorf("host veths after the bad call: %v, want only the good pod's", names(v))
			}
			verifyAdded(t, sb, goodPod, kindBridge, goodRes)
			if len(allocationsOf(t, dataDir, goodPod.ContainerID)) == 0 {
				t.Error("the good pod's address was released")
			}
			if allocs, _ := sandbox.Allocations(dataDir); countIPs(allocs) != 1 {
				t.Errorf("allocations after the bad call: %v, want only the good pod's", allocs)
			}
			if err := sb.Check(ctx, list, goodPod.RT(nil)); err != nil {
				t.Errorf("CHECK of the good pod: %s", cniruntime.Describe(err))
			}
		})
	}
}

// validConf is a valid single-plugin configuration, as a runtime sends
// it, for a plugin type of the bad-input cases.
func validConf(plugin, dataDir string) map[string]any {
	hl := map[string]any{
		"type":    "host-local",
		"ranges":  []any{[]any{map[string]any{"subnet": "10.88.0.0/16"}}},
		"dataDir": dataDir,
	}
	c := map[string]any{"cniVersion": "1.1.0", "name": "podnet-br"}
	switch plugin {
	case "bridge":
		c["type"] = "bridge"
		c["bridge"] = "cni0"
		c["isGateway"] = true
		c["ipam"] = hl
	case "ptp":
		c["type"] = "ptp"
		c["ipam"] = hl
	case "host-local":
		c["type"] = "host-local"
		c["ipam"] = hl
	case "static":
		c["type"] = "static"
		c["ipam"] = map[string]any{"type": "static"}
	case "loopback":
		c["type"] = "loopback"
	}
	return c
}

func countIPs(allocs []sandbox.Allocation) int {
	n := 0
	for _, a := range allocs {
		if a.IP != "" {
			n++
		}
	}
	return n
}
