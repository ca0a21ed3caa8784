package cni

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
)

// interopVersion is the newest spec version the reference plugins
// (containernetworking-plugins 1.1.1) speak.
const interopVersion = "1.0.0"

// TestSameResultAsReference runs the same conflist under the reference
// plugins and under podnet's, each in its own host namespace, and
// compares the results: same shape (interfaces, IPs, routes, DNS, which
// fields are present), same first address from the same range, same
// gateway, same routes.
func TestSameResultAsReference(t *testing.T) {
	requireRoot(t)
	bin := podnetBin(t)
	for _, n := range networks {
		t.Run(n.name, func(t *testing.T) {
			skipWithoutReference(t, n.types...)
			requirePlugins(t, bin, n.types...)
			t.Parallel()
			ref := addOnce(t, sandbox.ReferenceDir, n)
			pod := addOnce(t, bin, n)
			compareResults(t, ref, pod)
		})
	}
}

// addOnce adds one pod with the network's conflist through plugins from
// cniPath, checks the kernel, deletes it, and returns the ADD result.
func addOnce(t *testing.T, cniPath string, n network) types.Result {
	t.Helper()
	ctx := ctxFor(t)
	sb := newSandbox(t, cniPath)
	dataDir := ""
	if n.stateful {
		dataDir = sb.DataDir("ipam")
	}
	list := mustList(t, n.conf(interopVersion, dataDir))
	pod := newPod(t, sb)
	pod.IfName = n.ifName
	r, err := sb.Add(ctx, list, pod.RT(nil))
	if err != nil {
		t.Fatalf("ADD with plugins from %s: %s", cniPath, cniruntime.Describe(err))
	}
	verifyAdded(t, sb, pod, n.kind, toCurrent(t, r))
	if err := sb.Del(ctx, list, pod.RT(nil)); err != nil {
		t.Errorf("DEL with plugins from %s: %s", cniPath, cniruntime.Describe(err))
	}
	return r
}

func compareResults(t *testing.T, refR, podR types.Result) {
	t.Helper()
	refJSON, podJSON := resultJSON(t, refR), resultJSON(t, podR)
	report := func(format string, a ...any) {
		t.Errorf(format+"\nreference: %s\npodnet:    %s", append(a, refJSON, podJSON)...)
	}
	if rs, ps := shapeOf(t, refJSON), shapeOf(t, podJSON); rs != ps {
		report("result shapes differ:\nreference %s\npodnet    %s", rs, ps)
	}
	ref, pod := toCurrent(t, refR), toCurrent(t, podR)
	if len(ref.IPs) != len(pod.IPs) || len(ref.Routes) != len(pod.Routes) || len(ref.Interfaces) != len(pod.Interfaces) {
		report("different numbers of interfaces/IPs/routes")
		return
	}
	for i := range ref.IPs {
		r, p := ref.IPs[i], pod.IPs[i]
		if r.Address.String() != p.Address.String() {
			report("IP %d: podnet allocated %s, reference %s", i, p.Address.String(), r.Address.String())
		}
		if fmt.Sprint(r.Gateway) != fmt.Sprint(p.Gateway) {
			report("IP %d: gateway %v, reference %v", i, p.Gateway, r.Gateway)
		}
		if fmt.Sprint(derefInt(r.Interface)) != fmt.Sprint(derefInt(p.Interface)) {
			report("IP %d: interface index %v, reference %v", i, derefInt(p.Interface), derefInt(r.Interface))
		}
	}
	for i := range ref.Routes {
		if ref.Routes[i].String() != pod.Routes[i].String() {
			report("route %d: %s, reference %s", i, pod.Routes[i], ref.Routes[i])
		}
	}
	for i := range ref.Interfaces {
		r, p := ref.Interfaces[i], pod.Interfaces[i]
		// Host veth names are generated (veth… vs pn…); the others match.
		if r.Sandbox != "" || strings.HasPrefix(r.Name, "cni") || r.Name == "lo" {
			if r.Name != p.Name {
				report("interface %d: name %s, reference %s", i, p.Name, r.Name)
			}
		}
		if (r.Sandbox == "") != (p.Sandbox == "") {
			report("interface %d: sandbox %q, reference %q", i, p.Sandbox, r.Sandbox)
		}
	}
	if !reflect.DeepEqual(ref.DNS, pod.DNS) {
		report("DNS %v, reference %v", pod.DNS, ref.DNS)
	}
}

func derefInt(p *int) any {
	if p == nil {
		return nil
	}
	return *p
}

