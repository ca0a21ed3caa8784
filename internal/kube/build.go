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
	"path"
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

// The modules of the repository Build, BuildConformance and
// BuildCNPConformance build from: the Kubernetes components (and the
// upstream e2e suite), CoreDNS and the network-policy-api conformance
// suite, each apart because its dependencies are newer than Kubernetes'.
const (
	componentsDir = "internal/kube/components"
	corednsDir    = "internal/kube/coredns"
	cnpDir        = "internal/kube/cnp"
)

// npaModule is the module of the network-policy-api release the cnp
// module pins: its CRDs are installed from it.
const npaModule = "sigs.k8s.io/network-policy-api"

// cnpCRD is the standard channel's ClusterNetworkPolicy CRD in npaModule.
const cnpCRD = "config/crd/standard/policy.networking.k8s.io_clusternetworkpolicies.yaml"

// Binaries are absolute paths of the built components.
type Binaries struct {
	APIServer, ControllerManager, Scheduler, Kubelet, Proxy, Kubectl, Etcd string
}

// ConformanceBinaries are absolute paths of the conformance run's
// programs: the upstream end-to-end suite (`go test -c
// k8s.io/kubernetes/test/e2e`), the ginkgo command that runs it in
// parallel processes, its test image's agnhost and CoreDNS (the
// cluster's DNS).
type ConformanceBinaries struct {
	E2E, Ginkgo, Agnhost, CoreDNS string
}

// CNPConformance is the network-policy-api conformance suite's test
// binary (internal/kube/cnp built with go test -c) and the standard
// channel's ClusterNetworkPolicy CRD of the same release, both absolute
// paths.
type CNPConformance struct {
	Test, CRD string
}

// BuildConfig says where Build finds the repository and keeps the
// binaries.
type BuildConfig struct {
	// RepoDir is the podnet repository holding the modules built from;
	// empty: the repository holding the working directory (found upward
	// by its go.mod).
	RepoDir string
	// CacheDir holds the built binaries, one directory per cache key;
	// empty: DefaultCacheDir.
	CacheDir string
	// Out gets progress lines and the output of go build; nil discards.
	Out io.Writer
}

// buildTarget is one program a build makes: the file name it gets and
// the package it is built from, a test binary (go test -c) when test.
type buildTarget struct {
	file, pkg string
	test      bool
}

// buildSet is programs built from one module of the repository and
// cached together, in one directory per cache key.
type buildSet struct {
	// name prefixes the cache key ("" for the cluster's binaries) and
	// names the set in progress lines.
	name, module string
	targets      []buildTarget
}

// The sets: the cluster's binaries (go build names etcd's binary after
// its package, "server": it is built on its own with -o), the
// conformance suite and test image program, and CoreDNS.
var (
	clusterSet = buildSet{name: "", module: componentsDir, targets: []buildTarget{
		{file: "kube-apiserver", pkg: "k8s.io/kubernetes/cmd/kube-apiserver"},
		{file: "kube-controller-manager", pkg: "k8s.io/kubernetes/cmd/kube-controller-manager"},
		{file: "kube-scheduler", pkg: "k8s.io/kubernetes/cmd/kube-scheduler"},
		{file: "kubelet", pkg: "k8s.io/kubernetes/cmd/kubelet"},
		{file: "kube-proxy", pkg: "k8s.io/kubernetes/cmd/kube-proxy"},
		{file: "kubectl", pkg: "k8s.io/kubernetes/cmd/kubectl"},
		{file: "etcd", pkg: "go.etcd.io/etcd/server/v3"},
	}}
	e2eSet = buildSet{name: "e2e", module: componentsDir, targets: []buildTarget{
		{file: "e2e.test", pkg: "k8s.io/kubernetes/test/e2e", test: true},
		{file: "agnhost", pkg: "k8s.io/kubernetes/test/images/agnhost"},
		{file: "ginkgo", pkg: "github.com/onsi/ginkgo/v2/ginkgo"},
	}}
	corednsSet = buildSet{name: "coredns", module: corednsDir, targets: []buildTarget{
		{file: "coredns", pkg: repoModule + "/" + corednsDir},
	}}
	cnpSet = buildSet{name: "cnp", module: cnpDir, targets: []buildTarget{
		{file: "cnp.test", pkg: repoModule + "/" + cnpDir, test: true},
	}}
)

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
// cgo off (static binaries), no workspace (the modules stand alone) and
// none of the caller's default flags.
var buildEnvOverrides = []string{"CGO_ENABLED=0", "GOWORK=off", "GOFLAGS="}

