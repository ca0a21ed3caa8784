package cniinstall

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestInstallPlugins installs twice: the second run changes nothing (same
// inodes), and a changed binary replaces every link atomically.
func TestInstallPlugins(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "podnet-cni")
	if err := os.WriteFile(src, []byte("v1"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "opt", "cni", "bin")
	names := []string{"podnet", "host-local", "portmap"}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	inode := func(p string) uint64 {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		return fi.Sys().(*syscall.Stat_t).Ino
	}
	first := inode(filepath.Join(bin, "podnet"))
	for _, n := range names {
		if inode(filepath.Join(bin, n)) != inode(filepath.Join(bin, "podnet-cni")) {
			t.Errorf("%s is not a link of podnet-cni", n)
		}
	}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	if inode(filepath.Join(bin, "podnet")) != first {
		t.Error("a second install of the same binary rewrote it")
	}
	if err := os.WriteFile(src, []byte("v2"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := installPlugins(src, bin, names); err != nil {
		t.Fatal(err)
	}
	for _, n := range append(names, "podnet-cni") {
		b, err := os.ReadFile(filepath.Join(bin, n))
		if err != nil || string(b) != "v2" {
			t.Errorf("%s holds %q (%v) after the upgrade, want v2", n, b, err)
		}
	}
	entries, _ := os.ReadDir(bin)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary file %s left in the bin dir", e.Name())
		}
	}
}
