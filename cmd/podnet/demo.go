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

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/cnibin"
	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/testing/sandbox"
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
	ctx  context.Context
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

func runDemo(ctx context.Context, out io.Writer, o demoOptions) (err error) {
	if ctx == nil {
		ctx = context.Background()
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	opts := sandbox.Options{Prefix: "pndemo", Stderr: os.Stderr}
	bin := o.cniPath
	if bin != "" {
		opts.CNIPath = []string{bin}
	} else {
		if bin, err = locateCNI(o.cniBin); err != nil {
			return err
		}
		if opts.Plugins, err = cnibin.Links(bin); err != nil {
			return err
		}
	}
	sb, err := sandbox.New(opts)
	if err != nil {
		return fmt.Errorf("create the demo node: %w", err)
	}
	defer func() {
		if cerr := sb.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("tear down: %w", cerr)
		}
	}()
	for _, typ := range []string{"loopback", "bridge", "host-local"} {
		if err := sandbox.Supports(sb.Path[0], typ); err != nil {
			return err
		}
	}
	pod, err := sb.NewPod()
	if err != nil {
		return fmt.Errorf("create the demo pod: %w", err)
	}
	d := &demo{out: out, ctx: ctx}

	loConf := sandbox.ConfList{Name: "demo-lo", CNIVersion: o.cniVersion, Plugins: []sandbox.Conf{sandbox.Loopback()}}
	brConf := sandbox.ConfList{Name: "demo-bridge", CNIVersion: o.cniVersion, Plugins: []sandbox.Conf{
		sandbox.Bridge("cni0", sandbox.HostLocal(o.subnet, sb.DataDir("host-local"))),
	}}
	lo, err := loConf.List()
	if err != nil {
		return err
	}
	br, err := brConf.List()
	if err != nil {
		return err
	}
	loRT := pod.RT(nil)
	loRT.IfName = "lo"
	rt := pod.RT(nil)

	fmt.Fprintf(out, "podnet demo: plugins %s\n", bin)
	fmt.Fprintf(out, "  node netns %s, pod netns %s, container %s…\n", sb.Host.Name, pod.NS.Name, pod.ContainerID[:12])
	fmt.Fprintf(out, "  conflist:\n%s\n", indent(string(brConf.JSON()), "    "))

	var res *current.Result
	var raw types.Result
	if d.do("ADD lo   (loopback)", func() error { _, err := sb.Add(ctx, lo, loRT); return err }) != nil {
		return errors.New("demo failed")
	}
	if d.do("ADD eth0 (bridge + host-local)", func() error {
		var err error
		if raw, err = sb.Add(ctx, br, rt); err != nil {
			return err
		}
		res, err = current.NewResultFromResult(raw)
		return err
	}) != nil {
		return errors.New("demo failed")
	}
	fmt.Fprintf(out, "  result:\n%s\n", indent(resultJSON(raw), "    "))
	if err := showPod(out, sb, pod); err != nil {
		return err
	}

	_ = d.do("TCP pod → gateway, gateway → pod", func() error { return connectivity(sb, pod, res) })
	_ = d.do("CHECK lo, eth0", func() error {
		return errors.Join(sb.Check(ctx, lo, loRT), sb.Check(ctx, br, rt))
	})
	_ = d.do("STATUS", func() error { return sb.Status(ctx, br) })
	_ = d.do("GC keeping the pod (nothing to collect)", func() error {
		if err := sb.GC(ctx, br, []types.GCAttachment{pod.Attachment()}); err != nil {
			return err
		}
		return sb.Check(ctx, br, rt)
	})
	_ = d.do("DEL eth0, lo", func() error {
		return errors.Join(sb.Del(ctx, br, rt), sb.Del(ctx, lo, loRT))
	})
	_ = d.do("nothing left: no veth, no rule, no allocation", func() error { return nothingLeft(sb, pod) })
	_ = d.do("DEL again (idempotent)", func() error { return sb.Del(ctx, br, rt) })
	_ = d.do("GC with no valid attachment", func() error { return sb.GC(ctx, br, nil) })
	_ = d.do("STATUS", func() error { return sb.Status(ctx, br) })

	if d.fail > 0 {
		return fmt.Errorf("demo failed: %d of %d steps", d.fail, d.step)
	}
	fmt.Fprintf(out, "podnet demo: all %d steps ok; removing the namespaces\n", d.step)
	return nil
}

