package attach

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/vishvananda/netlink"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/link"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/nft/podrules"
)

// These are kernel tests: each runs the attach verbs in a throwaway
// "host" network namespace (the verbs work in their caller's namespace,
// as a plugin does) against throwaway container namespaces, with a fake
// IPAM plugin that logs its calls and fails on demand.

const network = "attachtest"

// fakeIPAM is the IPAM plugin: it logs "<command> <container> <ifname>",
// fails with the spec code in fail.<command> when that file exists, and
// answers ADD with result.<container>.
const fakeIPAM = `#!/bin/sh
D=%q
cat >/dev/null
echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME" >>"$D/log"
if [ -e "$D/fail.$CNI_COMMAND" ]; then
	printf '{"cniVersion":"1.0.0","code":%%s,"msg":"fake IPAM fails"}' "$(cat "$D/fail.$CNI_COMMAND")"
	exit 1
fi
if [ "$CNI_COMMAND" = ADD ]; then cat "$D/result.$CNI_CONTAINERID"; fi
`

// env is a host namespace and the fake IPAM plugin's directory.
type env struct {
	host  *netns.Temp
	hostH *netlink.Handle
	dir   string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("kernel test: needs root")
	}
	e := &env{dir: t.TempDir()}
	var err error
	if e.host, err = netns.NewTemp("pnattach-host"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.host.Remove() })
	if e.hostH, err = netlink.NewHandleAt(e.host.Handle()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.hostH.Close)
	if err := os.WriteFile(filepath.Join(e.dir, "fake-ipam"), []byte(fmt.Sprintf(fakeIPAM, e.dir)), 0o755); err != nil {
		t.Fatal(err)
	}
	return e
}

// pod is a container namespace and the arguments of calls about it.
type pod struct {
	ns   *netns.Temp
	h    *netlink.Handle
	args *skel.CmdArgs
	id   attachment.ID
}

// newPod creates a container namespace; IPAM will give it addr (a CIDR)
// with gateway gw and a default route.
func (e *env) newPod(t *testing.T, containerID, addr, gw string) *pod {
	t.Helper()
	ns, err := netns.NewTemp("pnattach-pod")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Remove() })
	h, err := netlink.NewHandleAt(ns.Handle())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	res := fmt.Sprintf(`{"cniVersion":"1.0.0","ips":[{"address":%q,"gateway":%q}],"routes":[{"dst":"0.0.0.0/0"}]}`, addr, gw)
	if err := os.WriteFile(filepath.Join(e.dir, "result."+containerID), []byte(res), 0o644); err != nil {
		t.Fatal(err)
	}
	p := &pod{ns: ns, h: h, args: e.args(t, containerID, ns.Path(), "")}
	p.id = cniplugin.AttachmentOf(network, p.args)
	return p
}

// args are a call's arguments; extra is added to the configuration.
func (e *env) args(t *testing.T, containerID, netnsPath, extra string) *skel.CmdArgs {
	t.Helper()
	conf := fmt.Sprintf(`{"cniVersion":"1.0.0","name":%q,"type":"ptp","ipam":{"type":"fake-ipam"}%s}`, network, extra)
	return &skel.CmdArgs{ContainerID: containerID, Netns: netnsPath, IfName: "eth0", Path: e.dir, StdinData: []byte(conf)}
}

// load decodes a call's configuration.
func load(args *skel.CmdArgs) (*cniplugin.NetConf, error) {
	c := &cniplugin.NetConf{}
	if err := cniplugin.Decode(args.StdinData, c); err != nil {
		return nil, err
	}
	return c, nil
}

// run runs verb in the host namespace with the CNI environment a
// runtime gives a plugin (the IPAM delegation reads it).
func (e *env) run(t *testing.T, args *skel.CmdArgs, verb func() error) error {
	t.Helper()
	for k, v := range map[string]string{
		"CNI_CONTAINERID": args.ContainerID, "CNI_NETNS": args.Netns, "CNI_IFNAME": args.IfName,
		"CNI_PATH": args.Path, "CNI_ARGS": "",
	} {
		t.Setenv(k, v)
	}
	return e.host.Do(verb)
}

// add is ADD of a routed veth plugin.
func (e *env) add(t *testing.T, args *skel.CmdArgs, r Routing) (*current.Result, error) {
	t.Helper()
	var res *current.Result
	err := e.run(t, args, func() error {
		c, err := load(args)
		if err != nil {
			return err
		}
		got, err := AddRouted(args, c, r)
		if err != nil {
			return err
		}
		res, err = current.NewResultFromResult(got)
		return err
	})
	return res, err
}

