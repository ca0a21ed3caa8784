package cni

import (
	"bytes"
	"fmt"
	"os/exec"
	"strings"
	"testing"

	"github.com/containernetworking/cni/libcni"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// fwNet is one bridge network with the firewall chained after it.
type fwNet struct {
	list *libcni.NetworkConfigList
	name string
}

func newFwNet(t *testing.T, v, name, bridge, subnet, dir, policy, backend string) fwNet {
	t.Helper()
	return fwNet{name: name, list: mustList(t, sandbox.ConfList{Name: name, CNIVersion: v, Plugins: []sandbox.Conf{
		sandbox.Bridge(bridge, sandbox.HostLocal(subnet, dir)),
		sandbox.Firewall(policy, backend),
	}})}
}

// firewallRules returns the rules of podnet's firewall chains in the
// host that carry the attachment's identity.
func firewallRules(t *testing.T, sb *sandbox.Sandbox, network string, p *sandbox.Pod) []sandbox.Rule {
	t.Helper()
	rules, err := sandbox.PodnetRules(sb.Host.NS)
	if err != nil {
		t.Fatal(err)
	}
	id := network + "/" + p.ContainerID + "/" + p.IfName
	var out []sandbox.Rule
	for _, r := range rules {
		if strings.HasPrefix(r.Chain, "firewall") && r.Comment == id {
			out = append(out, r)
		}
	}
	return out
}

// TestFirewall attaches pods to two bridges with the firewall chained, for
// each ingress policy and spec version, and checks real traffic: "open"
// lets pods of different bridges talk, "same-bridge" blocks them but not
// pods of one bridge, "isolated" blocks both; the host reaches every pod.
// CHECK notices a missing rule; DEL, without netns and repeated, removes
// the attachment's rules and nothing else.
func TestFirewall(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "bridge", "host-local", "firewall")
	type want struct{ sameBridge, crossBridge bool }
	policies := map[string]want{
		"open":        {true, true},
		"":            {true, true},
		"same-bridge": {true, false},
		"isolated":    {false, false},
	}
	for policy, w := range policies {
		for _, v := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
			if policy == "" && v != "1.1.0" {
				continue
			}
			t.Run(fmt.Sprintf("%q/%s", policy, v), func(t *testing.T) {
				t.Parallel()
				ctx := ctxFor(t)
				sb := newSandbox(t, bin)
				na := newFwNet(t, v, "fwa", "cnia", "10.91.0.0/24", sb.DataDir("a"), policy, "")
				nb := newFwNet(t, v, "fwb", "cnib", "10.92.0.0/24", sb.DataDir("b"), policy, "")
				a1, a2, b1 := newPod(t, sb), newPod(t, sb), newPod(t, sb)
				ip := map[*sandbox.Pod]string{}
				for _, x := range []struct {
					p *sandbox.Pod
					n fwNet
				}{{a1, na}, {a2, na}, {b1, nb}} {
					r, err := sb.Add(ctx, x.n.list, x.p.RT(nil))
					if err != nil {
						t.Fatalf("ADD: %s", cniruntime.Describe(err))
					}
					ip[x.p] = podIP(t, r)
					if len(firewallRules(t, sb, x.n.name, x.p)) == 0 {
						t.Errorf("no firewall rule carries the identity of %s", x.p.ContainerID)
					}
				}
				addrA1, addrA2, addrB1 := serve(t, a1.NS.NS, ip[a1]), serve(t, a2.NS.NS, ip[a2]), serve(t, b1.NS.NS, ip[b1])
				reach(t, a1.NS.NS, addrA2, w.sameBridge, "pod to pod on one bridge")
				reach(t, a1.NS.NS, addrB1, w.crossBridge, "pod to pod across bridges")
				reach(t, b1.NS.NS, addrA1, w.crossBridge, "pod to pod across bridges, back")
				reach(t, sb.Host.NS, addrA2, true, "host to pod")

				if atLeast(v, "0.4.0") {
					if err := sb.Check(ctx, na.list, a1.RT(nil)); err != nil {
						t.Errorf("CHECK: %s", cniruntime.Describe(err))
					}
					rules := firewallRules(t, sb, "fwa", a1)
					r := rules[len(rules)-1]
					if _, err := nftIn(sb.Host.NS, "delete", "rule", r.Family, r.Table, r.Chain, "handle", fmt.Sprint(r.Handle)); err != nil {
						t.Fatal(err)
					}
					if err := sb.Check(ctx, na.list, a1.RT(nil)); err == nil {
						t.Errorf("CHECK passed with rule %v deleted", r)
					}
				}
				// DEL without netns removes a1's rules, and only those.
				before := len(firewallRules(t, sb, "fwa", a2))
				noNS := a1.RT(nil)
				noNS.NetNS = ""
				for i := 0; i < 2; i++ {
					if err := sb.Del(ctx, na.list, noNS); err != nil {
						t.Errorf("DEL without netns #%d: %s", i+1, cniruntime.Describe(err))
					}
				}
				if r := firewallRules(t, sb, "fwa", a1); len(r) != 0 {
					t.Errorf("rules left after DEL: %v", r)
				}
				if n := len(firewallRules(t, sb, "fwa", a2)); n != before {
					t.Errorf("DEL of a1 changed a2's rules: %d, had %d", n, before)
				}
				for _, x := range []struct {
					p *sandbox.Pod
					n fwNet
				}{{a2, na}, {b1, nb}} {
					if err := sb.Del(ctx, x.n.list, x.p.RT(nil)); err != nil {
						t.Errorf("DEL: %s", cniruntime.Describe(err))
					}
				}
				verifyNoRules(t, sb, a1.ContainerID, a2.ContainerID, b1.ContainerID)
			})
		}
	}
}

