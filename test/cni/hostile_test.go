package cni

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// hostileTimeout bounds every call of the adversarial tests: a plugin
// still running after it hangs (it is killed, and the case fails).
const hostileTimeout = 20 * time.Second

// Spec error codes the adversarial cases expect.
const (
	codeOK         = 0
	codeEnv        = types.ErrInvalidEnvironmentVariables // 4
	codeIO         = types.ErrIOFailure                   // 5
	codeConf       = types.ErrInvalidNetworkConfig        // 7
	codeInternal   = types.ErrInternal                    // 999
	hostileNetwork = "podnet-hostile"
)

// hostileNode is a node with one good pod on a bridge network: the state
// every hostile call must leave exactly as it was.
type hostileNode struct {
	sb      *sandbox.Sandbox
	bin     string
	dataDir string
	good    *sandbox.Pod
	goodRes *current.Result
	// files is every file of the IPAM data dir, with its content, after
	// the good pod's ADD.
	files map[string]string
}

func newHostileNode(t *testing.T, dataDir func(sb *sandbox.Sandbox) string) *hostileNode {
	t.Helper()
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "macvlan", "tuning")
	n := &hostileNode{sb: newSandbox(t, bin), bin: bin}
	n.dataDir = dataDir(n.sb)
	n.good = newPod(t, n.sb)
	r, err := n.sb.Add(ctxFor(t), n.list(t), n.good.RT(nil))
	if err != nil {
		t.Fatalf("ADD of the good pod: %s", cniruntime.Describe(err))
	}
	n.goodRes = toCurrent(t, r)
	n.files = readTree(t, n.dataDir)
	return n
}

func (n *hostileNode) list(t *testing.T) *libcni.NetworkConfigList {
	return mustList(t, sandbox.ConfList{Name: hostileNetwork, CNIVersion: "1.1.0", Plugins: []sandbox.Conf{n.bridgeConf()}})
}

// bridgeConf is the network's valid bridge configuration.
func (n *hostileNode) bridgeConf() sandbox.Conf {
	c := sandbox.Bridge("cni0", sandbox.HostLocal("10.88.0.0/24", n.dataDir))
	c["cniVersion"], c["name"] = "1.1.0", hostileNetwork
	return c
}

// call runs a plugin of podnet's bin dir (see callPlugin).
func (n *hostileNode) call(t *testing.T, plugin string, env map[string]string, conf sandbox.Conf, code uint) *sandbox.Outcome {
	t.Helper()
	return callPlugin(t, n.sb, n.bin, plugin, env, conf, code)
}

