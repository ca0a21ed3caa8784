package cni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// wantCode fails unless err is a spec error with the code whose message
// or details contain every string of mention.
func wantCode(t *testing.T, what string, err error, code uint, mention ...string) {
	t.Helper()
	e, ok := cniruntime.CNIError(err)
	if !ok || e.Code != code {
		t.Fatalf("%s = %v, want error code %d", what, err, code)
	}
	for _, m := range mention {
		if !strings.Contains(e.Msg+" "+e.Details, m) {
			t.Errorf("%s: code %d %q %q does not mention %q", what, e.Code, e.Msg, e.Details, m)
		}
	}
	t.Logf("%s: code %d: %s; %s", what, e.Code, e.Msg, e.Details)
}

// verifyFailedAdd checks that a failed ADD left nothing: the pod has only
// lo, the host has the veths it had, no rule or allocation names the pod.
func verifyFailedAdd(t *testing.T, sb *sandbox.Sandbox, pod *sandbox.Pod, dataDir string, hostVeths int) {
	t.Helper()
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) != hostVeths {
		t.Errorf("host veths after a failed ADD: %v, want %d", names(v), hostVeths)
	}
	if l, _ := sandbox.Links(pod.NS.NS); len(l) != 1 {
		t.Errorf("failed ADD left links in the pod: %v", names(l))
	}
	verifyNoRules(t, sb, pod.ContainerID)
	if dataDir != "" {
		verifyNoAllocations(t, dataDir, pod.ContainerID)
	}
}

// TestUnsupportedFields: well-formed values podnet or this kernel cannot
// honour are error 2 naming the field and value, for every spec version
// through libcni, and the failed ADD leaves nothing behind. Values the
// reference accepts are accepted.
func TestUnsupportedFields(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "ptp", "host-local")
	for _, tc := range []struct {
		name string
		conf func(dataDir string) sandbox.Conf
		// existing: a first pod is added on the same bridge without the
		// field, so the field meets an existing bridge.
		existing bool
		// mention is what the error names; nil: ADD must succeed.
		mention []string
		// vlan: the case needs a kernel without bridge VLAN filtering.
		vlan bool
	}{
		{
			name:    "bridge vlan",
			conf:    func(d string) sandbox.Conf { return sandbox.Conf{"type": "bridge", "bridge": "brv", "vlan": 7} },
			mention: []string{"vlan=7", "VLAN filtering"}, vlan: true,
		},
		{
			name: "bridge vlanTrunk",
			conf: func(d string) sandbox.Conf {
				return sandbox.Conf{"type": "bridge", "bridge": "brv", "vlanTrunk": []any{sandbox.Conf{"id": 5}}}
			},
			mention: []string{`vlanTrunk=[{"id":5}]`}, vlan: true,
		},
		{
			name: "bridge vlan on an existing bridge",
			conf: func(d string) sandbox.Conf {
				return sandbox.Conf{"type": "bridge", "bridge": "brv", "vlan": 7, "ipam": sandbox.HostLocal("10.71.0.0/24", d)}
			},
			existing: true, mention: []string{"vlan=7"}, vlan: true,
		},
		{
			name: "bridge unknown ipMasqBackend",
			conf: func(d string) sandbox.Conf {
				c := sandbox.Bridge("brm", sandbox.HostLocal("10.72.0.0/24", d))
				c["ipMasqBackend"] = "ipset"
				return c
			},
			mention: []string{`ipMasqBackend="ipset"`},
		},
		{
			name: "ptp unknown ipMasqBackend",
			conf: func(d string) sandbox.Conf {
				c := sandbox.PTP(sandbox.HostLocal("10.73.0.0/24", d))
				c["ipMasqBackend"] = "ipset"
				return c
			},
			mention: []string{`ipMasqBackend="ipset"`},
		},
		{
			name: "ipMasqBackend iptables accepted",
			conf: func(d string) sandbox.Conf {
				c := sandbox.Bridge("brm", sandbox.HostLocal("10.72.0.0/24", d))
				c["ipMasqBackend"] = "iptables"
				return c
			},
		},
		{
			name: "unknown ipMasqBackend without ipMasq accepted, as the reference",
			conf: func(d string) sandbox.Conf {
				c := sandbox.Bridge("brm", sandbox.HostLocal("10.72.0.0/24", d))
				c["ipMasq"], c["ipMasqBackend"] = false, "ipset"
				return c
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
				t.Run(v, func(t *testing.T) {
					t.Parallel()
					ctx := ctxFor(t)
					sb := newSandbox(t, bin)
					dataDir := sb.DataDir("ipam")
					veths := 0
					if tc.existing {
						first := tc.conf(dataDir)
						delete(first, "vlan")
						if _, err := sb.Add(ctx, mustList(t, sandbox.ConfList{Name: "codes", CNIVersion: v, Plugins: []sandbox.Conf{first}}), newPod(t, sb).RT(nil)); err != nil {
							t.Fatalf("ADD without the field: %s", cniruntime.Describe(err))
						}
						veths = 1
					}
					list := mustList(t, sandbox.ConfList{Name: "codes", CNIVersion: v, Plugins: []sandbox.Conf{tc.conf(dataDir)}})
					pod := newPod(t, sb)
					_, err := sb.Add(ctx, list, pod.RT(nil))
					if tc.mention == nil {
						if err != nil {
							t.Fatalf("ADD: %s", cniruntime.Describe(err))
						}
						return
					}
					if tc.vlan && err == nil {
						t.Skip("this kernel has bridge VLAN filtering: vlan options are supported here, error 2 cannot be provoked")
					}
					wantCode(t, "ADD", err, 2, tc.mention...)
					verifyFailedAdd(t, sb, pod, dataDir, veths)
				})
			}
		})
	}
}

