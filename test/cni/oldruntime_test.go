package cni

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// TestRuntimeBeforeCNIVersions runs the agent's cluster conflist through
// libcni 1.1.2 — the libcni of containerd 1.6 and 1.7, which knows results
// up to 1.0.0 and ignores cniVersions (see ./oldruntime) — and checks it
// runs the network at cniVersion 1.0.0: ADD gives the pod its address,
// CHECK and DEL pass, nothing is left on the host.
func TestRuntimeBeforeCNIVersions(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	ctx := ctxFor(t)
	old := filepath.Join(t.TempDir(), "oldruntime")
	build := exec.CommandContext(ctx, sandbox.GoTool(), "build", "-o", old, ".")
	build.Dir = "oldruntime"
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build the libcni 1.1.2 runtime: %v\n%s", err, o)
	}

	sb := newSandbox(t, bin)
	b, err := cniconf.Cluster{Subnets: []string{"10.93.0.0/24"}, MTU: 1500, IPAMDir: sb.DataDir("ipam"),
		Chain: []string{"portmap", "bandwidth"}}.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(sb.Dir, cniconf.FileName)
	if err := os.WriteFile(conf, b, 0o644); err != nil {
		t.Fatal(err)
	}
	pod := newPod(t, sb)
	out, err := sandbox.Exec(ctx, sb.Host.NS, old, []string{
		"CNI_PATH=" + strings.Join(sb.Path, string(os.PathListSeparator)),
		"OLDRUNTIME_CONFLIST=" + conf,
		"OLDRUNTIME_NETNS=" + pod.Path(),
		"OLDRUNTIME_CONTAINERID=" + pod.ContainerID,
		"OLDRUNTIME_CACHEDIR=" + filepath.Join(sb.Dir, "oldcache"),
	}, nil)
	if err != nil || out.ExitCode != 0 {
		t.Fatalf("oldruntime: %v, exit %d\n%s", err, out.ExitCode, out.Stderr)
	}
	var r struct {
		CNIVersion      string
		Result          json.RawMessage
		Add, Check, Del string
	}
	if err := json.Unmarshal(out.Stdout, &r); err != nil {
		t.Fatalf("report: %v\n%s", err, out.Stdout)
	}
	if r.CNIVersion != cniconf.CompatVersion {
		t.Errorf("libcni 1.1.2 ran cniVersion %q, want %q", r.CNIVersion, cniconf.CompatVersion)
	}
	if r.Add != "" || r.Check != "" || r.Del != "" {
		t.Fatalf("ADD: %q\nCHECK: %q\nDEL: %q", r.Add, r.Check, r.Del)
	}
	var res current.Result
	if err := json.Unmarshal(r.Result, &res); err != nil || res.CNIVersion != cniconf.CompatVersion ||
		len(res.IPs) != 1 || !strings.HasPrefix(res.IPs[0].Address.IP.String(), "10.93.0.") {
		t.Errorf("ADD result (%v): %s", err, r.Result)
	}
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if veths := sandbox.LinksOfType(hostLinks, "veth"); len(veths) != 0 {
		t.Errorf("host veths after DEL: %v", names(veths))
	}
	verifyNoAllocations(t, sb.DataDir("ipam"), pod.ContainerID)
}
