package conformance

import (
	"context"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podnet/podnet/internal/image"
	"github.com/podnet/podnet/internal/kube"
)

// TestWithLibraries puts the agnhost image's host programs with their
// libraries into a directory and runs them chrooted there: they start
// with nothing but what withLibraries collected.
func TestWithLibraries(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root (chroot)")
	}
	root := t.TempDir()
	for dst, src := range hostPrograms {
		if _, err := os.Stat(src); err != nil {
			t.Skipf("%s: %v (.ci/deps installs it)", src, err)
		}
		files, err := withLibraries(dst, src)
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range files {
			p := filepath.Join(root, f.Path)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, f.Data, f.Mode.Perm()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"/usr/bin/curl", "--version"}, "curl "},
		{[]string{"/usr/bin/nc", "-h"}, "OpenBSD netcat"},
		{[]string{"/usr/bin/wget", "--version"}, "GNU Wget"},
		{[]string{"/bin/sh", "-c", "echo from dash: $0"}, "from dash: /bin/sh"},
	} {
		cmd := exec.Command(tc.args[0], tc.args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root}
		cmd.Dir = "/"
		out, _ := cmd.CombinedOutput() // nc -h exits 1
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%v chrooted: %q, want %q in it", tc.args, out, tc.want)
		}
	}
}

func TestWithLibrariesErrors(t *testing.T) {
	static := filepath.Join(t.TempDir(), "static")
	if err := os.WriteFile(static, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"/nonexistent", static} {
		if _, err := withLibraries("/x", src); err == nil {
			t.Errorf("%s: no error", src)
		}
	}
	if _, err := findLibrary("libnothing.so.9", libraryDirs); err == nil || !strings.Contains(err.Error(), "libnothing") {
		t.Errorf("missing library: %v", err)
	}
}

func TestDedupe(t *testing.T) {
	files := []image.File{{Path: "/a", Data: []byte("1")}, {Path: "/b"}, {Path: "/a", Data: []byte("2")}, {Path: "/tmp", Mode: fs.ModeDir}}
	got := dedupe(files)
	if len(got) != 3 || string(got[0].Data) != "1" || got[2].Path != "/tmp" {
		t.Errorf("dedupe: %+v", got)
	}
}

func TestImages(t *testing.T) {
	for _, p := range append([]string{"/bin/busybox"}, slices.Collect(maps.Values(hostPrograms))...) {
		if _, err := os.Stat(p); err != nil {
			t.Skipf("%s: %v (.ci/deps installs it)", p, err)
		}
	}
	dir := t.TempDir()
	bins := kube.ConformanceBinaries{Agnhost: filepath.Join(dir, "agnhost"), CoreDNS: filepath.Join(dir, "coredns")}
	for _, p := range []string{bins.Agnhost, bins.CoreDNS} {
		if err := os.WriteFile(p, []byte("program"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	archives, err := Images(context.Background(), filepath.Join(dir, "images"), bins)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"agnhost.tar": {AgnhostImage, AgnhostCNPImage}, "busybox.tar": {BusyboxImage}, "coredns.tar": {CoreDNSImage}}
	if len(archives) != len(want) {
		t.Fatalf("archives %v, want %d", archives, len(want))
	}
	for _, a := range archives {
		m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(a) })
		if err != nil {
			t.Fatalf("%s: %v", a, err)
		}
		var tags []string
		for _, d := range m {
			tags = append(tags, d.RepoTags...)
		}
		if !slices.Equal(tags, want[filepath.Base(a)]) {
			t.Errorf("%s holds %v, want %v", a, tags, want[filepath.Base(a)])
		}
	}
	if _, err := Images(context.Background(), filepath.Join(dir, "images"), kube.ConformanceBinaries{Agnhost: "/nonexistent"}); err == nil {
		t.Error("images of a missing agnhost: no error")
	}
}
