package kube

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

func TestFindRepo(t *testing.T) {
	root, err := findRepo()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, componentsDir, "go.mod")); err != nil {
		t.Errorf("repo %s has no components module: %v", root, err)
	}
	t.Chdir(t.TempDir())
	if _, err := findRepo(); err == nil {
		t.Error("found a repository above a temporary directory")
	}
}

func TestCacheKey(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command")
	}
	src := t.TempDir()
	for _, name := range []string{"go.mod", "go.sum", "tools.go"} {
		if err := os.WriteFile(filepath.Join(src, name), []byte(name), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	first, err := cacheKey(ctx, goBin, src)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := cacheKey(ctx, goBin, src); err != nil || again != first {
		t.Errorf("key of the same module: %q, %v; want %q", again, err, first)
	}
	if err := os.WriteFile(filepath.Join(src, "go.sum"), []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	second, err := cacheKey(ctx, goBin, src)
	if err != nil || second == first {
		t.Errorf("key after go.sum changed: %q, %v; want another than %q", second, err, first)
	}
	if err := os.WriteFile(filepath.Join(src, "tools.go"), []byte("other"), 0o644); err != nil {
		t.Fatal(err)
	}
	if third, err := cacheKey(ctx, goBin, src); err != nil || third == second {
		t.Errorf("key after a Go file changed: %q, %v; want another than %q", third, err, second)
	}
	if err := os.Remove(filepath.Join(src, "go.sum")); err != nil {
		t.Fatal(err)
	}
	if _, err := cacheKey(ctx, goBin, src); err == nil {
		t.Error("a key for a module missing go.sum")
	}
}
