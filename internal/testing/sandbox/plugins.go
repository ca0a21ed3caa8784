package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/podnet/podnet/internal/cnibin"
)

// ReferenceDir is where Debian's containernetworking-plugins installs the
// reference plugins.
const ReferenceDir = "/usr/lib/cni"

// ModuleRoot returns the directory of podnet's go.mod, found from the
// working directory upwards.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		data, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.Contains(data, []byte("module github.com/podnet/podnet\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("podnet's go.mod not found above the working directory")
		}
		dir = parent
	}
}

// GoTool returns the go command: from PATH, else the toolchain that built
// this program, else /usr/local/go/bin/go.
func GoTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if p := filepath.Join(runtime.GOROOT(), "bin", "go"); fileExists(p) {
		return p
	}
	return "/usr/local/go/bin/go"
}

// Build runs `go build -o out pkg` in podnet's module root, stripped like
// `make build` does. pkg may be a module package path of any required
// module (e.g. github.com/containernetworking/cni/cnitool).
func Build(ctx context.Context, out, pkg string) error {
	root, err := ModuleRoot()
	if err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, GoTool(), "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if o, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, o)
	}
	return nil
}

// PodnetCNI returns the podnet-cni binary named by $PODNET_CNI_BIN
// (cnibin.EnvBinary), or builds ./cmd/podnet-cni into dir.
func PodnetCNI(ctx context.Context, dir string) (string, error) {
	if p := os.Getenv(cnibin.EnvBinary); p != "" {
		abs, err := filepath.Abs(p)
		if err != nil {
			return "", err
		}
		if !fileExists(abs) {
			return "", fmt.Errorf("$%s=%s does not exist (run make build)", cnibin.EnvBinary, p)
		}
		return abs, nil
	}
	out := filepath.Join(dir, "podnet-cni")
	if err := Build(ctx, out, "./cmd/podnet-cni"); err != nil {
		return "", err
	}
	return out, nil
}

var (
	sharedOnce sync.Once
	sharedDir  string
	sharedBin  string
	sharedErr  error
)

// SharedPodnetCNI is PodnetCNI done once per process into a temporary
// directory; CleanupShared removes it.
func SharedPodnetCNI(ctx context.Context) (string, error) {
	sharedOnce.Do(func() {
		sharedDir, sharedErr = os.MkdirTemp("", "podnet-cni-build-")
		if sharedErr != nil {
			return
		}
		sharedBin, sharedErr = PodnetCNI(ctx, sharedDir)
	})
	return sharedBin, sharedErr
}

// CleanupShared removes what SharedPodnetCNI built.
func CleanupShared() {
	if sharedDir != "" {
		os.RemoveAll(sharedDir)
	}
}

// HaveReference tells whether the reference plugins of these types are
// installed in ReferenceDir.
func HaveReference(types ...string) error {
	for _, t := range types {
		if !fileExists(filepath.Join(ReferenceDir, t)) {
			return fmt.Errorf("reference plugin %s not installed in %s (apt-get install containernetworking-plugins)", t, ReferenceDir)
		}
	}
	return nil
}

// Supports runs the plugin type from binDir with CNI_COMMAND=VERSION and
// fails with a clear message when it does not answer as a CNI plugin
// (for podnet-cni: the type is not registered in cmd/podnet-cni yet).
func Supports(binDir, typ string) error {
	p := filepath.Join(binDir, typ)
	cmd := exec.Command(p)
	cmd.Env = []string{"CNI_COMMAND=VERSION", "PATH=/usr/sbin:/usr/bin:/sbin:/bin"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.0.0"}`)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil || !bytes.Contains(out, []byte("supportedVersions")) {
		return fmt.Errorf("plugin %q (%s) does not answer VERSION (not registered in cmd/podnet-cni yet?): %v %s",
			typ, p, err, strings.TrimSpace(stderr.String()))
	}
	return nil
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}
