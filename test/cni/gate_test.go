package cni

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniconf"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/policy/gate"
	"github.com/podnet/podnet/internal/testing/poll"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// gateList is the cluster conflist the agent writes with network policy
// on: the podnet plugin alone, its policyGate the socket sock.
func gateList(t testing.TB, dataDir, sock string) *libcni.NetworkConfigList {
	t.Helper()
	b, err := cniconf.Cluster{Subnets: clusterSubnets, MTU: 1500, IPAMDir: dataDir, PolicyGate: sock}.Conflist()
	if err != nil {
		t.Fatal(err)
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		t.Fatalf("gate conflist: %v\n%s", err, b)
	}
	return l
}

// kubeRT is the runtime configuration of pod as containerd gives it for
// a Kubernetes pod: CNI_ARGS name the pod.
func kubeRT(pod *sandbox.Pod, namespace, name, uid string) *libcni.RuntimeConf {
	rt := pod.RT(nil)
	rt.Args = [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", namespace},
		{"K8S_POD_NAME", name},
		{"K8S_POD_INFRA_CONTAINER_ID", pod.ContainerID},
		{"K8S_POD_UID", uid},
	}
	return rt
}

// fakeAgent is the agent's side of the gate: it records the pods it is
// told, with whether the host already routed their addresses then, and
// answers refuse (nil: accepts), or, silent, nothing until the plugin
// hangs up.
type fakeAgent struct {
	host   *sandbox.Sandbox
	mu     sync.Mutex
	refuse error
	silent bool
	told   []gate.Pod
	routed []bool
}

func (a *fakeAgent) handle(ctx context.Context, p gate.Pod) error {
	routes, err := sandbox.Routes(a.host.Host.NS)
	routed := err == nil
	for _, ip := range p.IPs {
		routed = routed && sandbox.HasRoute(routes, netip.PrefixFrom(ip, ip.BitLen()).String(), "")
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.told = append(a.told, p)
	a.routed = append(a.routed, routed)
	if a.silent {
		a.mu.Unlock()
		<-ctx.Done()
		a.mu.Lock()
		return ctx.Err()
	}
	return a.refuse
}

// take returns and forgets what the agent was told.
func (a *fakeAgent) take() ([]gate.Pod, []bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	told, routed := a.told, a.routed
	a.told, a.routed = nil, nil
	return told, routed
}

func (a *fakeAgent) set(refuse error, silent bool) {
	a.mu.Lock()
	a.refuse, a.silent = refuse, silent
	a.mu.Unlock()
}

// TestPolicyGate runs the agent's conflist with a policy gate through
// libcni against a real gate.Serve: ADD of a Kubernetes pod tells the
// agent the pod's name, UID and result addresses once the host routes
// them; the agent's refusal fails ADD with "try again later" (11) and
// leaves no veth, route or allocation, and the retry succeeds; so does
// its silence, after the plugin's 10 s; ADD of a
// pod not named by CNI_ARGS, and ADD with no agent listening (no socket,
// a stale one), go on without the gate.
func TestPolicyGate(t *testing.T) {
	bin := podnetBin(t)
	requirePlugins(t, bin, "podnet", "host-local")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := sb.DataDir("ipam")
	sock := filepath.Join(sb.Dir, "policy.sock")
	list := gateList(t, dataDir, sock)
	agent := &fakeAgent{host: sb}
	stopAgent := startGate(t, sock, agent.handle)

	t.Run("pod told after its wiring", func(t *testing.T) {
		pod := newPod(t, sb)
		r, err := sb.Add(ctx, list, kubeRT(pod, "shop", "web-0", "uid-1"))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		var ips []netip.Addr
		for _, ipc := range toCurrent(t, r).IPs {
			ip, _ := netip.AddrFromSlice(ipc.Address.IP)
			ips = append(ips, ip.Unmap())
		}
		want := gate.Pod{Namespace: "shop", Name: "web-0", UID: "uid-1", IPs: ips}
		told, routed := agent.take()
		if len(told) != 1 || !reflect.DeepEqual(told[0], want) {
			t.Fatalf("agent told %+v, want %+v", told, want)
		}
		if len(ips) != 2 {
			t.Errorf("pod addresses %v, want one per family", ips)
		}
		if !routed[0] {
			t.Error("the agent was told before the host routed the pod's addresses")
		}
	})

	t.Run("agent refuses", func(t *testing.T) {
		pod := newPod(t, sb)
		rt := kubeRT(pod, "shop", "web-1", "uid-2")
		agent.set(errors.New("policy of shop/web-1 not programmed"), false)
		_, err := sb.Add(ctx, list, rt)
		wantCode(t, "ADD refused by the agent", err, types.ErrTryAgainLater, "network policy of the pod is not in place", "policy of shop/web-1 not programmed")
		if told, _ := agent.take(); len(told) != 1 || told[0].Name != "web-1" {
			t.Errorf("agent told %+v, want web-1", told)
		}
		verifyFailedAdd(t, sb, pod, dataDir, 1)
		agent.set(nil, false)
		if _, err := sb.Add(ctx, list, rt); err != nil {
			t.Fatalf("ADD retried once the agent accepts: %s", cniruntime.Describe(err))
		}
		if told, _ := agent.take(); len(told) != 1 || told[0].Name != "web-1" {
			t.Errorf("agent told %+v on the retry, want web-1", told)
		}
	})

	t.Run("agent silent", func(t *testing.T) {
		pod := newPod(t, sb)
		agent.set(nil, true)
		defer agent.set(nil, false)
		start := time.Now()
		_, err := sb.Add(ctx, list, kubeRT(pod, "shop", "web-9", "uid-9"))
		wantCode(t, "ADD with a silent agent", err, types.ErrTryAgainLater, "network policy of the pod is not in place", "deadline exceeded")
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("ADD with a silent agent took %v, want about 10 s", d)
		}
		agent.take()
		verifyFailedAdd(t, sb, pod, dataDir, 2)
	})

	t.Run("not a Kubernetes pod", func(t *testing.T) {
		if _, err := sb.Add(ctx, list, newPod(t, sb).RT(nil)); err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		if told, _ := agent.take(); len(told) != 0 {
			t.Errorf("agent told %+v of a pod CNI_ARGS do not name", told)
		}
	})

	t.Run("half a pod's name", func(t *testing.T) {
		pod := newPod(t, sb)
		rt := pod.RT(nil)
		rt.Args = [][2]string{{"IgnoreUnknown", "1"}, {"K8S_POD_NAMESPACE", "shop"}}
		_, err := sb.Add(ctx, list, rt)
		wantCode(t, "ADD with K8S_POD_NAMESPACE alone", err, types.ErrInvalidEnvironmentVariables, "K8S_POD_NAME")
		verifyFailedAdd(t, sb, pod, dataDir, 3)
	})

	stopAgent()
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T)
	}{
		{"no agent: no socket", func(t *testing.T) {
			if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("the gate's socket is still there: %v", err)
			}
		}},
		{"no agent: stale socket", func(t *testing.T) {
			l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			l.SetUnlinkOnClose(false)
			l.Close()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.setup(t)
			start := time.Now()
			if _, err := sb.Add(ctx, list, kubeRT(newPod(t, sb), "shop", "web-2", "uid-3")); err != nil {
				t.Fatalf("ADD: %s", cniruntime.Describe(err))
			}
			t.Logf("ADD with no agent listening took %v", time.Since(start))
		})
	}
}

