package cniruntime

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestLinkDir(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	// A hard link for a same-filesystem target; a symlink across (/proc is
	// another filesystem and cannot be hard linked).
	if err := LinkDir(bin, map[string]string{"a": target, "b": "/proc/self/exe"}); err != nil {
		t.Fatal(err)
	}
	a, _ := os.Stat(filepath.Join(bin, "a"))
	ti, _ := os.Stat(target)
	if !os.SameFile(a, ti) {
		t.Error("a is not a hard link of target")
	}
	if fi, err := os.Lstat(filepath.Join(bin, "b")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("b is not a symlink: %v", err)
	}
	// Relinking replaces.
	if err := LinkDir(bin, map[string]string{"a": target}); err != nil {
		t.Fatal(err)
	}
}

func TestRandomID(t *testing.T) {
	a, b := RandomID(), RandomID()
	if len(a) != 64 || a == b || strings.Trim(a, "0123456789abcdef") != "" {
		t.Errorf("RandomID: %q %q", a, b)
	}
}
