package cniruntime_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
)

// recorder is a plugin that keeps what it receives on stdin in
// $D/<type>.<command>.json and answers ADD with an empty result of the
// configuration's version.
const recorder = `#!/bin/sh
f=%q/$(basename "$0").$CNI_COMMAND.json
cat >"$f"
v=$(sed -n 's/^{"cniVersion":"\([^"]*\)".*/\1/p' "$f")
case "$CNI_COMMAND" in
ADD) printf '{"cniVersion":"%%s"}' "$v" ;;
VERSION) printf '{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}' ;;
esac
`

// TestRuntimeConfig runs the cluster conflist through the runtime (libcni)
// with recording plugins and checks that each plugin receives, on ADD,
// CHECK and DEL, the runtimeConfig of exactly the capabilities it
// declares: the agent's single plugin gets both portMappings and
// bandwidth; with portmap and bandwidth chained, each gets its own and
// podnet none. A capability nobody declares reaches nobody.
func TestRuntimeConfig(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("runs the plugins through a network namespace switch: needs root")
	}
	portMappings := []any{map[string]any{"hostPort": float64(8080), "containerPort": float64(80), "protocol": "tcp"}}
	bandwidth := map[string]any{"ingressRate": float64(8000000), "ingressBurst": float64(4294967295)}
	caps := map[string]any{"portMappings": portMappings, "bandwidth": bandwidth, "mac": "c2:11:22:33:44:55"}
	for _, tc := range []struct {
		name  string
		chain []string
		want  map[string]map[string]any // plugin type: its runtimeConfig (nil: none)
	}{
		{"agent default", nil, map[string]map[string]any{
			"podnet": {"portMappings": portMappings, "bandwidth": bandwidth},
		}},
		{"chained", []string{"portmap", "bandwidth"}, map[string]map[string]any{
			"podnet":    nil,
			"portmap":   {"portMappings": portMappings},
			"bandwidth": {"bandwidth": bandwidth},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			bin := filepath.Join(dir, "bin")
			if err := os.Mkdir(bin, 0o755); err != nil {
				t.Fatal(err)
			}
			for typ := range tc.want {
				if err := os.WriteFile(filepath.Join(bin, typ), []byte(fmt.Sprintf(recorder, dir)), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			data, err := cniconf.Cluster{Subnets: []string{"10.244.1.0/24"}, MTU: 1500, IPAMDir: dir, Chain: tc.chain}.Conflist()
			if err != nil {
				t.Fatal(err)
			}
			list, err := libcni.ConfListFromBytes(data)
			if err != nil {
				t.Fatal(err)
			}
			// The recorders touch no network: the caller's namespace does.
			ns, err := netns.Current()
			if err != nil {
				t.Fatal(err)
			}
			defer ns.Close()
			rt := cniruntime.NewRuntime(ns, []string{bin}, filepath.Join(dir, "cache"), nil)
			conf := &libcni.RuntimeConf{ContainerID: cniruntime.RandomID(), NetNS: "/var/run/netns/none", IfName: "eth0", CapabilityArgs: caps}
			ctx := context.Background()
			if _, err := rt.Add(ctx, list, conf); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			if err := rt.Check(ctx, list, conf); err != nil {
				t.Fatalf("CHECK: %v", err)
			}
			if err := rt.Del(ctx, list, conf); err != nil {
				t.Fatalf("DEL: %v", err)
			}
			for typ, want := range tc.want {
				for _, cmd := range []string{"ADD", "CHECK", "DEL"} {
					b, err := os.ReadFile(filepath.Join(dir, typ+"."+cmd+".json"))
					if err != nil {
						t.Fatalf("%s %s: %v", typ, cmd, err)
					}
					var got struct {
						RuntimeConfig map[string]any `json:"runtimeConfig"`
					}
					if err := json.Unmarshal(b, &got); err != nil {
						t.Fatalf("%s %s stdin: %v", typ, cmd, err)
					}
					if !reflect.DeepEqual(got.RuntimeConfig, want) {
						t.Errorf("%s %s runtimeConfig = %v, want %v", typ, cmd, got.RuntimeConfig, want)
					}
				}
			}
		})
	}
}
