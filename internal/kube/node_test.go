package kube

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podnet/podnet/internal/netns"
)

// TestMain runs the test binary as a node's supervisor when StartNode
// starts it so (see testSupervisor), else the tests.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == "kube-node" {
		fl := flag.NewFlagSet("kube-node", flag.ExitOnError)
		config := fl.String("config", "", "")
		readyFD := fl.Int("ready-fd", 0, "")
		_ = fl.Parse(os.Args[2:])
		if err := Supervise(*config, os.NewFile(uintptr(*readyFD), "ready")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// testSupervisor is the supervisor command of the tests' nodes: this
// test binary, which TestMain turns into `podnet kube-node`.
func testSupervisor(t *testing.T) []string {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return []string{exe, "kube-node"}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: runs a node (namespaces, mounts, cgroups)")
	}
}

// machineState is what a node must leave as it found it on the machine.
type machineState struct {
	sysctls map[string]string
	// paths tells which standard paths (and their parents) exist.
	paths    map[string]bool
	hostname string
}

func takeMachineState(t *testing.T) machineState {
	t.Helper()
	st := machineState{sysctls: map[string]string{}, paths: map[string]bool{}}
	var err error
	if st.hostname, err = os.Hostname(); err != nil {
		t.Fatal(err)
	}
	for _, s := range nodeSysctls {
		b, err := os.ReadFile(filepath.Join("/proc/sys", s))
		if err != nil {
			t.Fatal(err)
		}
		st.sysctls[s] = strings.TrimSpace(string(b))
	}
	for _, d := range append(slices.Clone(nodeDirs), "/var/run/netns", "/run/xtables.lock", "/usr/libexec/kubernetes") {
		for ; d != "/"; d = filepath.Dir(d) {
			_, err := os.Lstat(d)
			st.paths[d] = err == nil
		}
	}
	return st
}

// nodeNetNS makes a throwaway network namespace with a link holding the
// node's address and a default route through it, as a node's uplink (a
// bridge: the dummy driver is missing on some machines).
func nodeNetNS(t *testing.T, ip net.IP) *netns.Temp {
	t.Helper()
	ns, err := netns.NewTemp("pnkn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := ns.Remove(); err != nil {
			t.Errorf("remove netns: %v", err)
		}
	})
	err = ns.Do(func() error {
		link := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}
		if err := netlink.LinkAdd(link); err != nil {
			return err
		}
		if err := netlink.AddrAdd(link, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(24, 32)}}); err != nil {
			return err
		}
		if err := netlink.LinkSetUp(link); err != nil {
			return err
		}
		gw := net.IPv4(ip[0], ip[1], ip[2], 1)
		return netlink.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}, Gw: gw})
	})
	if err != nil {
		t.Fatalf("node uplink: %v", err)
	}
	return ns
}

// staticPod writes the manifest of a host-network pod running busybox's
// sleep (no CNI needed).
func staticPod(t *testing.T, dir, name string) {
	t.Helper()
	pod := map[string]any{
		"apiVersion": "v1",
		"kind":       "Pod",
		"metadata":   map[string]any{"name": name, "namespace": "default"},
		"spec": map[string]any{
			"hostNetwork": true,
			"containers": []any{map[string]any{
				"name":            "sleep",
				"image":           BusyboxImage,
				"imagePullPolicy": "Never",
				"command":         []string{"sleep", "3600"},
			}},
		},
	}
	b, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".json"), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// poll calls f until it succeeds or timeout passes.