// buildEnv is the environment of go build.
func buildEnv() []string {
	return append(os.Environ(), buildEnvOverrides...)
}

// Build returns the binaries of Version, building them with `go build`
// from the components module only when the cache (keyed by Version, a
// hash of the components module's go.mod, go.sum and Go files, the Go
// version and the build flags) does not have them. A build goes to a
// temporary directory renamed into place when complete, so a killed
// build leaves no partial cache entry; a lock file makes concurrent
// callers wait for one build instead of each running their own.
func Build(ctx context.Context, cfg BuildConfig) (Binaries, error) {
	dir, err := clusterSet.build(ctx, cfg)
	if err != nil {
		return Binaries{}, err
	}
	return binariesIn(dir), nil
}

// BuildConformance returns the conformance run's programs, built and
// cached as Build does its binaries: e2e.test and agnhost from the
// components module (Kubernetes Version), CoreDNS from its own module.
// The e2e suite is a large program: a cold build takes tens of minutes
// on 2 cores.
func BuildConformance(ctx context.Context, cfg BuildConfig) (ConformanceBinaries, error) {
	e2e, err := e2eSet.build(ctx, cfg)
	if err != nil {
		return ConformanceBinaries{}, err
	}
	dns, err := corednsSet.build(ctx, cfg)
	if err != nil {
		return ConformanceBinaries{}, err
	}
	return ConformanceBinaries{
		E2E:     filepath.Join(e2e, "e2e.test"),
		Ginkgo:  filepath.Join(e2e, "ginkgo"),
		Agnhost: filepath.Join(e2e, "agnhost"),
		CoreDNS: filepath.Join(dns, "coredns"),
	}, nil
}

// BuildCNPConformance returns the network-policy-api conformance suite's
// test binary, built and cached as Build does its binaries, and the CRD
// its release defines (from the Go module cache, where the build put the
// module).
func BuildCNPConformance(ctx context.Context, cfg BuildConfig) (CNPConformance, error) {
	dir, err := cnpSet.build(ctx, cfg)
	if err != nil {
		return CNPConformance{}, err
	}
	root := cfg.RepoDir
	if root == "" {
		if root, err = findRepo(); err != nil {
			return CNPConformance{}, err
		}
	}
	cmd := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", npaModule)
	cmd.Dir = filepath.Join(root, cnpDir)
	cmd.Env = buildEnv()
	out, err := cmd.Output()
	if err != nil {
		return CNPConformance{}, fmt.Errorf("kube build: locating %s: %w", npaModule, err)
	}
	crd := filepath.Join(strings.TrimSpace(string(out)), cnpCRD)
	if _, err := os.Stat(crd); err != nil {
		return CNPConformance{}, fmt.Errorf("kube build: %s CRD: %w", npaModule, err)
	}
	return CNPConformance{Test: filepath.Join(dir, "cnp.test"), CRD: crd}, nil
}

// binariesIn names the cluster's binaries in dir.
func binariesIn(dir string) Binaries {
	p := func(file string) string { return filepath.Join(dir, file) }
	return Binaries{
		APIServer: p("kube-apiserver"), ControllerManager: p("kube-controller-manager"), Scheduler: p("kube-scheduler"),
		Kubelet: p("kubelet"), Proxy: p("kube-proxy"), Kubectl: p("kubectl"), Etcd: p("etcd"),
	}
}