// showPod prints the pod's interfaces, addresses and routes, and the
// node's bridge.
func showPod(out io.Writer, sb *sandbox.Sandbox, pod *sandbox.Pod) error {
	links, err := sandbox.Links(pod.NS.NS)
	if err != nil {
		return err
	}
	routes, err := sandbox.Routes(pod.NS.NS)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "  pod:")
	for _, l := range links {
		fmt.Fprintf(out, "    %-6s %-6s up=%-5v mac %-17s %s\n", l.Name, l.Type, l.Up, l.MAC, addrs(l.Addrs))
	}
	for _, r := range routes {
		fmt.Fprintf(out, "    route %s\n", r)
	}
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		return err
	}
	fmt.Fprintln(out, "  node:")
	for _, l := range hostLinks {
		if l.Type == "bridge" || l.Type == "veth" {
			fmt.Fprintf(out, "    %-14s %-6s %s alias %q\n", l.Name, l.Type, addrs(l.Addrs), l.Alias)
		}
	}
	// Observation only: the nft tool lists podnet's rules if installed.
	if rules, err := sandbox.PodnetRules(sb.Host.NS); err == nil {
		for _, r := range rules {
			fmt.Fprintf(out, "    nft %s %s %s: %q\n", r.Family, r.Table, r.Chain, r.Comment)
		}
	}
	return nil
}

// connectivity connects by TCP from the pod to a listener on its gateway
// in the node, and from the node to a listener on the pod's address.
func connectivity(sb *sandbox.Sandbox, pod *sandbox.Pod, res *current.Result) error {
	if len(res.IPs) == 0 || res.IPs[0].Gateway == nil {
		return errors.New("the result has no IP with a gateway")
	}
	ip := res.IPs[0]
	gwL, err := sandbox.Listen(sb.Host.NS, net.JoinHostPort(ip.Gateway.String(), "0"))
	if err != nil {
		return fmt.Errorf("listen on the gateway: %w", err)
	}
	defer gwL.Close()
	go sandbox.Echo(gwL)
	if got, err := sandbox.RoundTrip(pod.NS.NS, gwL.Addr().String(), "ping"); err != nil || got != "ping" {
		return fmt.Errorf("pod → %s: %q %v", gwL.Addr(), got, err)
	}
	podL, err := sandbox.Listen(pod.NS.NS, net.JoinHostPort(ip.Address.IP.String(), "0"))
	if err != nil {
		return fmt.Errorf("listen in the pod: %w", err)
	}
	defer podL.Close()
	go sandbox.Echo(podL)
	if got, err := sandbox.RoundTrip(sb.Host.NS, podL.Addr().String(), "pong"); err != nil || got != "pong" {
		return fmt.Errorf("node → %s: %q %v", podL.Addr(), got, err)
	}
	return nil
}

// nothingLeft verifies DEL removed the attachment everywhere.
func nothingLeft(sb *sandbox.Sandbox, pod *sandbox.Pod) error {
	var errs []error
	hostLinks, err := sandbox.Links(sb.Host.NS)
	if err != nil {
		return err
	}
	if v := sandbox.LinksOfType(hostLinks, "veth"); len(v) > 0 {
		errs = append(errs, fmt.Errorf("veth left in the node: %s", v[0].Name))
	}
	podLinks, err := sandbox.Links(pod.NS.NS)
	if err != nil {
		return err
	}
	if _, ok := sandbox.FindLink(podLinks, "eth0"); ok {
		errs = append(errs, errors.New("eth0 left in the pod"))
	}
	if rs, err := sandbox.Ruleset(sb.Host.NS); err == nil && strings.Contains(rs, pod.ContainerID) {
		errs = append(errs, errors.New("nftables rules of the pod left in the node"))
	}
	allocs, err := sandbox.Allocations(sb.DataDir("host-local"), pod.ContainerID)
	if err != nil {
		return err
	}
	for _, a := range allocs {
		errs = append(errs, fmt.Errorf("allocation left: %s", a.Path))
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
