package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(s string) string {
		p := filepath.Join(dir, "agent.yaml")
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct {
		name, file string
		args       []string
		want       map[string]string
		wantErr    string
	}{
		{
			name: "file sets flags",
			file: "node-name: n7\nbackend: vxlan\netcd-endpoints: [http://a:2379, http://b:2379]\nlease-ttl: 45s\negress-masquerade: false\n",
			want: map[string]string{"node-name": "n7", "backend": "vxlan", "etcd-endpoints": "[http://a:2379,http://b:2379]", "lease-ttl": "45s", "egress-masquerade": "false"},
		},
		{
			name: "command line wins",
			file: "backend: vxlan\n",
			args: []string{"--backend", "host-gw"},
			want: map[string]string{"backend": "host-gw"},
		},
		{name: "unknown key", file: "bakend: vxlan\n", wantErr: `unknown key "bakend"`},
		{name: "bad value", file: "lease-ttl: soon\n", wantErr: "lease-ttl"},
		{name: "not YAML", file: "backend: [\n", wantErr: "agent.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := command()
			p := write(tc.file)
			if err := cmd.ParseFlags(append([]string{"--config", p}, tc.args...)); err != nil {
				t.Fatal(err)
			}
			err := applyFile(cmd.Flags(), p)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("applyFile = %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tc.want {
				if got := cmd.Flags().Lookup(k).Value.String(); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

// TestRefusedBeforeStart runs the agent with plaintext datastore URLs on
// the network, a malformed join token, the service proxy without the
// Kubernetes datastore or a malformed node-port network: it refuses before
// it does anything.
func TestRefusedBeforeStart(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		wantErr string
	}{
		{[]string{"--datastore", "etcd", "--etcd-endpoints", "http://192.0.2.1:2379"}, "http://192.0.2.1:2379 is plaintext"},
		{[]string{"--datastore", "embedded", "--etcd-client-url", "http://192.0.2.1:2379"}, "http://192.0.2.1:2379 is plaintext"},
		{[]string{"--datastore", "etcd", "--etcd-endpoints", "https://192.0.2.1:2379", "--join-token", "not-a-token"}, "not a podnet join token"},
		{[]string{"--service-proxy"}, "--service-proxy needs --datastore=kubernetes"},
		{[]string{"--network-policy"}, "--network-policy needs --datastore=kubernetes"},
		{[]string{"--datastore", "kubernetes", "--service-proxy", "--nodeport-addresses", "10.0.0.0/33"}, "--nodeport-addresses"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := command()
			cmd.SetArgs(append([]string{"--node-name", "n1", "--data-dir", t.TempDir()}, tc.args...))
			if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("podnet-agent %v: %v, want an error about %q", tc.args, err, tc.wantErr)
			}
		})
	}
}
