package conformance

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/podnet/podnet/internal/image"
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