// TestFirewallBadInput: an unknown backend or policy, or no prevResult, is
// a configuration error (7) and programs nothing.
func TestFirewallBadInput(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	requirePlugins(t, bin, "firewall")
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	pod := newPod(t, sb)
	prev := map[string]any{"cniVersion": "1.1.0", "interfaces": []any{map[string]any{"name": "cni0"}},
		"ips": []any{map[string]any{"address": "10.91.0.5/24", "interface": 0}}}
	cases := []struct {
		name string
		conf map[string]any
	}{
		{"unknown backend", map[string]any{"backend": "pf", "prevResult": prev}},
		{"unknown policy", map[string]any{"ingressPolicy": "closed", "prevResult": prev}},
		{"no prevResult", map[string]any{}},
		{"isolation without an interface", map[string]any{"ingressPolicy": "isolated",
			"prevResult": map[string]any{"cniVersion": "1.1.0", "ips": []any{map[string]any{"address": "10.91.0.5/24"}}}}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			conf := map[string]any{"cniVersion": "1.1.0", "name": "fw", "type": "firewall"}
			for k, v := range c.conf {
				conf[k] = v
			}
			o, err := sandbox.Exec(ctx, sb.Host.NS, sb.Path[0]+"/firewall", sandbox.Env("ADD", "c1", pod.Path(), "eth0", sb.Path[0]), mustJSON(t, conf))
			if err != nil {
				t.Fatal(err)
			}
			if e, ok := o.Error(); o.ExitCode == 0 || !ok || e.Code != 7 {
				t.Errorf("exit %d, stdout %s: want error 7", o.ExitCode, o.Stdout)
			}
			if r, err := sandbox.PodnetRules(sb.Host.NS); err != nil || len(r) != 0 {
				t.Errorf("rules after a failed ADD: %v %v", r, err)
			}
		})
	}
}