// callPlugin runs a plugin binary of binDir once in the sandbox's host, as
// a runtime does, and fails the test on a Go panic, on a hang
// (hostileTimeout) or on an answer other than code (codeOK: success).
func callPlugin(t *testing.T, sb *sandbox.Sandbox, binDir, plugin string, env map[string]string, conf sandbox.Conf, code uint) *sandbox.Outcome {
	t.Helper()
	stdin, err := json.Marshal(conf)
	if err != nil {
		t.Fatal(err)
	}
	var envList []string
	for k, v := range env {
		envList = append(envList, k+"="+v)
	}
	ctx, cancel := context.WithTimeout(context.Background(), hostileTimeout)
	defer cancel()
	out, err := sandbox.Exec(ctx, sb.Host.NS, filepath.Join(binDir, plugin), envList, stdin)
	if err != nil {
		t.Fatalf("exec %s: %v", plugin, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("%s %s hung: killed after %v", plugin, env["CNI_COMMAND"], hostileTimeout)
	}
	combined := string(out.Stdout) + string(out.Stderr)
	if strings.Contains(combined, "panic:") || strings.Contains(combined, "goroutine ") {
		t.Fatalf("Go panic:\n%s", combined)
	}
	if code == codeOK {
		if out.ExitCode != 0 {
			t.Fatalf("%s %s failed: exit %d: %s %s", plugin, env["CNI_COMMAND"], out.ExitCode, out.Stdout, out.Stderr)
		}
		return out
	}
	e, ok := out.Error()
	if out.ExitCode == 0 || !ok {
		t.Fatalf("%s %s: exit %d, stdout %q, want error %d", plugin, env["CNI_COMMAND"], out.ExitCode, out.Stdout, code)
	}
	if e.Code != code {
		t.Errorf("%s %s: error %d (%s; %s), want %d", plugin, env["CNI_COMMAND"], e.Code, e.Msg, e.Details, code)
	}
	t.Logf("%s %s: code %d: %s; %s", plugin, env["CNI_COMMAND"], e.Code, e.Msg, e.Details)
	return out
}

// env is the environment of a call for a new pod.
func (n *hostileNode) env(command string, pod *sandbox.Pod) map[string]string {
	return map[string]string{
		"CNI_COMMAND": command, "CNI_CONTAINERID": pod.ContainerID, "CNI_NETNS": pod.Path(),
		"CNI_IFNAME": pod.IfName, "CNI_PATH": n.bin,
	}
}

// intact fails unless the node is as the good pod's ADD left it: the
// same IPAM files with the same content, one host veth, and the good pod
// passing CHECK.
func (n *hostileNode) intact(t *testing.T) {
	t.Helper()
	if got := readTree(t, n.dataDir); !maps.Equal(got, n.files) {
		t.Errorf("IPAM files changed:\n got %v\nwant %v", got, n.files)
	}
	hostLinks, err := sandbox.Links(n.sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) != 1 {
		t.Errorf("host veths: %v, want only the good pod's", names(v))
	}
	verifyAdded(t, n.sb, n.good, kindBridge, n.goodRes)
	if err := n.sb.Check(ctxFor(t), n.list(t), n.good.RT(nil)); err != nil {
		t.Errorf("CHECK of the good pod: %s", cniruntime.Describe(err))
	}
}

// readTree maps every file under dir to its content, but host-local's
// bookkeeping: the lock, and where the round-robin resumes, which any ADD
// that tried an address moves, as the reference's does.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || d.Name() == "lock" || strings.HasPrefix(d.Name(), "last_reserved_ip.") {
			return err
		}
		b, err := os.ReadFile(p)
		out[strings.TrimPrefix(p, dir)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestHostileInput calls the plugins with inputs that once lost state, hung
// or answered 999 where the spec has a code: each answers its code at
// once, without a panic, and leaves the good pod's attachment intact.
func TestHostileInput(t *testing.T) {
	n := newHostileNode(t, func(sb *sandbox.Sandbox) string { return sb.DataDir("ipam") })
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	longID := strings.Repeat("c", 300)
	goodResult, err := json.Marshal(n.goodRes)
	if err != nil {
		t.Fatal(err)
	}
	badIndex := map[string]any{}
	if err := json.Unmarshal(goodResult, &badIndex); err != nil {
		t.Fatal(err)
	}
	for _, ip := range badIndex["ips"].([]any) {
		ip.(map[string]any)["interface"] = 9
	}
	valid := []types.GCAttachment{n.good.Attachment()}

	for _, tc := range []struct {
		name    string
		plugin  string // default bridge
		command string // default ADD
		// good: the call is about the good pod itself, not a new one.
		good bool
		// added: the new pod is added (through libcni) before the call,
		// which must remove its host side and addresses.
		added bool
		env   map[string]string
		conf  func(c sandbox.Conf)
		code  uint
	}{
		{name: "GC without cni.dev/valid-attachments", command: "GC", code: codeConf},
		{name: "host-local GC without cni.dev/valid-attachments", plugin: "host-local", command: "GC", code: codeConf},
		{name: "tuning GC without cni.dev/valid-attachments", plugin: "tuning", command: "GC", code: codeConf},
		{name: "GC with only the legacy cni.dev/attachments", command: "GC", code: codeOK,
			conf: func(c sandbox.Conf) { c["cni.dev/attachments"] = valid }},
		{name: "ADD with CNI_NETNS a FIFO", env: map[string]string{"CNI_NETNS": fifo}, code: codeEnv},
		{name: "DEL with CNI_NETNS a FIFO", command: "DEL", env: map[string]string{"CNI_NETNS": fifo}, code: codeEnv},
		{name: "DEL of an added pod with CNI_NETNS a FIFO", command: "DEL", added: true, env: map[string]string{"CNI_NETNS": fifo}, code: codeEnv},
		{name: "CHECK with CNI_NETNS a FIFO", command: "CHECK", good: true, env: map[string]string{"CNI_NETNS": fifo}, code: codeEnv,
			conf: func(c sandbox.Conf) { c["prevResult"] = json.RawMessage(goodResult) }},
		{name: "ADD with a container ID too long to record", env: map[string]string{"CNI_CONTAINERID": longID}, code: codeEnv},
		{name: "DEL with a container ID too long to record", command: "DEL", env: map[string]string{"CNI_CONTAINERID": longID}, code: codeOK},
		{name: "host-local ADD with a container ID too long to record", plugin: "host-local", env: map[string]string{"CNI_CONTAINERID": longID}, code: codeEnv},
		{name: "host-local DEL with a container ID too long to record", plugin: "host-local", command: "DEL", env: map[string]string{"CNI_CONTAINERID": longID}, code: codeOK},
		{name: "IP= the gateway", env: map[string]string{"CNI_ARGS": "IP=10.88.0.1"}, code: codeConf},
		{name: "IP= outside the range", env: map[string]string{"CNI_ARGS": "IP=10.99.0.9"}, code: codeConf},
		{name: "bridge name with a slash", code: codeConf, conf: func(c sandbox.Conf) { c["bridge"] = "br/0" }},
		{name: "bridge name with a colon", code: codeConf, conf: func(c sandbox.Conf) { c["bridge"] = "br:0" }},
		{name: "MAC= multicast", env: map[string]string{"CNI_ARGS": "MAC=01:00:5e:00:00:01"}, code: codeConf},
		{name: "MAC= zero", env: map[string]string{"CNI_ARGS": "MAC=00:00:00:00:00:00"}, code: codeConf},
		{name: "macvlan master lo", plugin: "macvlan", code: codeConf,
			conf: func(c sandbox.Conf) { c["type"], c["master"] = "macvlan", "lo" }},
		{name: "CHECK of a result whose interface index is out of range", command: "CHECK", good: true, code: codeConf,
			conf: func(c sandbox.Conf) { c["prevResult"] = badIndex }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			plugin, command := tc.plugin, tc.command
			if plugin == "" {
				plugin = "bridge"
			}
			if command == "" {
				command = "ADD"
			}
			pod := n.good
			if !tc.good {
				pod = newPod(t, n.sb)
				defer pod.Remove()
			}
			if tc.added {
				if _, err := n.sb.Add(ctxFor(t), n.list(t), pod.RT(nil)); err != nil {
					t.Fatalf("ADD: %s", cniruntime.Describe(err))
				}
			}
			env := n.env(command, pod)
			maps.Copy(env, tc.env)
			conf := n.bridgeConf()
			if plugin == "host-local" || plugin == "tuning" {
				conf["type"] = plugin
			}
			if plugin == "tuning" {
				conf["dataDir"] = n.sb.DataDir("tuning")
			}
			if tc.conf != nil {
				tc.conf(conf)
			}
			n.call(t, plugin, env, conf, tc.code)
			if !tc.good && !tc.added {
				if l, err := sandbox.Links(pod.NS.NS); err == nil && len(l) != 1 {
					t.Errorf("the call left links in the new pod: %v", names(l))
				}
			}
			if !tc.good {
				verifyNoRules(t, n.sb, pod.ContainerID)
				verifyNoAllocations(t, n.dataDir, pod.ContainerID)
			}
			n.intact(t)
		})
	}
}

