package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/spf13/cobra"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/attachment"
	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/netns"
	"github.com/podnet/podnet/internal/nft/podrules"
)

func newDemo() *cobra.Command {
	var o demoOptions
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Attach a pod to a bridge network with podnet's plugins, in throwaway namespaces",
		Long: `demo plays a container runtime on a throwaway node: it creates a network
namespace for the node and one for a pod, runs ADD of a loopback network and
of a bridge + host-local network through libcni with podnet's plugins, shows
the pod's addresses and routes, connects from the pod to its gateway and
back, then runs CHECK, GC, DEL and STATUS, verifies nothing is left, and
removes the namespaces. The machine's own network is never touched.
Needs root.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if os.Geteuid() != 0 {
				return errors.New("demo needs root to create network namespaces (try: sudo podnet demo)")
			}
			return runDemo(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	cmd.Flags().StringVar(&o.cniBin, "cni-bin", "", "podnet-cni binary (default: $PODNET_CNI_BIN, else podnet-cni next to this executable)")
	cmd.Flags().StringVar(&o.cniPath, "cni-path", "", "run the plugins of this directory instead of podnet's (e.g. /usr/lib/cni, with --cni-version 1.0.0)")
	cmd.Flags().StringVar(&o.subnet, "subnet", "10.88.0.0/24", "pod subnet of the demo network")
	cmd.Flags().StringVar(&o.cniVersion, "cni-version", "1.1.0", "cniVersion of the demo conflists")
	return cmd
}

type demoOptions struct {
	cniBin     string
	cniPath    string
	subnet     string
	cniVersion string
}

// locateCNI finds the podnet-cni binary the demo runs.
func locateCNI(flag string) (string, error) {
	if flag != "" {
		return filepath.Abs(flag)
	}
	if p := os.Getenv(cnibin.EnvBinary); p != "" {
		return filepath.Abs(p)
	}
	exe, err := os.Executable()
	if err == nil {
		p := filepath.Join(filepath.Dir(exe), "podnet-cni")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("podnet-cni not found next to podnet: run make build, or pass --cni-bin")
}

// demo is the state of one run, for step printing.
type demo struct {
	out  io.Writer
	step int
	fail int
}

// do runs one step and prints its outcome and duration.
func (d *demo) do(name string, f func() error) error {
	d.step++
	start := time.Now()
	err := f()
	el := time.Since(start).Round(100 * time.Microsecond)
	if err != nil {
		d.fail++
		fmt.Fprintf(d.out, "  [%2d] %-52s FAIL %8s\n       %s\n", d.step, name, el, cniruntime.Describe(err))
		return err
	}
	fmt.Fprintf(d.out, "  [%2d] %-52s ok   %8s\n", d.step, name, el)
	return nil
}

// demoNet is the name of the demo's bridge network (and of its IPAM
// store, and of the attachments its rules belong to).
const demoNet = "demo-bridge"

// node is the demo's throwaway node: a namespace playing the node, one for
// the pod, a temporary directory (CNI_PATH links, libcni's cache, IPAM
// state) and a libcni runtime whose plugins run in the node.
type node struct {
	dir       string
	path      []string
	host, pod *netns.Temp
	rt        *cniruntime.Runtime
}

// newNode creates the node. Plugins are found in cniPath, or, with links,
// in a bin dir of those links made in the node's directory.
func newNode(cniPath []string, links map[string]string) (n *node, err error) {
	n = &node{path: cniPath}
	if n.dir, err = os.MkdirTemp("", "podnet-demo-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, n.close())
		}
	}()
	if links != nil {
		bin := filepath.Join(n.dir, "bin")
		if err := cniruntime.LinkDir(bin, links); err != nil {
			return n, err
		}
		n.path = []string{bin}
	}
	if n.host, err = netns.NewTemp("pndemohost"); err != nil {
		return n, err
	}
	if n.pod, err = netns.NewTemp("pndemopod"); err != nil {
		return n, err
	}
	n.rt = cniruntime.NewRuntime(n.host.NS, n.path, filepath.Join(n.dir, "cache"), os.Stderr)
	return n, nil
}

// dataDir is where host-local keeps the demo's allocations.
func (n *node) dataDir() string { return filepath.Join(n.dir, "ipam") }

// close removes the namespaces (with every link, route and rule inside)
// and the directory.
func (n *node) close() error {
	var errs []error
	for _, ns := range []*netns.Temp{n.pod, n.host} {
		if ns != nil {
			errs = append(errs, ns.Remove())
		}
	}
	errs = append(errs, os.RemoveAll(n.dir))
	return errors.Join(errs...)
}

// confList is a conflist as a runtime reads it from /etc/cni/net.d.
func confList(name, version string, plugins ...map[string]any) ([]byte, *libcni.NetworkConfigList, error) {
	b, err := json.MarshalIndent(map[string]any{"cniVersion": version, "name": name, "plugins": plugins}, "", "  ")
	if err != nil {
		return nil, nil, err
	}
	l, err := libcni.ConfListFromBytes(b)
	if err != nil {
		return nil, nil, fmt.Errorf("conflist %s: %w", name, err)
	}
	return b, l, nil
}

func runDemo(ctx context.Context, out io.Writer, o demoOptions) (err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	var cniPath []string
	var links map[string]string
	bin := o.cniPath
	if bin != "" {
		cniPath = []string{bin}
	} else {
		if bin, err = locateCNI(o.cniBin); err != nil {
			return err
		}
		if links, err = cnibin.Links(bin); err != nil {
			return err
		}
	}
	n, err := newNode(cniPath, links)
	if err != nil {
		return fmt.Errorf("create the demo node: %w", err)
	}
	defer func() {
		if cerr := n.close(); cerr != nil && err == nil {
			err = fmt.Errorf("tear down: %w", cerr)
		}
	}()
	d := &demo{out: out}

	_, lo, err := confList("demo-lo", o.cniVersion, map[string]any{"type": "loopback"})
	if err != nil {
		return err
	}
	brJSON, br, err := confList(demoNet, o.cniVersion, map[string]any{
		"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  []any{[]any{map[string]any{"subnet": o.subnet}}},
			"routes":  []any{map[string]any{"dst": "0.0.0.0/0"}},
			"dataDir": n.dataDir(),
		},
	})
	if err != nil {
		return err
	}
	id := cniruntime.RandomID()
	rt := &libcni.RuntimeConf{ContainerID: id, NetNS: n.pod.Path(), IfName: "eth0"}
	loRT := &libcni.RuntimeConf{ContainerID: id, NetNS: n.pod.Path(), IfName: "lo"}
	valid := []types.GCAttachment{{ContainerID: id, IfName: rt.IfName}}

	fmt.Fprintf(out, "podnet demo: plugins %s\n", bin)
	fmt.Fprintf(out, "  node netns %s, pod netns %s, container %s…\n", n.host.Name, n.pod.Name, id[:12])
	fmt.Fprintf(out, "  conflist:\n%s\n", indent(string(brJSON), "    "))

	var res *current.Result
	var raw types.Result
	if d.do("ADD lo   (loopback)", func() error { _, err := n.rt.Add(ctx, lo, loRT); return err }) != nil {
		return errors.New("demo failed")
	}
	if d.do("ADD eth0 (bridge + host-local)", func() error {
		var err error
		if raw, err = n.rt.Add(ctx, br, rt); err != nil {
			return err
		}
		res, err = current.NewResultFromResult(raw)
		return err
	}) != nil {
		return errors.New("demo failed")
	}
	fmt.Fprintf(out, "  result:\n%s\n", indent(resultJSON(raw), "    "))
	if err := showNode(out, n); err != nil {
		return err
	}

	_ = d.do("TCP pod → gateway, gateway → pod", func() error { return connectivity(n, res) })
	_ = d.do("CHECK lo, eth0", func() error {
		return errors.Join(n.rt.Check(ctx, lo, loRT), n.rt.Check(ctx, br, rt))
	})
	_ = d.do("STATUS", func() error { return n.rt.Status(ctx, br) })
	_ = d.do("GC keeping the pod (nothing to collect)", func() error {
		if err := n.rt.GC(ctx, br, valid); err != nil {
			return err
		}
		return n.rt.Check(ctx, br, rt)
	})
	_ = d.do("DEL eth0, lo", func() error {
		return errors.Join(n.rt.Del(ctx, br, rt), n.rt.Del(ctx, lo, loRT))
	})
	_ = d.do("nothing left: no veth, no rule, no allocation", func() error { return nothingLeft(n, id) })
	_ = d.do("DEL again (idempotent)", func() error { return n.rt.Del(ctx, br, rt) })
	_ = d.do("GC with no valid attachment", func() error { return n.rt.GC(ctx, br, nil) })
	_ = d.do("STATUS", func() error { return n.rt.Status(ctx, br) })

	if d.fail > 0 {
		return fmt.Errorf("demo failed: %d of %d steps", d.fail, d.step)
	}
	fmt.Fprintf(out, "podnet demo: all %d steps ok; removing the namespaces\n", d.step)
	return nil
}

// showNode prints the pod's interfaces, addresses and routes, the node's
// bridge and veths, and the attachments owning rules in podnet's tables.
func showNode(out io.Writer, n *node) error {
	fmt.Fprintln(out, "  pod:")
	if err := showLinks(out, n.pod.NS, func(netlink.Link) bool { return true }); err != nil {
		return err
	}
	if err := showRoutes(out, n.pod.NS); err != nil {
		return err
	}
	fmt.Fprintln(out, "  node:")
	if err := showLinks(out, n.host.NS, func(l netlink.Link) bool { return l.Type() == "bridge" || l.Type() == "veth" }); err != nil {
		return err
	}
	owners, err := ruleOwners(n.host.NS)
	if err != nil {
		return err
	}
	for _, a := range owners {
		fmt.Fprintf(out, "    nftables rules of %s\n", a)
	}
	return nil
}

// handle opens a netlink handle in ns; the caller closes it.
func handle(ns *netns.NS) (*netlink.Handle, error) {
	h, err := netlink.NewHandleAt(ns.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink in %s: %w", ns.Path(), err)
	}
	return h, nil
}

// showLinks prints the links of ns that show selects, with their global
// addresses.
func showLinks(out io.Writer, ns *netns.NS, show func(netlink.Link) bool) error {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links in %s: %w", ns.Path(), err)
	}
	for _, l := range links {
		if !show(l) {
			continue
		}
		list, err := h.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("list addresses of %s: %w", l.Attrs().Name, err)
		}
		var as []net.IPNet
		for _, a := range list {
			if !a.IP.IsLinkLocalUnicast() {
				as = append(as, *a.IPNet)
			}
		}
		a := l.Attrs()
		line := fmt.Sprintf("%-14s %-6s up=%-5v mac %-17s %s", a.Name, l.Type(), a.Flags&net.FlagUp != 0, a.HardwareAddr, addrs(as))
		if a.Alias != "" {
			line += fmt.Sprintf(" alias %q", a.Alias)
		}
		fmt.Fprintf(out, "    %s\n", strings.TrimRight(line, " "))
	}
	return nil
}

// showRoutes prints the routes of ns's main table.
func showRoutes(out io.Writer, ns *netns.NS) error {
	h, err := handle(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	routes, err := h.RouteList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return fmt.Errorf("list routes in %s: %w", ns.Path(), err)
	}
	for _, r := range routes {
		if r.Dst != nil && (r.Dst.IP.IsLinkLocalUnicast() || r.Dst.IP.IsMulticast()) {
			continue
		}
		dst := "default"
		if r.Dst != nil {
			if ones, _ := r.Dst.Mask.Size(); ones != 0 {
				dst = r.Dst.String()
			}
		}
		if r.Gw != nil {
			dst += " via " + r.Gw.String()
		}
		dev := "?"
		if l, err := h.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
		fmt.Fprintf(out, "    route %s dev %s\n", dst, dev)
	}
	return nil
}

// ruleOwners lists the attachments of the demo network owning rules in
// podnet's nftables tables in ns.
func ruleOwners(ns *netns.NS) ([]attachment.ID, error) {
	c, err := podrules.New(ns.Fd())
	if err != nil {
		return nil, err
	}
	defer c.Close()
	return c.Attachments(demoNet)
}

// connectivity connects by TCP from the pod to a listener on its gateway
// in the node, and from the node to a listener on the pod's address.
func connectivity(n *node, res *current.Result) error {
	if len(res.IPs) == 0 || res.IPs[0].Gateway == nil {
		return errors.New("the result has no IP with a gateway")
	}
	ip := res.IPs[0]
	return errors.Join(
		roundTrip(n.pod.NS, n.host.NS, ip.Gateway, "ping"),
		roundTrip(n.host.NS, n.pod.NS, ip.Address.IP, "pong"),
	)
}

// roundTrip listens by TCP on ip in the namespace to, connects from the
// namespace from, and checks that msg comes back.
func roundTrip(from, to *netns.NS, ip net.IP, msg string) error {
	var l net.Listener
	if err := to.Do(func() (err error) {
		l, err = net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		return err
	}); err != nil {
		return fmt.Errorf("listen on %s: %w", ip, err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(3 * time.Second))
		_, _ = io.CopyN(c, c, int64(len(msg)))
	}()
	var c net.Conn
	if err := from.Do(func() (err error) {
		c, err = net.DialTimeout("tcp", l.Addr().String(), 3*time.Second)
		return err
	}); err != nil {
		return fmt.Errorf("connect to %s: %w", l.Addr(), err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, len(msg))
	if _, err := c.Write([]byte(msg)); err != nil {
		return fmt.Errorf("send to %s: %w", l.Addr(), err)
	}
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != msg {
		return fmt.Errorf("echo from %s: %q %v", l.Addr(), buf, err)
	}
	return nil
}

// nothingLeft verifies DEL removed the attachment everywhere: its veth in
// the node, eth0 in the pod, its rules and its allocation.
func nothingLeft(n *node, id string) error {
	var errs []error
	h, err := handle(n.host.NS)
	if err != nil {
		return err
	}
	defer h.Close()
	links, err := h.LinkList()
	if err != nil {
		return fmt.Errorf("list links of the node: %w", err)
	}
	for _, l := range links {
		if l.Type() == "veth" {
			errs = append(errs, fmt.Errorf("veth left in the node: %s", l.Attrs().Name))
		}
	}
	ph, err := handle(n.pod.NS)
	if err != nil {
		return err
	}
	defer ph.Close()
	if _, err := ph.LinkByName("eth0"); err == nil {
		errs = append(errs, errors.New("eth0 left in the pod"))
	}
	owners, err := ruleOwners(n.host.NS)
	if err != nil {
		return err
	}
	for _, a := range owners {
		errs = append(errs, fmt.Errorf("nftables rules left in the node: %s", a))
	}
	st, err := ipam.Open(n.dataDir(), demoNet)
	if err != nil {
		return err
	}
	defer st.Close()
	allocs, err := st.Scan()
	if err != nil {
		return err
	}
	for ip := range allocs {
		errs = append(errs, fmt.Errorf("allocation left: %s", ip))
	}
	if ips, ok := st.Addresses(ipam.Owner{ContainerID: id, IfName: "eth0"}); ok {
		errs = append(errs, fmt.Errorf("allocation index left: %v", ips))
	}
	return errors.Join(errs...)
}

func addrs(as []net.IPNet) string {
	s := make([]string, 0, len(as))
	for _, a := range as {
		s = append(s, a.String())
	}
	return strings.Join(s, " ")
}

func resultJSON(r types.Result) string {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err.Error()
	}
	return string(b)
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", "\n"+prefix)
}
