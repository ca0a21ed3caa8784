// Command gen writes deploy/podnet-cleanup.yaml from deploy/podnet.yaml
// (go generate ./deploy runs it in deploy/).
package main

import (
	"fmt"
	"os"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/atomicfile"
)

func main() {
	b, err := os.ReadFile("podnet.yaml")
	if err == nil {
		b, err = deploy.CleanupOf(b)
	}
	if err == nil {
		_, err = atomicfile.Write("podnet-cleanup.yaml", b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