// TestHostileExhaustedRange: a range with no address left is what the
// reference host-local answers, 999 "no IP addresses available" (the spec
// has no ADD code for it; STATUS reports it as 50), and the failed ADD
// takes nothing from the pod holding the last address.
func TestHostileExhaustedRange(t *testing.T) {
	n := newHostileNode(t, func(sb *sandbox.Sandbox) string { return sb.DataDir("ipam") })
	bins := map[string]string{"podnet": n.bin}
	if sandbox.HaveReference("host-local") == nil {
		bins["reference"] = sandbox.ReferenceDir
	} else {
		t.Log("reference host-local not installed: podnet's answer alone is checked")
	}
	for who, dir := range bins {
		t.Run(who, func(t *testing.T) {
			dataDir := n.sb.DataDir("exhausted-" + who)
			conf := sandbox.Conf{"cniVersion": "1.0.0", "name": "podnet-tiny", "type": "host-local",
				"ipam": sandbox.Conf{"type": "host-local", "dataDir": dataDir,
					"ranges": []any{[]any{sandbox.Conf{"subnet": "10.89.0.0/30"}}}}}
			env := func(pod *sandbox.Pod) map[string]string {
				e := n.env("ADD", pod)
				e["CNI_PATH"] = dir
				return e
			}
			call := func(env map[string]string, code uint) *sandbox.Outcome {
				return callPlugin(t, n.sb, dir, "host-local", env, conf, code)
			}
			call(env(newPod(t, n.sb)), codeOK) // takes 10.89.0.2, the only address
			before := readTree(t, dataDir)
			out := call(env(newPod(t, n.sb)), codeInternal)
			if e, _ := out.Error(); !strings.Contains(e.Msg+e.Details, "no IP addresses available") {
				t.Errorf("exhausted: %q %q, want the reference's \"no IP addresses available\"", e.Msg, e.Details)
			}
			if got := readTree(t, dataDir); !maps.Equal(got, before) {
				t.Errorf("the failed ADD changed the store:\n got %v\nwant %v", got, before)
			}
		})
	}
	n.intact(t)
}

