package main

import (
	"errors"
	"os"

	"github.com/spf13/cobra"

	"github.com/podnet/podnet/internal/kube"
)

// newKubeNode is the hidden `podnet kube-node`: the supervisor of one
// Kubernetes node of the lab or tests, started by kube.StartNode (never by
// hand: it must run in a mount namespace of its own).
func newKubeNode() *cobra.Command {
	var config string
	var readyFD int
	cmd := &cobra.Command{
		Use:    "kube-node",
		Short:  "Supervise one Kubernetes node (containerd, kubelet, kube-proxy); started by the lab",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if config == "" || readyFD < 3 {
				return errors.New("kube-node: --config and --ready-fd (≥ 3) are required")
			}
			return kube.Supervise(config, os.NewFile(uintptr(readyFD), "ready"))
		},
	}
	cmd.Flags().StringVar(&config, "config", "", "the node's configuration (JSON, written by kube.StartNode)")
	cmd.Flags().IntVar(&readyFD, "ready-fd", 0, "file descriptor the supervisor reports its readiness on")
	return cmd
}