// build returns the directory holding the set's programs, building them
// into the cache unless its entry is complete.
func (s buildSet) build(ctx context.Context, cfg BuildConfig) (string, error) {
	out := cfg.Out
	if out == nil {
		out = io.Discard
	}
	root := cfg.RepoDir
	if root == "" {
		var err error
		if root, err = findRepo(); err != nil {
			return "", err
		}
	}
	src, err := filepath.Abs(filepath.Join(root, s.module))
	if err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	cacheDir := cfg.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir
	}
	if cacheDir, err = filepath.Abs(cacheDir); err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return "", fmt.Errorf("kube build: the go command is needed to build %s: %w", s.what(), err)
	}
	key, err := cacheKey(ctx, goBin, src)
	if err != nil {
		return "", err
	}
	if s.name != "" {
		key = s.name + "-" + key
	}
	final := filepath.Join(cacheDir, key)
	if s.complete(final) {
		return final, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	unlock, err := lockFile(ctx, final+".lock", out)
	if err != nil {
		return "", err
	}
	defer unlock()
	if s.complete(final) { // built by whoever held the lock
		return final, nil
	}
	// Clear an entry missing files and what killed builds of it left.
	stale, _ := filepath.Glob(filepath.Join(cacheDir, ".build-"+key+"-*"))
	for _, d := range append(stale, final) {
		if err := os.RemoveAll(d); err != nil {
			return "", fmt.Errorf("kube build: %w", err)
		}
	}
	tmp, err := os.MkdirTemp(cacheDir, ".build-"+key+"-")
	if err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	defer os.RemoveAll(tmp)
	start := time.Now()
	fmt.Fprintf(out, "kube: building %s from %s into %s (minutes on a cold Go build cache)\n", s.what(), src, final)
	if err := s.goBuild(ctx, out, goBin, src, tmp); err != nil {
		return "", err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	if err := os.Rename(tmp, final); err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	fmt.Fprintf(out, "kube: built in %s\n", time.Since(start).Round(time.Second))
	return final, nil
}

// what names the set's programs in messages.
func (s buildSet) what() string {
	if s.name == "" {
		return "Kubernetes " + Version + " and etcd"
	}
	var files []string
	for _, t := range s.targets {
		files = append(files, t.file)
	}
	return strings.Join(files, ", ")
}

// goBuild builds the set's programs into dir: the commands whose file is
// their package's name in one go build (it links them in parallel), each
// other one on its own (-o), test binaries with go test -c.
func (s buildSet) goBuild(ctx context.Context, out io.Writer, goBin, src, dir string) error {
	var together []string
	for _, t := range s.targets {
		if !t.test && t.file == path.Base(t.pkg) {
			together = append(together, t.pkg)
		}
	}
	if len(together) > 0 {
		args := append(append([]string{"build"}, buildFlags()...), "-o", dir+"/")
		if err := runGo(ctx, out, goBin, src, append(args, together...)...); err != nil {
			return err
		}
	}
	for _, t := range s.targets {
		if !t.test && t.file == path.Base(t.pkg) {
			continue
		}
		cmd := []string{"build"}
		if t.test {
			cmd = []string{"test", "-c"}
		}
		args := append(append(cmd, buildFlags()...), "-o", filepath.Join(dir, t.file), t.pkg)
		if err := runGo(ctx, out, goBin, src, args...); err != nil {
			return err
		}
	}
	return nil
}

// complete tells whether every program of the set is in dir.
func (s buildSet) complete(dir string) bool {
	for _, t := range s.targets {
		if !executable(filepath.Join(dir, t.file)) {
			return false
		}
	}
	return true
}

// binariesComplete tells whether every binary of b is there.
func binariesComplete(b Binaries) bool {
	for _, p := range []string{b.APIServer, b.ControllerManager, b.Scheduler, b.Kubelet, b.Proxy, b.Kubectl, b.Etcd} {
		if !executable(p) {
			return false
		}
	}
	return true
}

// executable tells whether path is an executable regular file.
func executable(path string) bool {
	st, err := os.Stat(path)
	return err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0
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
// digest of the module's go.mod, go.sum and Go files, the Go version,
// the target platform and the build flags and environment.
func cacheKey(ctx context.Context, goBin, src string) (string, error) {
	goFiles, err := filepath.Glob(filepath.Join(src, "*.go"))
	if err != nil {
		return "", fmt.Errorf("kube build: %w", err)
	}
	h := sha256.New()
	for _, file := range append([]string{filepath.Join(src, "go.mod"), filepath.Join(src, "go.sum")}, goFiles...) {
		b, err := os.ReadFile(file)
		if err != nil {
			return "", fmt.Errorf("kube build: module at %s: %w", src, err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.Base(file), len(b))
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