// TestHostileCorruptIndex: DEL of an attachment whose IPAM index is
// corrupt still releases its address (found by a scan), and the good
// pod's allocation stays.
func TestHostileCorruptIndex(t *testing.T) {
	n := newHostileNode(t, func(sb *sandbox.Sandbox) string { return sb.DataDir("ipam") })
	ctx := ctxFor(t)
	for _, corrupt := range []struct{ name, content string }{
		{"garbage", "\x00\xff not an address"},
		{"empty", ""},
		{"another address", "10.88.0.200\n"},
	} {
		t.Run(corrupt.name, func(t *testing.T) {
			victim := newPod(t, n.sb)
			defer victim.Remove()
			if _, err := n.sb.Add(ctx, n.list(t), victim.RT(nil)); err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			index := filepath.Join(n.dataDir, hostileNetwork, "attachments", victim.ContainerID+"@"+victim.IfName)
			if err := os.WriteFile(index, []byte(corrupt.content), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := n.sb.Del(ctx, n.list(t), victim.RT(nil)); err != nil {
				t.Fatalf("DEL: %s", cniruntime.Describe(err))
			}
			verifyNoAllocations(t, n.dataDir, victim.ContainerID)
			n.intact(t)
		})
	}
}

// TestHostileFullDisk: with the IPAM data dir on a full file system (a
// tiny tmpfs, unmounted when the test ends), ADD fails with code 5 and
// leaves nothing, and the pod added before the disk filled keeps its
// address; DEL of that pod then still frees it.
func TestHostileFullDisk(t *testing.T) {
	n := newHostileNode(t, func(sb *sandbox.Sandbox) string {
		dir := sb.DataDir("tmpfs")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "size=64k"); err != nil {
			t.Fatalf("mount a tmpfs on %s: %v", dir, err)
		}
		t.Cleanup(func() {
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount %s: %v", dir, err)
			}
		})
		return dir
	})
	filler, err := os.Create(filepath.Join(n.dataDir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	chunk := make([]byte, 4096)
	for err == nil {
		_, err = filler.Write(chunk)
	}
	filler.Close()
	if !errors.Is(err, unix.ENOSPC) {
		t.Fatalf("filling the tmpfs: %v, want ENOSPC", err)
	}
	n.files = readTree(t, n.dataDir)

	victim := newPod(t, n.sb)
	defer victim.Remove()
	n.call(t, "bridge", n.env("ADD", victim), n.bridgeConf(), codeIO)
	if l, err := sandbox.Links(victim.NS.NS); err == nil && len(l) != 1 {
		t.Errorf("the failed ADD left links in the pod: %v", names(l))
	}
	verifyNoAllocations(t, n.dataDir, victim.ContainerID)
	n.intact(t)

	if err := n.sb.Del(ctxFor(t), n.list(t), n.good.RT(nil)); err != nil {
		t.Fatalf("DEL of the good pod on a full disk: %s", cniruntime.Describe(err))
	}
	verifyNoAllocations(t, n.dataDir, n.good.ContainerID)
}

// TestHostileTuningFailedReAdd: a second tuning ADD for the same
// attachment that fails after changing a sysctl leaves what the first
// ADD set, and its saved originals, so DEL still restores the pod.
func TestHostileTuningFailedReAdd(t *testing.T) {
	n := newHostileNode(t, func(sb *sandbox.Sandbox) string { return sb.DataDir("ipam") })
	tuningDir := n.sb.DataDir("tuning")
	tuning := func(mtu int, somaxconn string) sandbox.Conf {
		c := sandbox.Tuning(sandbox.Conf{"dataDir": tuningDir, "mtu": mtu,
			"sysctl": map[string]any{"net.core.somaxconn": somaxconn}})
		c["cniVersion"], c["name"], c["prevResult"] = "1.1.0", hostileNetwork, n.goodRes
		return c
	}
	orig := observeIf(t, n.good)
	env := n.env("ADD", n.good)
	n.call(t, "tuning", env, tuning(1400, "500"), codeOK)
	first := observeIf(t, n.good)
	saved := readTree(t, tuningDir)
	if first.MTU != 1400 || first.Somaxconn != "500" || len(saved) != 1 {
		t.Fatalf("after the first ADD: %+v, saved %v", first, saved)
	}
	// somaxconn is written, then the kernel refuses an MTU below 68.
	n.call(t, "tuning", env, tuning(50, "600"), codeInternal)
	if got := observeIf(t, n.good); got != first {
		t.Errorf("after the failed ADD: %+v, want the first ADD's %+v", got, first)
	}
	if got := readTree(t, tuningDir); !maps.Equal(got, saved) {
		t.Errorf("saved values after the failed ADD: %v, want %v", got, saved)
	}
	env["CNI_COMMAND"] = "DEL"
	n.call(t, "tuning", env, tuning(1400, "500"), codeOK)
	if got := observeIf(t, n.good); got != orig {
		t.Errorf("after DEL: %+v, want the original %+v", got, orig)
	}
	assertNoState(t, tuningDir)
}
