package conformance

import (
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/podnet/podnet/internal/image"
	"github.com/podnet/podnet/internal/kube"
)

// The images the suites run, under the references the e2e suite of
// kube.Version asks for (k8s.io/kubernetes/test/utils/image) and the
// network-policy-api conformance suite's manifests name, built here
// because there is no registry to pull them from; and the cluster DNS's.
const (
	// AgnhostImage is agnhost (kube.ConformanceBinaries.Agnhost) as
	// /agnhost, its entrypoint, with busybox's applets, bash, curl and
	// OpenBSD's nc: the commands the tests exec in its pods.
	AgnhostImage = "registry.k8s.io/e2e-test-images/agnhost:2.53"
	// AgnhostCNPImage is the same image under the tag the
	// network-policy-api suite's pods run (`/bin/bash -c "/agnhost ..."`).
	AgnhostCNPImage = "registry.k8s.io/e2e-test-images/agnhost:2.45"
	// BusyboxImage is busybox with all its applets.
	BusyboxImage = "registry.k8s.io/e2e-test-images/busybox:1.36.1-1"
	// CoreDNSImage is CoreDNS (kube.ConformanceBinaries.CoreDNS) as
	// /coredns, its entrypoint.
	CoreDNSImage = "podnet.dev/coredns:v1.12.1"
)

// Programs of this machine the agnhost image carries with their shared
// libraries, image path to host path (.ci/deps installs them), instead of
// busybox's applets of the same names: the tests run `curl ...`,
// `wget -q -O - ...` (busybox's wget segfaults on these machines) and
// `echo ... | nc -v -u -w 2 host port` (busybox's nc has no -v, -u) in
// agnhost pods; /bin/sh is dash, because Debian's static busybox shell
// runs its own applets before any program on PATH; the network-policy-api
// suite's pods start with /bin/bash (busybox has none).
var hostPrograms = map[string]string{
	"/bin/bash":     "/bin/bash",
	"/usr/bin/curl": "/usr/bin/curl",
	"/usr/bin/wget": "/usr/bin/wget",
	"/usr/bin/nc":   "/bin/nc.openbsd",
	"/bin/sh":       "/bin/dash",
}

