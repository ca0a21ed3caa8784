package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/cluster"
	"github.com/podnet/podnet/internal/kube"
	"github.com/podnet/podnet/internal/lab"
)

// labFlags are the flags every lab command shares.
type labFlags struct {
	name, base string
}

func newLab() *cobra.Command {
	var f labFlags
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "A virtual multi-node podnet cluster on this machine, made of network namespaces",
		Long: `lab builds a podnet cluster out of network namespaces: an underlay of one or
more L2 segments joined by a router, an outside network beyond it, nodes that
each run the real podnet-agent (the first embeds etcd, the others join it),
and pods attached through the real CNI path. With --kubernetes the lab is a
real Kubernetes instead: a control plane, containerd, kubelet and (unless
--kube-proxy none) kube-proxy on every node, podnet installed from
deploy/podnet.yaml, the pods a Deployment's and a NodePort Service over
them. Nothing touches the machine's own network namespace. Needs
root.`,
		PersistentPreRunE: func(*cobra.Command, []string) error {
			if os.Geteuid() != 0 {
				return errors.New("podnet lab needs root (it creates network namespaces): run it with sudo")
			}
			return nil
		},
	}
	cmd.PersistentFlags().StringVar(&f.name, "name", "lab", "name of the lab (several labs can run side by side)")
	cmd.PersistentFlags().StringVar(&f.base, "state-dir", lab.DefaultBaseDir, "where labs keep their state")
	cmd.AddCommand(newLabUp(&f), newLabDemo(&f), newLabCheck(&f), newLabStatus(&f), newLabDown(&f),
		newLabExec(&f), newLabPod(&f), newLabNode(&f), newLabKubectl(&f), newLabBuild(), newLabForward())
	return cmd
}

// specFlags binds the shape of a lab to flags.
func specFlags(cmd *cobra.Command, s *lab.Spec, bins *lab.Binaries) {
	fl := cmd.Flags()
	fl.IntVar(&s.Nodes, "nodes", 3, "number of nodes")
	fl.IntVar(&s.PodsPerNode, "pods-per-node", 2, "pods on each node")
	fl.IntVar(&s.Segments, "segments", 1, "L2 segments of the underlay, joined by a router")
	fl.StringVar((*string)(&s.Backend), "backend", string(cluster.Auto), "auto, host-gw or vxlan")
	fl.BoolVar(&s.IPv6, "ipv6", false, "dual-stack underlay and pods")
	fl.DurationVar(&s.LeaseTTL, "lease-ttl", 20*time.Second, "grace period before a dead node's subnet is reclaimed")
	fl.BoolVar(&s.Kubernetes, "kubernetes", false, "a real Kubernetes: control plane, containerd, kubelet and kube-proxy on every node, podnet as a DaemonSet, the pods a Deployment's (run from the podnet repository: it builds Kubernetes "+kube.Version+" once, ~7-10 min on 2 cores, then cached)")
	fl.StringVar((*string)(&s.KubeProxy), "kube-proxy", "", "with --kubernetes: kube-proxy on every node in iptables or nftables mode, or none (podnet's service proxy serves Services); default none when deploy/podnet.yaml turns podnet's service proxy on, else iptables")
	fl.StringVar(&bins.Agent, "agent-bin", "", "podnet-agent binary (default: next to this executable)")
	fl.StringVar(&bins.CNI, "cni-bin", "", "podnet-cni binary (default: next to this executable)")
}

// locateBins fills unset binaries with the ones next to this executable
// (and the CLI with this executable).
func locateBins(b *lab.Binaries) error {
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	if b.CLI == "" {
		b.CLI = exe
	}
	for _, x := range []struct {
		dst  *string
		name string
	}{{&b.Agent, "podnet-agent"}, {&b.CNI, "podnet-cni"}} {
		if *x.dst == "" {
			*x.dst = filepath.Join(filepath.Dir(exe), x.name)
		}
		abs, err := filepath.Abs(*x.dst)
		if err != nil {
			return err
		}
		if _, err := os.Stat(abs); err != nil {
			return fmt.Errorf("%s not found (make build builds it, or pass --%s-bin): %w", x.name, map[string]string{"podnet-agent": "agent", "podnet-cni": "cni"}[x.name], err)
		}
		*x.dst = abs
	}
	return nil
}

// signalContext is cancelled by SIGINT and SIGTERM.
func signalContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	return signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
}