func resultJSON(t *testing.T, r types.Result) string {
	t.Helper()
	b, err := json.Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// shapeOf describes a JSON document without its values: keys, list
// lengths and value kinds.
func shapeOf(t *testing.T, doc string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(doc), &v); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	var walk func(any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			keys := make([]string, 0, len(x))
			for k := range x {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			b.WriteString("{")
			for i, k := range keys {
				if i > 0 {
					b.WriteString(",")
				}
				b.WriteString(k + ":")
				walk(x[k])
			}
			b.WriteString("}")
		case []any:
			b.WriteString("[")
			for i, e := range x {
				if i > 0 {
					b.WriteString(",")
				}
				walk(e)
			}
			b.WriteString("]")
		case string:
			b.WriteString("s")
		case float64:
			b.WriteString("n")
		case bool:
			b.WriteString("b")
		case nil:
			b.WriteString("null")
		}
	}
	walk(v)
	return b.String()
}

// TestMixedWithReference chains podnet's interface plugins with the
// reference IPAM plugins and the other way round, through a CNI_PATH in
// which each type resolves where the combination says, and runs a pod's
// whole life through each.
func TestMixedWithReference(t *testing.T) {
	requireRoot(t)
	mixes := []struct {
		network string
		mix     map[string]string
	}{
		{"bridge+host-local", map[string]string{"bridge": "podnet", "host-local": "ref"}},
		{"bridge+host-local", map[string]string{"bridge": "ref", "host-local": "podnet"}},
		{"ptp+host-local", map[string]string{"ptp": "podnet", "host-local": "ref"}},
		{"ptp+host-local", map[string]string{"ptp": "ref", "host-local": "podnet"}},
		{"bridge+static", map[string]string{"bridge": "podnet", "static": "ref"}},
		{"bridge+static", map[string]string{"bridge": "ref", "static": "podnet"}},
	}
	for _, m := range mixes {
		var n network
		for _, x := range networks {
			if x.name == m.network {
				n = x
			}
		}
		var parts []string
		for _, typ := range n.types {
			parts = append(parts, typ+"="+m.mix[typ])
		}
		t.Run(strings.Join(parts, ","), func(t *testing.T) {
			skipWithoutReference(t, n.types...)
			bin := binDir(t, m.mix)
			requirePlugins(t, bin, n.types...)
			t.Parallel()
			mixedLifecycle(t, bin, n)
		})
	}
}

func mixedLifecycle(t *testing.T, bin string, n network) {
	ctx := ctxFor(t)
	sb := newSandbox(t, bin)
	dataDir := ""
	if n.stateful {
		dataDir = sb.DataDir("ipam")
	}
	list := mustList(t, n.conf(interopVersion, dataDir))
	pod := newPod(t, sb)
	rt := pod.RT(nil)
	r, err := sb.Add(ctx, list, rt)
	if err != nil {
		t.Fatalf("ADD: %s", cniruntime.Describe(err))
	}
	res := toCurrent(t, r)
	verifyAdded(t, sb, pod, n.kind, res)
	if n.stateful && len(allocationsOf(t, dataDir, pod.ContainerID)) == 0 {
		t.Errorf("no IPAM allocation records %s", pod.ContainerID)
	}
	if err := sb.Check(ctx, list, rt); err != nil {
		t.Errorf("CHECK: %s", cniruntime.Describe(err))
	}
	// A second pod gets another address of the same range.
	pods := []*sandbox.Pod{pod}
	if n.stateful {
		pod2 := newPod(t, sb)
		pods = append(pods, pod2)
		r2, err := sb.Add(ctx, list, pod2.RT(nil))
		if err != nil {
			t.Fatalf("ADD of a second pod: %s", cniruntime.Describe(err))
		}
		res2 := toCurrent(t, r2)
		verifyAdded(t, sb, pod2, n.kind, res2)
		if res2.IPs[0].Address.IP.Equal(res.IPs[0].Address.IP) {
			t.Errorf("second pod got the first pod's address %s", res.IPs[0].Address.IP)
		}
		if err := sb.Del(ctx, list, pod2.RT(nil)); err != nil {
			t.Errorf("DEL of the second pod: %s", cniruntime.Describe(err))
		}
	}
	if err := sb.Del(ctx, list, rt); err != nil {
		t.Fatalf("DEL: %s", cniruntime.Describe(err))
	}
	verifyGone(t, sb, dataDir, pods...)
	if err := sb.Del(ctx, list, rt); err != nil {
		t.Errorf("second DEL: %s", cniruntime.Describe(err))
	}
}