// imagePath is the images' PATH.
const imagePath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// Images writes the archives of AgnhostImage (with AgnhostCNPImage),
// BusyboxImage and CoreDNSImage into dir and returns their paths, for
// kube.Node.ImportImages.
func Images(ctx context.Context, dir string, bins kube.ConformanceBinaries) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("conformance images: %w", err)
	}
	busybox, err := busyboxFiles(ctx)
	if err != nil {
		return nil, err
	}
	agnhostBusybox := slices.DeleteFunc(slices.Clone(busybox), func(f image.File) bool {
		for dst := range hostPrograms {
			if path.Base(dst) == path.Base(f.Path) {
				return true
			}
		}
		return false
	})
	agnhost, err := readFile("/agnhost", bins.Agnhost, 0o755)
	if err != nil {
		return nil, err
	}
	agnhostFiles := append(agnhostBusybox, agnhost, image.File{Path: "/tmp", Mode: fs.ModeDir | 0o1777})
	for dst, src := range hostPrograms {
		files, err := withLibraries(dst, src)
		if err != nil {
			return nil, fmt.Errorf("agnhost image: %w (.ci/deps installs curl, wget and netcat-openbsd; dash is Debian's /bin/sh)", err)
		}
		agnhostFiles = append(agnhostFiles, files...)
	}
	coredns, err := readFile("/coredns", bins.CoreDNS, 0o755)
	if err != nil {
		return nil, err
	}
	agnhostSpec := image.Spec{Ref: AgnhostImage, Files: dedupe(agnhostFiles), Entrypoint: []string{"/agnhost"}, Cmd: []string{"pause"}, Env: []string{imagePath}}
	agnhostCNP := agnhostSpec
	agnhostCNP.Ref = AgnhostCNPImage
	specs := map[string][]image.Spec{
		"agnhost.tar": {agnhostSpec, agnhostCNP},
		"busybox.tar": {{Ref: BusyboxImage, Files: append(busybox, image.File{Path: "/tmp", Mode: fs.ModeDir | 0o1777}), Cmd: []string{"sh"}, Env: []string{imagePath}}},
		"coredns.tar": {{Ref: CoreDNSImage, Files: []image.File{coredns}, Entrypoint: []string{"/coredns"}}},
	}
	var paths []string
	for _, file := range slices.Sorted(maps.Keys(specs)) {
		p := filepath.Join(dir, file)
		if err := image.Write(p, specs[file]...); err != nil {
			return nil, fmt.Errorf("conformance image %s: %w", specs[file][0].Ref, err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// readFile is the image file at dst holding the host file src.
func readFile(dst, src string, mode fs.FileMode) (image.File, error) {
	b, err := os.ReadFile(src)
	if err != nil {
		return image.File{}, fmt.Errorf("conformance image: %w", err)
	}
	return image.File{Path: dst, Mode: mode, Data: b}, nil
}

// busyboxFiles are this machine's static busybox as /bin/busybox with a
// link in /bin for each of its applets.
func busyboxFiles(ctx context.Context) ([]image.File, error) {
	bb, err := readFile("/bin/busybox", kube.BusyboxBinary, 0o755)
	if err != nil {
		return nil, fmt.Errorf("%w (apt-get install busybox-static; .ci/deps installs it)", err)
	}
	out, err := exec.CommandContext(ctx, kube.BusyboxBinary, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	files := []image.File{bb}
	for _, applet := range strings.Fields(string(out)) {
		if applet != "busybox" {
			files = append(files, image.File{Path: "/bin/" + applet, Link: "busybox"})
		}
	}
	return files, nil
}

// libraryDirs are where withLibraries looks for shared libraries, after
// the dynamic loader's own directory.
var libraryDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// withLibraries is the dynamically linked program src as the image file
// dst, with its dynamic loader and every shared library it needs
// (transitively) at the paths the loader finds them on this machine.
func withLibraries(dst, src string) ([]image.File, error) {
	prog, err := readFile(dst, src, 0o755)
	if err != nil {
		return nil, err
	}
	f, err := elf.Open(src)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", src, err)
	}
	defer f.Close()
	var interp string
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return nil, fmt.Errorf("%s: interpreter: %w", src, err)
			}
			interp = strings.TrimRight(string(b), "\x00")
		}
	}
	if interp == "" {
		return nil, fmt.Errorf("%s is not dynamically linked", src)
	}
	files := []image.File{prog}
	ld, err := readFile(interp, interp, 0o755)
	if err != nil {
		return nil, err
	}
	files = append(files, ld)
	dirs := append([]string{filepath.Dir(interp)}, libraryDirs...)
	seen := map[string]bool{}
	queue := []string{src}
	for len(queue) > 0 {
		obj := queue[0]
		queue = queue[1:]
		needed, err := neededLibraries(obj)
		if err != nil {
			return nil, err
		}
		for _, lib := range needed {
			if seen[lib] {
				continue
			}
			seen[lib] = true
			path, err := findLibrary(lib, dirs)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", obj, err)
			}
			if path == interp {
				continue
			}
			file, err := readFile(path, path, 0o644)
			if err != nil {
				return nil, err
			}
			files = append(files, file)
			queue = append(queue, path)
		}
	}
	return files, nil
}

// neededLibraries are the DT_NEEDED entries of the ELF object at path.
func neededLibraries(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil {
		return nil, fmt.Errorf("%s: needed libraries: %w", path, err)
	}
	return libs, nil
}

// findLibrary finds the shared library name in dirs.
func findLibrary(name string, dirs []string) (string, error) {
	for _, d := range dirs {
		p := filepath.Join(d, name)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	return "", errors.New("shared library " + name + " not found in " + strings.Join(dirs, ", "))
}

// dedupe drops the later of files with the same path (two programs
// needing one library).
func dedupe(files []image.File) []image.File {
	seen := map[string]bool{}
	var out []image.File
	for _, f := range files {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	return out
}