// upLab locates the binaries, creates the lab from its spec, brings it up
// and prints what it built. The lab is returned once it exists, also when
// bringing it up failed.
func upLab(ctx context.Context, out io.Writer, f *labFlags, s lab.Spec, bins lab.Binaries) (*lab.Lab, error) {
	if err := locateBins(&bins); err != nil {
		return nil, err
	}
	l, err := lab.New(f.base, f.name, s, bins, out)
	if err != nil {
		return nil, err
	}
	if err := l.Up(ctx); err != nil {
		return l, err
	}
	l.PrintStatus(ctx, out)
	if s.Kubernetes {
		fmt.Fprintf(out, "kubectl: export KUBECONFIG=%s (or podnet lab kubectl --name %s -- ARGS)\n", l.Kubeconfig(), f.name)
	}
	return l, nil
}

func newLabUp(f *labFlags) *cobra.Command {
	var s lab.Spec
	var bins lab.Binaries
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Build a lab: underlay, nodes running podnet-agent, pods",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd)
			defer cancel()
			l, err := upLab(ctx, cmd.OutOrStdout(), f, s, bins)
			if err != nil && l != nil {
				return fmt.Errorf("%w\n(the lab is left as it is for inspection; podnet lab down --name %s removes it)", err, f.name)
			}
			return err
		},
	}
	specFlags(cmd, &s, &bins)
	return cmd
}

func newLabDemo(f *labFlags) *cobra.Command {
	var s lab.Spec
	var bins lab.Binaries
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Build a lab, check every pod against every pod (Kubernetes mode: then under a NetworkPolicy), tear it down; the exit code tells",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) (err error) {
			ctx, cancel := signalContext(cmd)
			defer cancel()
			out := cmd.OutOrStdout()
			l, err := upLab(ctx, out, f, s, bins)
			if l != nil && !keep {
				defer func() {
					fmt.Fprintf(out, "tearing lab %s down\n", f.name)
					start := time.Now()
					if derr := lab.Down(f.base, f.name); derr != nil && err == nil {
						err = derr
					}
					fmt.Fprintf(out, "lab %s down in %s\n", f.name, time.Since(start).Round(time.Millisecond))
				}()
			}
			if err != nil {
				return err
			}
			if err := check(ctx, out, l); err != nil || !l.Spec.Kubernetes {
				return err
			}
			return l.PolicyDemo(ctx, out)
		},
	}
	specFlags(cmd, &s, &bins)
	cmd.Flags().BoolVar(&keep, "keep", false, "leave the lab up afterwards")
	return cmd
}

// onLab is a subcommand that works on an existing lab.
func onLab(f *labFlags, use, short string, args cobra.PositionalArgs, run func(ctx context.Context, out io.Writer, l *lab.Lab, args []string) error) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  args,
		RunE: func(cmd *cobra.Command, args []string) error {
			l, err := lab.Open(f.base, f.name, cmd.OutOrStdout())
			if err != nil {
				return err
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			return run(ctx, cmd.OutOrStdout(), l, args)
		},
	}
}

// check prints the connectivity matrix; any failed probe is an error.
func check(ctx context.Context, out io.Writer, l *lab.Lab) error {
	r, err := l.Check(ctx)
	if err != nil {
		return err
	}
	r.Print(out)
	if n := r.Failures(); n > 0 {
		return fmt.Errorf("%d connectivity probes failed", n)
	}
	return nil
}

func newLabCheck(f *labFlags) *cobra.Command {
	return onLab(f, "check", "Test every pod against every pod (ICMP, TCP, no NAT) and the outside (masquerade)", cobra.NoArgs,
		func(ctx context.Context, out io.Writer, l *lab.Lab, _ []string) error { return check(ctx, out, l) })
}

func newLabStatus(f *labFlags) *cobra.Command {
	return onLab(f, "status", "Show the lab's nodes, subnets, backends per peer, agent memory, join times and pods", cobra.NoArgs,
		func(ctx context.Context, out io.Writer, l *lab.Lab, _ []string) error {
			l.PrintStatus(ctx, out)
			return nil
		})
}

func newLabDown(f *labFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "Remove the lab: agents, namespaces, state (also after a crashed lab)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return lab.Down(f.base, f.name)
		},
	}
}

func newLabExec(f *labFlags) *cobra.Command {
	return onLab(f, "exec POD|NODE|outside -- COMMAND [ARG...]", "Run a command inside a pod's (Kubernetes mode: NAMESPACE/POD), a node's or the outside host's network namespace", cobra.MinimumNArgs(2),
		func(ctx context.Context, out io.Writer, l *lab.Lab, args []string) error {
			ns, err := l.OpenNetNS(ctx, args[0])
			if err != nil {
				return err
			}
			defer ns.Close()
			c := exec.CommandContext(ctx, args[1], args[2:]...)
			c.Stdin, c.Stdout, c.Stderr = os.Stdin, out, os.Stderr
			return ns.Do(c.Run)
		})
}

