package cni

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// ifState is what tuning can change, as the pod's namespace shows it.
type ifState struct {
	MAC                  string
	MTU, TxQLen          int
	Promisc, Allmulti    bool
	ArpNotify, Somaxconn string
}

func observeIf(t *testing.T, pod *sandbox.Pod) ifState {
	t.Helper()
	h, err := netlink.NewHandleAt(pod.NS.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(pod.IfName)
	if err != nil {
		t.Fatal(err)
	}
	a := l.Attrs()
	s := ifState{MAC: a.HardwareAddr.String(), MTU: a.MTU, TxQLen: a.TxQLen, Promisc: a.Promisc != 0, Allmulti: a.RawFlags&unix.IFF_ALLMULTI != 0}
	err = pod.NS.Do(func() error {
		b, err := os.ReadFile("/proc/sys/net/ipv4/conf/" + pod.IfName + "/arp_notify")
		s.ArpNotify = strings.TrimSpace(string(b))
		if err != nil {
			return err
		}
		b, err = os.ReadFile("/proc/sys/net/core/somaxconn")
		s.Somaxconn = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestTuning sets each field through the chain bridge+host-local, tuning
// (libcni, every spec version), checks it in the pod and with CHECK, then
// runs tuning's DEL alone and checks the pod's original values are back
// and the saved state is gone.
func TestTuning(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "tuning")
	cases := []struct {
		name   string
		fields sandbox.Conf
		caps   map[string]any
		want   func(orig ifState) ifState
	}{
		{"sysctl", sandbox.Conf{"sysctl": map[string]any{"net.ipv4.conf.IFNAME.arp_notify": "1", "net.core.somaxconn": "500"}}, nil,
			func(o ifState) ifState { o.ArpNotify, o.Somaxconn = "1", "500"; return o }},
		{"mac", sandbox.Conf{"mac": "c2:b0:57:49:47:f1"}, nil,
			func(o ifState) ifState { o.MAC = "c2:b0:57:49:47:f1"; return o }},
		{"mac capability", nil, map[string]any{"mac": "c2:b0:57:49:47:f2"},
			func(o ifState) ifState { o.MAC = "c2:b0:57:49:47:f2"; return o }},
		{"mtu", sandbox.Conf{"mtu": 1400}, nil, func(o ifState) ifState { o.MTU = 1400; return o }},
		{"promisc", sandbox.Conf{"promisc": true}, nil, func(o ifState) ifState { o.Promisc = true; return o }},
		{"allmulti", sandbox.Conf{"allmulti": true}, nil, func(o ifState) ifState { o.Allmulti = true; return o }},
		{"txQLen", sandbox.Conf{"txQLen": 321}, nil, func(o ifState) ifState { o.TxQLen = 321; return o }},
	}
	for _, tc := range cases {
		for _, v := range listVersions {
			t.Run(tc.name+"/"+v, func(t *testing.T) {
				t.Parallel()
				ctx := ctxFor(t)
				sb := newSandbox(t, bin)
				dataDir := sb.DataDir("tuning")
				fields := sandbox.Conf{"dataDir": dataDir}
				for k, x := range tc.fields {
					fields[k] = x
				}
				bridge := sandbox.ConfList{Name: "podnet-tun", CNIVersion: v, Plugins: []sandbox.Conf{
					sandbox.Bridge("cni0", sandbox.HostLocal("10.92.0.0/24", sb.DataDir("ipam")))}}
				chain := bridge
				chain.Plugins = append(append([]sandbox.Conf{}, bridge.Plugins...), sandbox.Tuning(fields))
				pod := newPod(t, sb)
				rt := pod.RT(tc.caps)

				// The whole chain: ADD, the pod has the values, CHECK, DEL.
				r, err := sb.Add(ctx, mustList(t, chain), rt)
				if err != nil {
					t.Fatalf("ADD: %s", cniruntime.Describe(err))
				}
				got := observeIf(t, pod)
				for _, i := range toCurrent(t, r).Interfaces {
					if i.Name == pod.IfName && i.Sandbox != "" && !sameMAC(i.Mac, got.MAC) {
						t.Errorf("result MAC %s, interface has %s", i.Mac, got.MAC)
					}
				}
				if atLeast(v, "0.4.0") {
					if err := sb.Check(ctx, mustList(t, chain), rt); err != nil {
						t.Errorf("CHECK: %s", cniruntime.Describe(err))
					}
				}
				if err := sb.Del(ctx, mustList(t, chain), rt); err != nil {
					t.Fatalf("DEL: %s", cniruntime.Describe(err))
				}
				assertNoState(t, dataDir)

				// Restore: bridge through libcni, then tuning alone as the
				// runtime runs it, to see the values before and after.
				br, err := sb.Add(ctx, mustList(t, bridge), rt)
				if err != nil {
					t.Fatalf("bridge ADD: %s", cniruntime.Describe(err))
				}
				orig := observeIf(t, pod)
				conf := map[string]any{"cniVersion": v, "name": "podnet-tun", "prevResult": json.RawMessage(resultJSON(t, br))}
				for k, x := range sandbox.Tuning(fields) {
					if k != "capabilities" {
						conf[k] = x
					}
				}
				if tc.caps != nil {
					conf["runtimeConfig"] = tc.caps
				}
				stdin, _ := json.Marshal(conf)
				tuning := filepath.Join(bin, "tuning")
				run := func(cmd, netnsPath string) {
					t.Helper()
					o, err := sandbox.Exec(ctx, sb.Host.NS, tuning, sandbox.Env(cmd, pod.ContainerID, netnsPath, pod.IfName, bin), stdin)
					if err != nil || o.ExitCode != 0 {
						t.Fatalf("tuning %s: %v exit %d: %s %s", cmd, err, o.ExitCode, o.Stdout, o.Stderr)
					}
				}
				run("ADD", pod.Path())
				if got, want := observeIf(t, pod), tc.want(orig); got != want {
					t.Errorf("after ADD: %+v, want %+v", got, want)
				}
				run("DEL", pod.Path())
				if got := observeIf(t, pod); got != orig {
					t.Errorf("after DEL: %+v, want the original %+v", got, orig)
				}
				assertNoState(t, dataDir)
				// DEL without a netns forgets the saved values.
				run("ADD", pod.Path())
				run("DEL", "")
				assertNoState(t, dataDir)
				if err := sb.Del(ctx, mustList(t, bridge), rt); err != nil {
					t.Fatalf("bridge DEL: %s", cniruntime.Describe(err))
				}
			})
		}
	}
}

func assertNoState(t *testing.T, dataDir string) {
	t.Helper()
	var files []string
	_ = filepath.Walk(dataDir, func(p string, info os.FileInfo, err error) error {
		if err == nil && !info.IsDir() {
			files = append(files, p)
		}
		return nil
	})
	if len(files) != 0 {
		t.Errorf("saved state left behind: %v", files)
	}
}

// TestTuningBadSysctl: keys outside net.*, path traversal, malformed
// per-interface keys and read-only keys are config errors (7), and nothing
// changes: no state is saved and the pod keeps its values.
func TestTuningBadSysctl(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	for _, key := range []string{
		"kernel.hostname", "net/../kernel/hostname", "net.ipv4.conf.eth0..x", "../../etc/passwd",
		"net.ipv4.conf.eth0", "net", "net.core.nonexistent_key",
		// Read-only: refused before somaxconn is written.
		"net.ipv4.tcp_available_congestion_control",
	} {
		t.Run(key, func(t *testing.T) {
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			dataDir := sb.DataDir("tuning")
			list := sandbox.ConfList{Name: "podnet-tun", CNIVersion: "1.0.0", Plugins: []sandbox.Conf{
				sandbox.Bridge("cni0", sandbox.HostLocal("10.92.0.0/24", sb.DataDir("ipam"))),
				sandbox.Tuning(sandbox.Conf{"dataDir": dataDir, "mtu": 1400,
					"sysctl": map[string]any{"net.core.somaxconn": "500", key: "1"}}),
			}}
			pod := newPod(t, sb)
			_, err := sb.Add(ctx, mustList(t, list), pod.RT(nil))
			if e, ok := cniruntime.CNIError(err); !ok || e.Code != types.ErrInvalidNetworkConfig {
				t.Fatalf("ADD = %v, want code 7", err)
			}
			assertNoState(t, dataDir)
			var somaxconn []byte
			_ = pod.NS.Do(func() error {
				somaxconn, _ = os.ReadFile("/proc/sys/net/core/somaxconn")
				return nil
			})
			if strings.TrimSpace(string(somaxconn)) == "500" {
				t.Errorf("somaxconn was changed by a failed ADD")
			}
		})
	}
}