// hostLocalWrapper writes, into a fresh directory put first in CNI_PATH,
// a host-local that runs podnet's in a private mount namespace after
// mountCmd ($D is the data dir) whenever the file it returns exists. The
// interface plugins then exec it (it is not their own binary), and the
// error it reports reaches the runtime. The mount dies with the plugin.
func hostLocalWrapper(t *testing.T, bin, dataDir, mountCmd string) (dir, flag string) {
	t.Helper()
	dir = t.TempDir()
	flag = filepath.Join(dir, "broken")
	real := filepath.Join(bin, "host-local")
	script := fmt.Sprintf(`#!/bin/sh
[ -e %[1]q ] || exec %[2]q
D=%[3]q exec unshare --mount --propagation private /bin/sh -c '%[4]s && exec "$0"' %[2]q
`, flag, real, dataDir, mountCmd)
	if err := os.WriteFile(filepath.Join(dir, "host-local"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir, flag
}

// TestStoreIOFailure provokes I/O failures of the host-local store under
// a running network — a read-only file system, a full one (no inode
// left), a file where the data directory should be — and checks through
// libcni: ADD and DEL are error 5 naming the store's path, the pod already
// on the network keeps its address, STATUS is 50, and once the store is
// healthy again DEL releases everything.
func TestStoreIOFailure(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local")
	for _, tc := range []struct {
		name, mount string
		mention     string // in the ADD error besides the path
	}{
		{"read-only", `mount --bind "$D" "$D" && mount -o remount,bind,ro "$D"`, "read-only file system"},
		{"full", `mount -t tmpfs -o nr_inodes=1 podnet-full "$D"`, "no space left on device"},
		{"file where the directory should be", "true", "not a directory"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			dataDir := filepath.Join(t.TempDir(), "ipam")
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				t.Fatal(err)
			}
			if tc.name == "file where the directory should be" {
				// The data directory is a file: nothing to mount.
				dataDir = filepath.Join(dataDir, "file")
				if err := os.WriteFile(dataDir, nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wrap, flag := hostLocalWrapper(t, bin, dataDir, tc.mount)
			sb := newSandbox(t, wrap, bin)
			list := mustList(t, sandbox.ConfList{Name: "io", CNIVersion: "1.1.0", Plugins: []sandbox.Conf{
				sandbox.Bridge("cni0", sandbox.HostLocal("10.74.0.0/24", dataDir)),
			}})
			var kept *sandbox.Pod
			var keptIPs []sandbox.Allocation
			if tc.name != "file where the directory should be" {
				kept = newPod(t, sb)
				if _, err := sb.Add(ctx, list, kept.RT(nil)); err != nil {
					t.Fatalf("ADD on a healthy store: %s", cniruntime.Describe(err))
				}
				keptIPs = allocationsOf(t, dataDir, kept.ContainerID)
			}
			if err := os.WriteFile(flag, nil, 0o644); err != nil {
				t.Fatal(err)
			}

			pod := newPod(t, sb)
			_, err := sb.Add(ctx, list, pod.RT(nil))
			wantCode(t, "ADD", err, 5, dataDir, tc.mention)
			veths := 0
			if kept != nil {
				veths = 1
			}
			verifyFailedAdd(t, sb, pod, dataDir, veths)
			wantCode(t, "STATUS", sb.Status(ctx, list), 50, dataDir)
			if kept != nil {
				wantCode(t, "DEL", sb.Del(ctx, list, kept.RT(nil)), 5, dataDir)
				if got := allocationsOf(t, dataDir, kept.ContainerID); len(got) != len(keptIPs) || len(got) == 0 {
					t.Errorf("allocations of the existing pod after failed calls: %v, want %v", got, keptIPs)
				}
			}

			if err := os.Remove(flag); err != nil {
				t.Fatal(err)
			}
			if kept != nil {
				if err := sb.Del(ctx, list, kept.RT(nil)); err != nil {
					t.Fatalf("DEL once the store is healthy: %s", cniruntime.Describe(err))
				}
				verifyGone(t, sb, dataDir, kept)
			}
		})
	}
}

// TestStatusLimitedConnectivity: STATUS is 51 when the network's existing
// pods are cut off while ADD would still work — the bridge set down, IP
// forwarding turned off in the host for a family the gateways or the
// routed veths route — and
// healthy again once repaired; 50 when the bridge's name is taken by a
// link that is not a bridge. A bridge that is not a gateway does not care
// about forwarding.
func TestStatusLimitedConnectivity(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "ptp", "podnet", "host-local")
	dualStack := func(d string) sandbox.Conf {
		return sandbox.Conf{"type": "host-local", "dataDir": d, "ranges": []any{
			[]any{sandbox.Conf{"subnet": "10.75.0.0/24"}},
			[]any{sandbox.Conf{"subnet": "fd00:75::/64"}},
		}}
	}
	v4 := func(d string) sandbox.Conf { return sandbox.HostLocal("10.75.0.0/24", d) }
	type hostT = *netlink.Handle
	for _, tc := range []struct {
		name    string
		conf    func(dataDir string) sandbox.Conf
		break_  func(t *testing.T, sb *sandbox.Sandbox, h hostT)
		code    uint // 0: STATUS stays healthy
		mention string
	}{
		{
			name:   "bridge down",
			conf:   func(d string) sandbox.Conf { return sandbox.Bridge("cni0", v4(d)) },
			break_: func(t *testing.T, _ *sandbox.Sandbox, h hostT) { setDown(t, h, "cni0") },
			code:   51, mention: "cni0 is down",
		},
		{
			name:   "gateway bridge, IPv4 forwarding off",
			conf:   func(d string) sandbox.Conf { return sandbox.Bridge("cni0", v4(d)) },
			break_: sysctlOff("net/ipv4/ip_forward"),
			code:   51, mention: "net.ipv4.ip_forward = 0",
		},
		{
			name: "plain bridge, forwarding off",
			conf: func(d string) sandbox.Conf {
				return sandbox.Conf{"type": "bridge", "bridge": "cni0", "ipam": v4(d)}
			},
			break_: sysctlOff("net/ipv4/ip_forward"),
		},
		{
			name:   "ptp, IPv4 forwarding off",
			conf:   func(d string) sandbox.Conf { return sandbox.PTP(v4(d)) },
			break_: sysctlOff("net/ipv4/ip_forward"),
			code:   51, mention: "net.ipv4.ip_forward = 0",
		},
		{
			name:   "ptp dual-stack, IPv6 forwarding off",
			conf:   func(d string) sandbox.Conf { return sandbox.PTP(dualStack(d)) },
			break_: sysctlOff("net/ipv6/conf/all/forwarding"),
			code:   51, mention: "net.ipv6.conf.all.forwarding = 0",
		},
		{
			name:   "podnet dual-stack, IPv4 forwarding off",
			conf:   func(d string) sandbox.Conf { return sandbox.Routed(1500, dualStack(d)) },
			break_: sysctlOff("net/ipv4/ip_forward"),
			code:   51, mention: "net.ipv4.ip_forward = 0",
		},
		{
			name:   "podnet dual-stack, IPv6 forwarding off",
			conf:   func(d string) sandbox.Conf { return sandbox.Routed(1500, dualStack(d)) },
			break_: sysctlOff("net/ipv6/conf/all/forwarding"),
			code:   51, mention: "net.ipv6.conf.all.forwarding = 0",
		},
		{
			name: "bridge name taken by a veth",
			conf: func(d string) sandbox.Conf { return sandbox.Bridge("pnotbr", v4(d)) },
			break_: func(t *testing.T, _ *sandbox.Sandbox, h hostT) {
				v := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "pnotbr"}, PeerName: "pnotbr-peer"}
				if err := h.LinkAdd(v); err != nil {
					t.Fatal(err)
				}
			},
			code: 50, mention: "not a bridge",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := ctxFor(t)
			sb := newSandbox(t, bin)
			h, err := netlink.NewHandleAt(sb.Host.Handle(), unix.NETLINK_ROUTE)
			if err != nil {
				t.Fatal(err)
			}
			defer h.Close()
			list := mustList(t, sandbox.ConfList{Name: "status", CNIVersion: "1.1.0", Plugins: []sandbox.Conf{tc.conf(sb.DataDir("ipam"))}})
			if tc.code != 50 {
				if _, err := sb.Add(ctx, list, newPod(t, sb).RT(nil)); err != nil {
					t.Fatalf("ADD: %s", cniruntime.Describe(err))
				}
			}
			if err := sb.Status(ctx, list); err != nil {
				t.Fatalf("STATUS of a healthy network: %s", cniruntime.Describe(err))
			}
			tc.break_(t, sb, h)
			err = sb.Status(ctx, list)
			if tc.code == 0 {
				if err != nil {
					t.Fatalf("STATUS = %s, want healthy", cniruntime.Describe(err))
				}
				return
			}
			wantCode(t, "STATUS", err, tc.code, tc.mention)
			if tc.code != 51 {
				return
			}
			// ADD repairs what existing pods need; STATUS is healthy again.
			if _, err := sb.Add(ctx, list, newPod(t, sb).RT(nil)); err != nil {
				t.Fatalf("ADD with limited connectivity: %s", cniruntime.Describe(err))
			}
			if err := sb.Status(ctx, list); err != nil {
				t.Errorf("STATUS after ADD repaired the host: %s", cniruntime.Describe(err))
			}
		})
	}
}

func setDown(t *testing.T, h *netlink.Handle, name string) {
	t.Helper()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetDown(l); err != nil {
		t.Fatal(err)
	}
}

// sysctlOff writes 0 to a sysctl in the sandbox's host namespace.
func sysctlOff(key string) func(*testing.T, *sandbox.Sandbox, *netlink.Handle) {
	return func(t *testing.T, sb *sandbox.Sandbox, _ *netlink.Handle) {
		t.Helper()
		if err := link.Sysctl(sb.Host.NS, key, "0"); err != nil {
			t.Fatal(err)
		}
	}
}