func newLabPod(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "pod", Short: "Add or delete pods"}
	cmd.AddCommand(
		onLab(f, "add NODE", "Add a pod to a node through the node's CNI configuration", cobra.ExactArgs(1),
			func(ctx context.Context, out io.Writer, l *lab.Lab, args []string) error {
				p, err := l.AddPod(ctx, args[0])
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "pod %s on %s: %v\n", p.Name, p.Node, p.IPs)
				return nil
			}),
		onLab(f, "del POD", "Delete a pod (CNI DEL, then its namespace)", cobra.ExactArgs(1),
			func(ctx context.Context, _ io.Writer, l *lab.Lab, args []string) error { return l.DelPod(ctx, args[0]) }),
	)
	return cmd
}

func newLabNode(f *labFlags) *cobra.Command {
	cmd := &cobra.Command{Use: "node", Short: "Add, delete, kill or restart nodes"}
	cmd.AddCommand(
		onLab(f, "add", "Add a node (and the lab's pods per node); prints its join time", cobra.NoArgs,
			func(ctx context.Context, out io.Writer, l *lab.Lab, _ []string) error {
				n, join, err := l.AddNode(ctx)
				if err != nil {
					return err
				}
				fmt.Fprintf(out, "node %s (%s) joined: routes on every other node %s after its lease\n", n.Name, n.IP, join.Round(100*time.Microsecond))
				return nil
			}),
		onLab(f, "del NODE", "Delete a node: its pods, its agent, its lease (the others drop its routes)", cobra.ExactArgs(1),
			func(ctx context.Context, _ io.Writer, l *lab.Lab, args []string) error {
				return l.DelNode(ctx, args[0])
			}),
		onLab(f, "kill NODE", "Kill a node's agent with SIGKILL (its pods keep working)", cobra.ExactArgs(1),
			func(_ context.Context, _ io.Writer, l *lab.Lab, args []string) error { return l.KillNode(args[0]) }),
		onLab(f, "restart NODE", "Restart a node's agent and wait until it is ready", cobra.ExactArgs(1),
			func(ctx context.Context, _ io.Writer, l *lab.Lab, args []string) error {
				return l.RestartNode(ctx, args[0])
			}),
	)
	return cmd
}

func newLabKubectl(f *labFlags) *cobra.Command {
	return onLab(f, "kubectl -- ARG...", "Run the lab's kubectl (Kubernetes mode) as the cluster administrator, inside the lab", cobra.MinimumNArgs(1),
		func(ctx context.Context, out io.Writer, l *lab.Lab, args []string) error {
			return l.RunKubectl(ctx, os.Stdin, out, os.Stderr, args...)
		})
}

// newLabBuild is `podnet lab build`: the Kubernetes binaries of
// --kubernetes built ahead (make test runs it before the tests, so that a
// cold build is not paid inside a test's timeout).
func newLabBuild() *cobra.Command {
	return &cobra.Command{
		Use:   "build",
		Short: "Build the Kubernetes binaries --kubernetes runs (" + kube.Version + ", from the Go module proxy; cached after the first run)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := signalContext(cmd)
			defer cancel()
			start := time.Now()
			bins, err := kube.Build(ctx, kube.BuildConfig{Out: cmd.OutOrStdout()})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Kubernetes %s binaries in %s (%s)\n", kube.Version, filepath.Dir(bins.Kubelet), time.Since(start).Round(time.Second))
			return nil
		},
	}
}

// newLabForward is the hidden `podnet lab forward`, started by the
// Kubernetes lab: it serves the API server on the machine's loopback.
func newLabForward() *cobra.Command {
	var fd int
	var nsPath, to string
	cmd := &cobra.Command{
		Use:    "forward",
		Short:  "Forward connections from a listener to an address inside a network namespace; started by the lab",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if fd < 3 || nsPath == "" || to == "" {
				return errors.New("forward: --listen-fd (≥ 3), --netns and --to are required")
			}
			ln, err := net.FileListener(os.NewFile(uintptr(fd), "listener"))
			if err != nil {
				return fmt.Errorf("forward: listener: %w", err)
			}
			ctx, cancel := signalContext(cmd)
			defer cancel()
			return lab.Forward(ctx, ln, nsPath, to)
		},
	}
	cmd.Flags().IntVar(&fd, "listen-fd", 0, "file descriptor of the listening socket")
	cmd.Flags().StringVar(&nsPath, "netns", "", "network namespace the connections are made in")
	cmd.Flags().StringVar(&to, "to", "", "address to connect to, host:port")
	return cmd
}