// TestFirewallInterop chains podnet's firewall after the reference bridge
// and host-local, and the reference firewall (iptables backend, in the
// sandbox's host) after podnet's bridge, in one conflist through libcni.
func TestFirewallInterop(t *testing.T) {
	requireRoot(t)
	t.Run("podnet firewall after reference bridge", func(t *testing.T) {
		skipWithoutReference(t, "bridge", "host-local")
		bin := binDir(t, map[string]string{"bridge": "ref", "host-local": "ref", "firewall": "podnet"})
		requirePlugins(t, bin, "bridge", "host-local", "firewall")
		t.Parallel()
		ctx := ctxFor(t)
		sb := newSandbox(t, bin)
		na := newFwNet(t, interopVersion, "fwa", "cnia", "10.91.0.0/24", sb.DataDir("a"), "same-bridge", "iptables")
		nb := newFwNet(t, interopVersion, "fwb", "cnib", "10.92.0.0/24", sb.DataDir("b"), "same-bridge", "iptables")
		a1, b1 := newPod(t, sb), newPod(t, sb)
		ra, err := sb.Add(ctx, na.list, a1.RT(nil))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		rb, err := sb.Add(ctx, nb.list, b1.RT(nil))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		reach(t, a1.NS.NS, serve(t, b1.NS.NS, podIP(t, rb)), false, "pod to pod across isolated bridges")
		reach(t, sb.Host.NS, serve(t, a1.NS.NS, podIP(t, ra)), true, "host to pod")
		if err := sb.Check(ctx, na.list, a1.RT(nil)); err != nil {
			t.Errorf("CHECK: %s", cniruntime.Describe(err))
		}
		for _, x := range []struct {
			p *sandbox.Pod
			n fwNet
		}{{a1, na}, {b1, nb}} {
			if err := sb.Del(ctx, x.n.list, x.p.RT(nil)); err != nil {
				t.Errorf("DEL: %s", cniruntime.Describe(err))
			}
		}
		if r, err := sandbox.PodnetRules(sb.Host.NS); err != nil || len(r) != 0 {
			t.Errorf("podnet rules after DEL: %v %v", r, err)
		}
	})
	t.Run("reference firewall after podnet bridge", func(t *testing.T) {
		skipWithoutReference(t, "firewall")
		bin := binDir(t, map[string]string{"bridge": "podnet", "host-local": "podnet", "firewall": "ref"})
		requirePlugins(t, bin, "bridge", "host-local", "firewall")
		t.Parallel()
		ctx := ctxFor(t)
		sb := newSandbox(t, bin)
		if out, err := iptablesIn(sb.Host.NS, "-t", "filter", "-L", "-n"); err != nil {
			t.Skipf("the reference firewall's iptables backend is unusable here: %v %s", err, out)
		}
		n := newFwNet(t, interopVersion, "fwa", "cnia", "10.91.0.0/24", sb.DataDir("a"), "", "iptables")
		p := newPod(t, sb)
		r, err := sb.Add(ctx, n.list, p.RT(nil))
		if err != nil {
			t.Fatalf("ADD: %s", cniruntime.Describe(err))
		}
		ip := podIP(t, r)
		out, err := iptablesIn(sb.Host.NS, "-S", "CNI-FORWARD")
		if err != nil || !strings.Contains(out, ip) {
			t.Errorf("reference firewall rules for %s missing: %v\n%s", ip, err, out)
		}
		reach(t, sb.Host.NS, serve(t, p.NS.NS, ip), true, "host to pod")
		if err := sb.Check(ctx, n.list, p.RT(nil)); err != nil {
			t.Errorf("CHECK: %s", cniruntime.Describe(err))
		}
		if err := sb.Del(ctx, n.list, p.RT(nil)); err != nil {
			t.Errorf("DEL: %s", cniruntime.Describe(err))
		}
		if out, _ := iptablesIn(sb.Host.NS, "-S", "CNI-FORWARD"); strings.Contains(out, ip) {
			t.Errorf("reference firewall rules for %s left after DEL:\n%s", ip, out)
		}
		verifyNoRules(t, sb, p.ContainerID)
	})
}

// nftIn runs nft in a namespace (observation and tampering in tests).
func nftIn(ns *netns.NS, args ...string) (string, error) {
	return toolIn(ns, "nft", args...)
}

// iptablesIn runs iptables in a namespace.
func iptablesIn(ns *netns.NS, args ...string) (string, error) {
	return toolIn(ns, "iptables", args...)
}

func toolIn(ns *netns.NS, tool string, args ...string) (string, error) {
	path, err := exec.LookPath(tool)
	if err != nil {
		return "", err
	}
	var out bytes.Buffer
	err = ns.Do(func() error {
		cmd := exec.Command(path, args...)
		cmd.Stdout, cmd.Stderr = &out, &out
		return cmd.Run()
	})
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, out.String())
	}
	return out.String(), nil
}
