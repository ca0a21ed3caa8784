package sandbox

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
)

func TestMain(m *testing.M) {
	code := m.Run()
	CleanupShared()
	os.Exit(code)
}

func TestConfList(t *testing.T) {
	c := ConfList{Name: "net", CNIVersion: "1.0.0", Plugins: []Conf{
		Bridge("cni0", HostLocal("10.1.0.0/24", "/tmp/x")),
		Loopback(),
	}}
	l, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	if l.Name != "net" || l.CNIVersion != "1.0.0" || len(l.Plugins) != 2 || l.Plugins[0].Network.Type != "bridge" || l.Plugins[0].Network.IPAM.Type != "host-local" {
		t.Errorf("parsed list: %+v", l)
	}
	var one map[string]any
	if err := json.Unmarshal(c.PluginConf(0), &one); err != nil {
		t.Fatal(err)
	}
	if one["name"] != "net" || one["cniVersion"] != "1.0.0" || one["type"] != "bridge" {
		t.Errorf("plugin conf: %v", one)
	}
}

func TestSandboxLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	bin, err := SharedPodnetCNI(ctx)
	if err != nil {
		t.Fatal(err)
	}
	links, err := cnibin.Links(bin)
	if err != nil {
		t.Fatal(err)
	}
	sb, err := New(Options{Plugins: links})
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			sb.Close()
		}
	}()
	if err := Supports(sb.Path[0], "loopback"); err != nil {
		t.Fatal(err)
	}
	if err := Supports(sb.Path[0], "no-such-plugin"); err == nil {
		t.Error("Supports accepted a type that is not there")
	}
	pod, err := sb.NewPod()
	if err != nil {
		t.Fatal(err)
	}
	list, err := ConfList{Name: "lo", CNIVersion: "1.1.0", Plugins: []Conf{Loopback()}}.List()
	if err != nil {
		t.Fatal(err)
	}
	rt := pod.RT(nil)
	rt.IfName = "lo"
	if _, err := sb.Add(ctx, list, rt); err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	if _, err := os.Stat(filepath.Join(sb.Dir, "cache", "results")); err != nil {
		t.Errorf("libcni cache is not in the sandbox: %v", err)
	}
	if err := sb.Check(ctx, list, rt); err != nil {
		t.Errorf("CHECK: %s", cniruntime.Describe(err))
	}
	if err := sb.Del(ctx, list, rt); err != nil {
		t.Errorf("DEL: %s", cniruntime.Describe(err))
	}

	// A plugin run directly with a bad config answers with a spec error.
	out, err := Exec(ctx, sb.Host.NS, filepath.Join(sb.Path[0], "loopback"),
		Env("ADD", "c1", pod.Path(), "lo", sb.Path[0]), []byte(`{"cniVersion":"1.1.0","name":"x","type":"loopback"`))
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := out.Error(); !ok || e.Code != 6 || out.ExitCode == 0 {
		t.Errorf("bad config: exit %d, stdout %q", out.ExitCode, out.Stdout)
	}

	paths := []string{sb.Host.Path(), pod.Path(), sb.Dir}
	if err := sb.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	for _, p := range paths {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("%s remains after Close", p)
		}
	}
}