func poll(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// procsInNetNS lists the live processes in the network namespace at
// path but this one: netns.Create leaves the thread it created the
// namespace on there until it ends, and when that thread was the main
// one, Go keeps it (wedged) and /proc shows the process in the namespace.
func procsInNetNS(t *testing.T, path string) []int {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("net:[%d]", st.Ino)
	var pids []int
	for pid := range procFiles("stat") {
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err == nil && l == want && procAlive(pid) && pid != os.Getpid() {
			pids = append(pids, pid)
		}
	}
	return pids
}

// TestNodeStandalone runs a node without an apiserver: kubelet runs a
// static host-network busybox pod from the node's containerd. It checks
// that the container runs, in the node's cgroups, that kubelet's sysctl
// writes land in the node's files, and that Stop leaves no process (in
// the network namespace, mount namespace or cgroups), cgroup, mount,
// mountpoint or sysctl change behind; then that a node whose supervisor
// was killed is cleaned up as well.
func TestNodeStandalone(t *testing.T) {
	requireRoot(t)
	if _, err := FindContainerdTools(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bins, err := Build(ctx, BuildConfig{Out: testWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	images, err := PodImages(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	before := takeMachineState(t)

	for _, tc := range []struct {
		name string
		// kill SIGKILLs the supervisor before Stop.
		kill bool
	}{
		{name: "stop"},
		{name: "supervisor-killed", kill: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ip := net.IPv4(10, 250, 0, 2).To4()
			ns := nodeNetNS(t, ip)
			dir := t.TempDir()
			staticPod(t, filepath.Join(dir, "manifests"), "sleeper")
			cfg := NodeConfig{
				Bins: bins, Name: "kn1", NetNS: ns.Path(), IP: ip, Dir: filepath.Join(dir, "node"),
				StaticPodDir: filepath.Join(dir, "manifests"),
				Images:       images,
				Supervisor:   testSupervisor(t),
			}
			start := time.Now()
			n, err := StartNode(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("node started in %v (snapshotter %s)", time.Since(start).Round(time.Millisecond), n.st.Snapshotter)
			stopped := false
			t.Cleanup(func() {
				if !stopped {
					_ = n.Stop()
				}
				if t.Failed() {
					for _, c := range []string{"supervisor", "containerd", "kubelet"} {
						b, _ := os.ReadFile(n.LogPath(c))
						t.Logf("%s log:\n%s", c, Tail(b, 25))
					}
				}
			})
			mntNS := n.st.MountNS
			if o, err := OpenNode(cfg.Dir); err != nil || o.st.PID != n.st.PID || !o.Running() {
				t.Errorf("OpenNode: %+v, %v", o, err)
			}

			// Importing again (as the lab does with images built later)
			// replaces the image in place.
			if err := n.ImportImages(ctx, images...); err != nil {
				t.Errorf("ImportImages: %v", err)
			}
			conn, err := DialCRI(n.ContainerdSocket())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			rt := runtimeapi.NewRuntimeServiceClient(conn)
			start = time.Now()
			poll(t, 2*time.Minute, "the static pod's container to run", func() error {
				l, err := rt.ListContainers(ctx, &runtimeapi.ListContainersRequest{})
				if err != nil {
					return err
				}
				for _, c := range l.Containers {
					if c.Metadata.Name == "sleep" && c.State == runtimeapi.ContainerState_CONTAINER_RUNNING {
						return nil
					}
				}
				return fmt.Errorf("containers: %v", l.Containers)
			})
			t.Logf("pod running after %v", time.Since(start).Round(time.Millisecond))
			if len(CgroupProcs(n.CgroupRoot())) == 0 {
				t.Errorf("no process in the node's cgroups %s", n.CgroupRoot())
			}
			// The host-network container's hostname is the node's name
			// (the node's UTS namespace), the machine's is unchanged.
			sleepers := 0
			for _, pid := range CgroupProcs(n.CgroupRoot()) {
				if p, ok := readProcInfo(pid); ok && p.comm == "sleep" {
					sleepers++
					if h, err := hostnameOf(pid); err != nil || h != cfg.Name {
						t.Errorf("the host-network container's hostname: %q, %v; want %q", h, err, cfg.Name)
					}
				}
			}
			if sleepers == 0 {
				t.Errorf("no process of the host-network container (sleep) in the node's cgroups %s", n.CgroupRoot())
			}
			if h, err := os.Hostname(); err != nil || h != before.hostname {
				t.Errorf("the machine's hostname: %q, %v; was %q", h, err, before.hostname)
			}
			// kubelet sets kernel.panic to 10: in the node's file only.
			poll(t, 30*time.Second, "kubelet's write of kernel/panic", func() error {
				b, err := os.ReadFile(cfg.path("sysctl", "kernel", "panic"))
				if err == nil && strings.TrimSpace(string(b)) != "10" {
					err = fmt.Errorf("node's kernel/panic is %q", b)
				}
				return err
			})
			if b, err := os.ReadFile(filepath.Join(n.FS(), "/var/log/pods")); err == nil || !errors.Is(err, syscall.EISDIR) {
				t.Errorf("node's /var/log/pods: %q, %v", b, err)
			}

			if tc.kill {
				if err := syscall.Kill(n.st.PID, syscall.SIGKILL); err != nil {
					t.Fatal(err)
				}
				<-n.exited
			}
			start = time.Now()
			err = n.Stop()
			stopped = true
			t.Logf("node stopped in %v", time.Since(start).Round(time.Millisecond))
			if err != nil {
				t.Errorf("Stop: %v", err)
			}
			if err := n.Stop(); err != nil {
				t.Errorf("second Stop: %v", err)
			}
			checkGone(t, ns.Path(), mntNS, n, cfg.Dir, before)
		})
	}
}

// hostnameOf reads the hostname of pid's UTS namespace, on a thread of
// its own that enters the namespace and ends with the goroutine.
func hostnameOf(pid int) (string, error) {
	type result struct {
		name string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with it
		fd, err := unix.Open(fmt.Sprintf("/proc/%d/ns/uts", pid), unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			done <- result{err: err}
			return
		}
		defer unix.Close(fd)
		if err := unix.Setns(fd, unix.CLONE_NEWUTS); err != nil {
			done <- result{err: fmt.Errorf("enter the UTS namespace of %d: %w", pid, err)}
			return
		}
		var u unix.Utsname
		if err := unix.Uname(&u); err != nil {
			done <- result{err: err}
			return
		}
		done <- result{name: unix.ByteSliceToString(u.Nodename[:])}
	}()
	r := <-done
	return r.name, r.err
}

// checkGone checks that nothing of the node is left on the machine.
func checkGone(t *testing.T, netnsPath, mntNS string, n *Node, dir string, before machineState) {
	t.Helper()
	if pids := procsInNetNS(t, netnsPath); len(pids) > 0 {
		t.Errorf("processes left in the node's network namespace: %v", pids)
	}
	if pids := ProcsInMountNS(mntNS); len(pids) > 0 {
		t.Errorf("processes left in the node's mount namespace: %v", pids)
	}
	if pids := CgroupProcs(n.CgroupRoot()); len(pids) > 0 {
		t.Errorf("processes left in the node's cgroups: %v", pids)
	}
	roots, err := cgroupHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range roots {
		if _, err := os.Stat(filepath.Join(r, n.CgroupRoot())); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("cgroup %s left: %v", filepath.Join(r, n.CgroupRoot()), err)
		}
	}
	if m, err := MountsUnder("/proc/self/mountinfo", dir); err != nil || len(m) > 0 {
		t.Errorf("mounts left under %s: %v, %v", dir, m, err)
	}
	after := takeMachineState(t)
	if after.hostname != before.hostname {
		t.Errorf("the machine's hostname changed: %s, was %s", after.hostname, before.hostname)
	}
	for s, v := range before.sysctls {
		if after.sysctls[s] != v {
			t.Errorf("sysctl %s changed: %s, was %s", s, after.sysctls[s], v)
		}
	}
	for p, existed := range before.paths {
		if after.paths[p] != existed {
			t.Errorf("%s: existed %v before the node, %v after", p, existed, after.paths[p])
		}
	}
}

// testWriter writes Build's progress to the test log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
