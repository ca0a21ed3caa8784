package kube

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Version is the pinned Kubernetes release: the one the components module
// (internal/kube/components) requires.
const Version = "v1.32.3"

// DefaultCacheDir is where Build keeps built binaries when
// BuildConfig.CacheDir is empty.
const DefaultCacheDir = "/var/cache/podnet/kube"

// repoModule is the main module's path: Build finds the repository by it.
const repoModule = "github.com/podnet/podnet"

// componentsDir is the components module's directory in the repository.
const componentsDir = "internal/kube/components"

// Binaries are absolute paths of the built components.
type Binaries struct {
	APIServer, ControllerManager, Scheduler, Kubelet, Proxy, Kubectl, Etcd string
}

// BuildConfig says where Build finds the components module and keeps the
// binaries.
type BuildConfig struct {
	// SourceDir is the components module's directory; empty: the
	// repository holding the working directory (found upward by its
	// go.mod), then internal/kube/components.
	SourceDir string
	// CacheDir holds the built binaries, one directory per cache key;
	// empty: DefaultCacheDir.
	CacheDir string
	// Out gets progress lines and the output of go build; nil discards.
	Out io.Writer
}

// buildTarget is one binary Build makes: the file name it gets and the
// package it is built from.
type buildTarget struct {
	file, pkg string
	path      func(*Binaries) *string
}

// buildTargets are the binaries of a cluster. go build names etcd's
// binary after its package ("server"): it is built on its own with -o.
var buildTargets = []buildTarget{
	{"kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver", func(b *Binaries) *string { return &b.APIServer }},
	{"kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager", func(b *Binaries) *string { return &b.ControllerManager }},
	{"kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler", func(b *Binaries) *string { return &b.Scheduler }},
	{"kubelet", "k8s.io/kubernetes/cmd/kubelet", func(b *Binaries) *string { return &b.Kubelet }},
	{"kube-proxy", "k8s.io/kubernetes/cmd/kube-proxy", func(b *Binaries) *string { return &b.Proxy }},
	{"kubectl", "k8s.io/kubernetes/cmd/kubectl", func(b *Binaries) *string { return &b.Kubectl }},
	{"etcd", "go.etcd.io/etcd/server/v3", func(b *Binaries) *string { return &b.Etcd }},
}

// buildFlags are go build's flags: static binaries, no local paths, and
// the version the components report (kubectl cannot parse a server
// version without it).
func buildFlags() []string {
	major, minor := versionParts()
	return []string{
		"-trimpath",
		"-ldflags=-s -w" +
			" -X k8s.io/component-base/version.gitVersion=" + Version +
			" -X k8s.io/component-base/version.gitMajor=" + major +
			" -X k8s.io/component-base/version.gitMinor=" + minor,
	}
}

// versionParts splits Version ("v1.32.3") into its major and minor
// numbers.
func versionParts() (major, minor string) {
	parts := strings.SplitN(strings.TrimPrefix(Version, "v"), ".", 3)
	return parts[0], parts[1]
}

// buildEnvOverrides are set over the caller's environment for go build:
// cgo off (static binaries), no workspace (the components module stands
// alone) and none of the caller's default flags.
var buildEnvOverrides = []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS="}

// buildEnv is the environment of go build.
func buildEnv() []string {
	return append(os.Environ(), buildEnvOverrides...)
}