// verb runs DEL, GC or STATUS (as RoutedTeardown returns them) by name.
func (e *env) verb(t *testing.T, name string, args *skel.CmdArgs) error {
	t.Helper()
	del, gc, status := RoutedTeardown(load)
	f := map[string]func(*skel.CmdArgs) error{"DEL": del, "GC": gc, "STATUS": status}[name]
	return e.run(t, args, func() error { return f(args) })
}

// ipamLog is the fake IPAM's calls, one "<command> <container>" each.
func (e *env) ipamLog(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.dir, "log"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		f := strings.Fields(l)
		out = append(out, strings.Join(f[:min(2, len(f))], " "))
	}
	return out
}

// failIPAM makes the fake IPAM fail command with code.
func (e *env) failIPAM(t *testing.T, command string, code uint) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(e.dir, "fail."+command), []byte(fmt.Sprint(code)), 0o644); err != nil {
		t.Fatal(err)
	}
}

// linkNames lists a namespace's links but lo.
func linkNames(t *testing.T, h *netlink.Handle) []string {
	t.Helper()
	links, err := h.LinkList()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range links {
		if l.Attrs().Name != "lo" {
			out = append(out, l.Attrs().Name)
		}
	}
	slices.Sort(out)
	return out
}

func wantLinks(t *testing.T, where string, h *netlink.Handle, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := linkNames(t, h); !slices.Equal(got, want) {
		t.Errorf("links in the %s: %v, want %v", where, got, want)
	}
}

func wantLog(t *testing.T, e *env, want ...string) {
	t.Helper()
	if got := e.ipamLog(t); !slices.Equal(got, want) {
		t.Errorf("IPAM calls: %q, want %q", got, want)
	}
}

func wantCode(t *testing.T, what string, err error, code uint) {
	t.Helper()
	var e *types.Error
	if !errors.As(cniplugin.AsCNIError(err), &e) || e.Code != code {
		t.Errorf("%s = %v, want error code %d", what, err, code)
	}
}

func mustCIDR(t *testing.T, s string) *net.IPNet {
	t.Helper()
	ip, n, err := net.ParseCIDR(s)
	if err != nil {
		t.Fatal(err)
	}
	n.IP = ip
	return n
}

// routed is a Routing that adds nothing on the container's link; the
// gateways are in the container's subnets.
var routed = Routing{
	Shape:  func(*current.Result) error { return nil },
	OnLink: func(*netlink.Handle, netlink.Link, *current.Result) error { return nil },
}

