// Command podnet is podnet's user CLI: `podnet demo` attaches a pod to a
// bridge network through podnet's CNI plugins, the way a container runtime
// does, inside throwaway network namespaces; `podnet version` prints the
// release.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"

	"github.com/containernetworking/cni/pkg/version"
	"github.com/spf13/cobra"
)

// Version is podnet's release, set at build time with
// -ldflags '-X main.Version=…'.
var Version = "dev"

func main() {
	if err := newRoot().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "podnet:", err)
		os.Exit(1)
	}
}

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:           "podnet",
		Short:         "podnet — a Kubernetes pod network and CNI plugin suite",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newVersion(), newDemo(), newLab(), newKubeNode())
	return root
}

func newVersion() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print podnet's version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(cmd.OutOrStdout(), "podnet %s (%s, %s/%s)\nCNI spec versions: %s\n",
				Version, runtime.Version(), runtime.GOOS, runtime.GOARCH,
				strings.Join(version.All.SupportedVersions(), ", "))
			return nil
		},
	}
}