// Build returns the binaries of Version, building them with `go build`
// from the components module only when the cache (keyed by Version, a
// hash of the components module's go.mod and go.sum, the Go version and
// the build flags) does not have them. A build goes to a temporary
// directory renamed into place when complete, so a killed build leaves no
// partial cache entry; a lock file makes concurrent callers wait for one
// build instead of each running their own.
func Build(ctx context.Context, cfg BuildConfig) (Binaries, error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	src := cfg.SourceDir
	if src == "" {
		root, err := findRepo()
		if err != nil {
			return Binaries{}, err
		}
		src = filepath.Join(root, componentsDir)
	}
	src, err := filepath.Abs(src)
	if err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir
	}
	if cacheDir, err = filepath.Abs(cacheDir); err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return Binaries{}, fmt.Errorf("kube build: the go command is needed to build Kubernetes %s: %w", Version, err)
	}
	key, err := cacheKey(ctx, goBin, src)
	if err != nil {
		return Binaries{}, err
	}
	final := filepath.Join(cacheDir, key)
	bins := binariesIn(final)
	if binariesComplete(bins) {
		return bins, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock", out)
	if err != nil {
		return Binaries{}, err
	}
	defer unlock()
	if binariesComplete(bins) { // built by whoever held the lock
		return bins, nil
	}
	// Clear an entry missing files and what killed builds of it left.
	stale, _ := filepath.Glob(filepath.Join(cacheDir, ".build-"+key+"-*"))
	for _, d := range append(stale, final) {
		if err := os.RemoveAll(d); err != nil {
			return Binaries{}, fmt.Errorf("kube build: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(cacheDir, ".build-"+key+"-")
	if err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	fmt.Fprintf(out, "kube: building Kubernetes %s and etcd from %s into %s (minutes on a cold Go build cache)\n", Version, src, final)
	if err := goBuild(ctx, out, goBin, src, tmp); err != nil {
		return Binaries{}, err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return Binaries{}, fmt.Errorf("kube build: %w", err)
	}
	fmt.Fprintf(out, "kube: built in %s\n", time.Since(start).Round(time.Second))
	return bins, nil
}

// goBuild builds every component into dir: the Kubernetes commands in one
// go build (it links them in parallel), then etcd under its own name.
func goBuild(ctx context.Context, out io.Writer, goBin, src, dir string) error {
	var kube []string
	for _, c := range buildTargets {
		if c.file != "etcd" {
			kube = append(kube, c.pkg)
		}
	}
	args := append(append([]string{"build"}, buildFlags()...), "-o", dir+"/")
	if err := runGo(ctx, out, goBin, src, append(args, kube...)...); err != nil {
		return err
	}
	args = append(append([]string{"build"}, buildFlags()...), "-o", filepath.Join(dir, "etcd"))
	return runGo(ctx, out, goBin, src, append(args, "go.etcd.io/etcd/server/v3")...)
}

// runGo runs the go command in dir, its output going to out; the error
// carries the output's last lines.
func runGo(ctx context.Context, out io.Writer, goBin, dir string, args ...string) error {
	var tail bytes.Buffer
	cmd := exec.CommandContext(ctx, goBin, args...)
	cmd.Dir = dir
	cmd.Env = buildEnv()
	cmd.Stdout = io.MultiWriter(out, &tail)
	cmd.Stderr = cmd.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kube build: go %s: %w\n%s", strings.Join(args, " "), err, lastLines(tail.Bytes(), 20))
	}
	return nil
}

// lastLines is the last n lines of b.
func lastLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// cacheKey names the cache entry of a build from src: Version, the
// digest of the module's go.mod, go.sum and tools.go, the Go version,
// the target platform and the build flags and environment.
func cacheKey(ctx context.Context, goBin, src string) (string, error) {
	h := sha256.New()
	for _, name := range []string{"go.mod", "go.sum", "tools.go"} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", fmt.Errorf("kube build: components module at %s: %w", src, err)
		}
		fmt.Fprintf(h, "%s %d\n", name, len(b))
		h.Write(b)
	}
	cmd := exec.CommandContext(ctx, goBin, "env", "GOVERSION", "GOOS", "GOARCH")
	cmd.Dir = src
	cmd.Env = buildEnv()
	goEnv, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("kube build: go env: %w", err)
	}
	h.Write(goEnv)
	fmt.Fprintf(h, "%q %q\n", buildFlags(), buildEnvOverrides)
	return Version + "-" + hex.EncodeToString(h.Sum(nil))[:16], nil
}

// binariesIn names the binaries in dir.
func binariesIn(dir string) Binaries {
	var b Binaries
	for _, c := range buildTargets {
		*c.path(&b) = filepath.Join(dir, c.file)
	}
	return b
}

// binariesComplete tells whether every binary of b is there.
func binariesComplete(b Binaries) bool {
	for _, c := range buildTargets {
		st, err := os.Stat(*c.path(&b))
		if err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
			return false
		}
	}
	return true
}

// lockFile takes an exclusive lock on path (created if missing), waiting
// for another holder until ctx ends; unlock releases it.
func lockFile(ctx context.Context, path string, out io.Writer) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kube build: lock: %w", err)
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("kube build: lock %s: %w", path, err)
		}
		if !told {
			fmt.Fprintf(out, "kube: waiting for another build holding %s\n", path)
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("kube build: waiting for %s: %w", path, ctx.Err())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// findRepo finds the podnet repository: the working directory or the
// nearest one above it whose go.mod declares the podnet module.
func findRepo() (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if module, err := modulePath(filepath.Join(dir, "go.mod")); err == nil && module == repoModule {
			return dir, nil
		} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return "", fmt.Errorf("kube build: %w", err)
		}
		if filepath.Dir(dir) == dir {
			return "", fmt.Errorf("kube build: no %s module at or above %s: set the components module's directory", repoModule, wd)
		}
	}
}

// modulePath reads the module path a go.mod declares.
func modulePath(gomod string) (string, error) {
	f, err := os.Open(gomod)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`), nil
		}
	}
	return "", sc.Err()
}