// forwarding reads the host namespace's IPv4 forwarding sysctl.
func (e *env) forwarding(t *testing.T) string {
	t.Helper()
	var v []byte
	if err := e.host.Do(func() (err error) {
		v, err = os.ReadFile("/proc/sys/net/ipv4/ip_forward")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(v))
}

// TestLifecycle is ADD, DEL, a repeated DEL and a DEL after the
// container is gone, of a routed veth with masquerade.
func TestLifecycle(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(t, "c1", "10.77.0.5/24", "10.77.0.1")
	if got := e.forwarding(t); got != "0" {
		t.Fatalf("a fresh namespace forwards (%s)", got)
	}
	r := routed
	r.Masquerade = true
	res, err := e.add(t, p.args, r)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	hostVeth := link.HostVethName(p.id)

	// The result: the host end, then the container's, which holds the
	// address; DNS left as IPAM gave it.
	if len(res.Interfaces) != 2 || res.Interfaces[0].Name != hostVeth || res.Interfaces[0].Sandbox != "" ||
		res.Interfaces[1].Name != "eth0" || res.Interfaces[1].Sandbox != p.ns.Path() {
		t.Fatalf("result interfaces %+v", res.Interfaces)
	}
	if len(res.IPs) != 1 || res.IPs[0].Interface == nil || *res.IPs[0].Interface != RoutedIdx || res.IPs[0].Address.String() != "10.77.0.5/24" {
		t.Fatalf("result IPs %+v", res.IPs)
	}

	// The kernel: the pair, the host end stamped and holding the gateway,
	// the host route to the pod, the pod's address and default route,
	// forwarding on, the masquerade rule.
	wantLinks(t, "host", e.hostH, hostVeth)
	wantLinks(t, "container", p.h, "eth0")
	hl, err := e.hostH.LinkByName(hostVeth)
	if err != nil {
		t.Fatal(err)
	}
	if hl.Attrs().Alias != link.Alias(p.id) {
		t.Errorf("host veth alias %q, want %q", hl.Attrs().Alias, link.Alias(p.id))
	}
	if err := e.host.Do(func() error {
		s, err := Begin(p.args, &cniplugin.NetConf{NetConf: types.NetConf{Name: network}})
		if err != nil {
			return err
		}
		defer s.Close()
		s.Done()
		return s.CheckRouted(res)
	}); err != nil {
		t.Errorf("CHECK of the routed veth after ADD: %v", err)
	}
	if addrs, _ := e.hostH.AddrList(hl, netlink.FAMILY_V4); len(addrs) != 1 || addrs[0].IPNet.String() != "10.77.0.1/32" {
		t.Errorf("host veth addresses %v, want the gateway 10.77.0.1/32", addrs)
	}
	if routes, _ := p.h.RouteList(nil, netlink.FAMILY_V4); !slices.ContainsFunc(routes, func(r netlink.Route) bool {
		return (r.Dst == nil || r.Dst.String() == "0.0.0.0/0") && r.Gw.Equal(net.ParseIP("10.77.0.1"))
	}) {
		t.Errorf("container routes %v lack the default via 10.77.0.1", routes)
	}
	if got := e.forwarding(t); got != "1" {
		t.Errorf("host ip_forward = %s after ADD, want 1", got)
	}
	n, err := podrules.New(e.host.Fd())
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	if err := n.CheckMasquerade(p.id, []*net.IPNet{mustCIDR(t, "10.77.0.5/24")}); err != nil {
		t.Errorf("masquerade after ADD: %v", err)
	}
	wantLog(t, e, "ADD c1")

	for i := range 2 {
		if err := e.verb(t, "DEL", p.args); err != nil {
			t.Fatalf("DEL #%d: %v", i+1, err)
		}
		wantLinks(t, "host", e.hostH)
		wantLinks(t, "container", p.h)
		if err := n.CheckMasquerade(p.id, []*net.IPNet{mustCIDR(t, "10.77.0.5/24")}); err == nil {
			t.Errorf("masquerade rule outlived DEL #%d", i+1)
		}
	}
	if err := p.ns.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := e.verb(t, "DEL", p.args); err != nil {
		t.Errorf("DEL once the container's namespace is gone: %v", err)
	}
	wantLog(t, e, "ADD c1", "DEL c1", "DEL c1", "DEL c1")
}

// TestDelByIdentity: DEL finds the host end by the attachment's identity
// alone, when the container's interface is no longer where ADD put it.
func TestDelByIdentity(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(t, "c1", "10.77.0.5/24", "10.77.0.1")
	if _, err := e.add(t, p.args, routed); err != nil {
		t.Fatal(err)
	}
	l, err := p.h.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if err := p.h.LinkSetName(l, "renamed"); err != nil {
		t.Fatal(err)
	}
	if err := e.verb(t, "DEL", p.args); err != nil {
		t.Fatal(err)
	}
	wantLinks(t, "host", e.hostH)
	wantLinks(t, "container", p.h)
}

// TestAddRollback: an ADD that fails at any step leaves no link in either
// namespace and releases the addresses IPAM gave it; an ADD that fails
// before IPAM gave any does not call IPAM again.
func TestAddRollback(t *testing.T) {
	errOnLink := errors.New("on-link setup fails")
	for _, tc := range []struct {
		name    string
		prepare func(t *testing.T, e *env, p *pod)
		routing Routing
		netns   string // CNI_NETNS instead of the pod's
		code    uint   // the code a runtime sees
		wantErr error  // errors.Is(err, wantErr) when set
		log     []string
		// contLinks are the container's links after the failed ADD.
		contLinks []string
	}{
		{
			name:    "IPAM fails",
			prepare: func(t *testing.T, e *env, _ *pod) { e.failIPAM(t, "ADD", types.ErrTryAgainLater) },
			routing: routed,
			code:    types.ErrTryAgainLater,
			log:     []string{"ADD c1"},
		},
		{
			name:    "IPAM's result rejected",
			routing: Routing{Shape: func(*current.Result) error { return cniplugin.Invalid("no gateway") }, OnLink: routed.OnLink},
			code:    types.ErrInvalidNetworkConfig,
			log:     []string{"ADD c1", "DEL c1"},
		},
		{
			name: "veth creation fails: ifname taken in the container",
			prepare: func(t *testing.T, _ *env, p *pod) {
				if err := p.h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "eth0"}}); err != nil {
					t.Fatal(err)
				}
			},
			routing:   routed,
			code:      types.ErrInternal,
			log:       []string{"ADD c1", "DEL c1"},
			contLinks: []string{"eth0"},
		},
		{
			name: "container setup fails after the veth",
			routing: Routing{Shape: routed.Shape, OnLink: func(*netlink.Handle, netlink.Link, *current.Result) error {
				return errOnLink
			}},
			code:    types.ErrInternal,
			wantErr: errOnLink,
			log:     []string{"ADD c1", "DEL c1"},
		},
		{
			name:    "container namespace gone",
			routing: routed,
			netns:   "/var/run/netns/pnattach-no-such-ns",
			code:    types.ErrUnknownContainer,
			wantErr: netns.ErrNotExist,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			p := e.newPod(t, "c1", "10.77.0.5/24", "10.77.0.1")
			if tc.prepare != nil {
				tc.prepare(t, e, p)
			}
			if tc.netns != "" {
				p.args.Netns = tc.netns
			}
			res, err := e.add(t, p.args, tc.routing)
			if err == nil {
				t.Fatalf("ADD succeeded: %+v", res)
			}
			wantCode(t, "ADD", err, tc.code)
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("ADD = %v, want it to wrap %v", err, tc.wantErr)
			}
			wantLinks(t, "host", e.hostH)
			wantLinks(t, "container", p.h, tc.contLinks...)
			wantLog(t, e, tc.log...)
		})
	}
}

