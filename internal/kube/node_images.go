package kube

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"

	"github.com/podnet/podnet/internal/image"
)

// The images every node has: the pod sandbox (kubelet's and containerd's
// sandbox image) and a busybox for test pods, built locally (there is no
// registry) and imported into each node's containerd.
const (
	// PauseImage holds a pod's namespaces: the static Go program of
	// ./pause, which sleeps until SIGTERM or SIGINT.
	PauseImage = "registry.k8s.io/pause:3.10"
	// BusyboxImage is Debian's busybox-static (BusyboxBinary) with applet
	// links for BusyboxApplets in /bin, PATH=/bin, and sh as its command.
	BusyboxImage = "podnet.dev/busybox:1.35"
)

// BusyboxBinary is where Debian's busybox-static installs busybox.
const BusyboxBinary = "/bin/busybox"

// BusyboxApplets are the commands BusyboxImage links to busybox. (Its
// wget segfaults on these machines; nc works.)
var BusyboxApplets = []string{"sh", "nc", "ping", "ip", "sleep", "cat", "ls", "date", "wc", "dd", "head"}

// pausePackage is the pause program's package in the podnet module.
const pausePackage = repoModule + "/internal/kube/pause"

// PodImages writes the archives of PauseImage (pause.tar; the pause
// program built static from the podnet repository holding the working
// directory) and BusyboxImage (busybox.tar) into dir, and returns their
// paths, for NodeConfig.Images.
func PodImages(ctx context.Context, dir string) ([]string, error) {
	pause, err := buildPause(ctx, dir)
	if err != nil {
		return nil, err
	}
	busybox, err := busyboxSpec()
	if err != nil {
		return nil, err
	}
	specs := []image.Spec{
		{Ref: PauseImage, Files: []image.File{{Path: "/pause", Mode: 0o755, Data: pause}}, Entrypoint: []string{"/pause"}},
		busybox,
	}
	paths := []string{filepath.Join(dir, "pause.tar"), filepath.Join(dir, "busybox.tar")}
	for i, s := range specs {
		if err := image.Write(paths[i], s); err != nil {
			return nil, fmt.Errorf("pod image %s: %w", s.Ref, err)
		}
	}
	return paths, nil
}

// buildPause builds the pause program into dir and returns it.
func buildPause(ctx context.Context, dir string) ([]byte, error) {
	root, err := findRepo()
	if err != nil {
		return nil, err
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("pause image: the go command is needed to build the pause program: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	out := filepath.Join(dir, "pause")
	if err := runGo(ctx, io.Discard, goBin, root, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pausePackage); err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	defer os.Remove(out)
	b, err := os.ReadFile(out)
	if err != nil {
		return nil, fmt.Errorf("pause image: %w", err)
	}
	return b, nil
}

// busyboxSpec is BusyboxImage made of this machine's busybox-static.
func busyboxSpec() (image.Spec, error) {
	if err := checkStatic(BusyboxBinary); err != nil {
		return image.Spec{}, fmt.Errorf("busybox image: %w (apt-get install busybox-static; .ci/deps installs it)", err)
	}
	b, err := os.ReadFile(BusyboxBinary)
	if err != nil {
		return image.Spec{}, fmt.Errorf("busybox image: %w", err)
	}
	files := []image.File{{Path: "/bin/busybox", Mode: 0o755, Data: b}}
	for _, a := range BusyboxApplets {
		files = append(files, image.File{Path: "/bin/" + a, Link: "busybox"})
	}
	return image.Spec{Ref: BusyboxImage, Files: files, Cmd: []string{"sh"}, Env: []string{"PATH=/bin"}}, nil
}

// checkStatic fails unless path is a statically linked ELF program (the
// image has no libraries for a dynamic one).
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New(path + " is dynamically linked")
		}
	}
	return nil
}