// startGate serves the policy gate on sock with handle until the
// returned stop (or the test's end), once its socket is there.
func startGate(t testing.TB, sock string, handle func(context.Context, gate.Pod) error) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- gate.Serve(ctx, sock, handle) }()
	poll.Until(t, 10*time.Second, "the policy gate's socket", func() bool {
		_, err := os.Lstat(sock)
		return err == nil
	})
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("gate.Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

// BenchmarkPolicyGate measures ADD of a Kubernetes pod through libcni
// with the agent's conflist without a policy gate, with a gate nobody
// listens on, and with a gate whose agent answers at once: the gate's own
// cost on a pod's ADD. Each iteration adds one pod of each, in turn (so
// that the machine's load weighs on all three alike), each in a fresh
// namespace; DELs and the namespaces' removal are not timed. It reports
// each one's median and 90th percentile (ms); ns/op is the three's sum.
func BenchmarkPolicyGate(b *testing.B) {
	bin := podnetBin(b)
	requirePlugins(b, bin, "podnet", "host-local")
	ctx := context.Background() // bounded by the test binary's -timeout: ctxFor's 2 min is too short for many pods
	sb := newSandbox(b, bin)
	answering := filepath.Join(sb.Dir, "policy.sock")
	startGate(b, answering, func(context.Context, gate.Pod) error { return nil })
	cases := []struct {
		name string
		list *libcni.NetworkConfigList
		took []time.Duration
	}{
		{name: "no-gate", list: gateList(b, sb.DataDir("ipam"), "")},
		{name: "gate-no-agent", list: gateList(b, sb.DataDir("ipam"), filepath.Join(sb.Dir, "nobody.sock"))},
		{name: "gate-agent", list: gateList(b, sb.DataDir("ipam"), answering)},
	}
	b.ResetTimer()
	for i := range b.N {
		for j := range cases {
			c := &cases[j]
			b.StopTimer()
			pod := newPod(b, sb)
			rt := kubeRT(pod, "bench", fmt.Sprintf("pod-%d", i), "uid")
			b.StartTimer()
			start := time.Now()
			if _, err := sb.Add(ctx, c.list, rt); err != nil {
				b.Fatalf("%s ADD: %s", c.name, cniruntime.Describe(err))
			}
			c.took = append(c.took, time.Since(start))
			b.StopTimer()
			if err := sb.Del(ctx, c.list, rt); err != nil {
				b.Fatalf("%s DEL: %s", c.name, cniruntime.Describe(err))
			}
			if err := pod.Remove(); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
	}
	b.StopTimer()
	for _, c := range cases {
		slices.Sort(c.took)
		b.ReportMetric(float64(c.took[len(c.took)/2].Microseconds())/1000, c.name+"-ms-p50")
		b.ReportMetric(float64(c.took[len(c.took)*9/10].Microseconds())/1000, c.name+"-ms-p90")
	}
}