// TestGC: GC deletes the host links of the network's attachments the
// runtime no longer lists, keeps the others, and asks IPAM to collect.
func TestGC(t *testing.T) {
	e := newEnv(t)
	kept := e.newPod(t, "kept", "10.77.0.5/24", "10.77.0.1")
	stale := e.newPod(t, "stale", "10.77.0.6/24", "10.77.0.1")
	for _, p := range []*pod{kept, stale} {
		if _, err := e.add(t, p.args, routed); err != nil {
			t.Fatalf("ADD %s: %v", p.args.ContainerID, err)
		}
	}
	gcArgs := e.args(t, "", "", `,"cni.dev/valid-attachments":[{"containerID":"kept","ifname":"eth0"}]`)
	gcArgs.IfName = ""
	if err := e.verb(t, "GC", gcArgs); err != nil {
		t.Fatalf("GC: %v", err)
	}
	wantLinks(t, "host", e.hostH, link.HostVethName(kept.id))
	wantLinks(t, "kept container", kept.h, "eth0")
	// The stale container lost its end with the pair.
	wantLinks(t, "stale container", stale.h)
	wantLog(t, e, "ADD kept", "ADD stale", "GC")
}

// TestStatus: STATUS is the IPAM plugin's, unless IP forwarding, on
// which the network's existing pods rely, is off (51).
func TestStatus(t *testing.T) {
	e := newEnv(t)
	p := e.newPod(t, "c1", "10.77.0.5/24", "10.77.0.1")
	statusArgs := e.args(t, "", "", "")
	statusArgs.IfName = ""
	if err := e.verb(t, "STATUS", statusArgs); err != nil {
		t.Errorf("STATUS of an empty network: %v", err)
	}
	if _, err := e.add(t, p.args, routed); err != nil {
		t.Fatal(err)
	}
	if err := e.verb(t, "STATUS", statusArgs); err != nil {
		t.Errorf("STATUS with a pod: %v", err)
	}
	e.failIPAM(t, "STATUS", cniplugin.ErrPluginNotAvailable)
	wantCode(t, "STATUS with IPAM unavailable", e.verb(t, "STATUS", statusArgs), cniplugin.ErrPluginNotAvailable)
	if err := e.host.Do(func() error { return link.Sysctl(nil, "net/ipv4/ip_forward", "0") }); err != nil {
		t.Fatal(err)
	}
	err := e.verb(t, "STATUS", statusArgs)
	wantCode(t, "STATUS with forwarding off", err, cniplugin.ErrLimitedConnectivity)
	if err == nil || !strings.Contains(cniplugin.AsCNIError(err).(*types.Error).Details, "net.ipv4.ip_forward = 0") {
		t.Errorf("STATUS = %v, want it to name the sysctl", err)
	}
	wantLog(t, e, "STATUS", "ADD c1", "STATUS", "STATUS")
}
