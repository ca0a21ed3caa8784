// Command image writes podnet's container image (deploy.Image) as a
// docker-archive: make image runs it on make build's binaries.
//
//	go run ./deploy/image -bin bin -ref ghcr.io/podnet/podnet:dev -o bin/podnet-image.tar
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/podnet/podnet/deploy"
	"github.com/podnet/podnet/internal/image"
)

func main() {
	bin := flag.String("bin", "bin", "directory of the built podnet-agent, podnet-cni and podnet")
	ref := flag.String("ref", deploy.Ref, "the image's name and tag")
	out := flag.String("o", "bin/podnet-image.tar", "the archive to write")
	flag.Parse()
	spec, err := deploy.Image(*bin, *ref)
	if err == nil {
		err = image.Write(*out, spec)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
	fmt.Printf("%s: %s\n", *out, *ref)
}
