// Command podnet-cni is podnet's multi-call CNI plugin binary. Installed as
// hard links named after the plugin types (bridge, ptp, host-local, …), it
// acts as the plugin named by argv[0]. Run as podnet-cni with the argument
// "names", it prints the type names, one per line (make build and the
// agent's installer create one link per name).
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/plugins/all"
)

func main() {
	if filepath.Base(os.Args[0]) == "podnet-cni" && len(os.Args) == 2 && os.Args[1] == "names" {
		for _, n := range all.Names() {
			fmt.Println(n)
		}
		return
	}
	cniplugin.Main(all.Plugins())
}
