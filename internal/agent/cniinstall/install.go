package cniinstall

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/internal/atomicfile"
)

// installPlugins copies the podnet-cni binary into binDir (unless an
// identical one is there) and makes each plugin name a hard link to it.
// Every file appears atomically (written or linked under a temporary
// name, then renamed), so a runtime never executes a half-written plugin.
func installPlugins(binary, binDir string, names []string) error {
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return fmt.Errorf("create CNI bin dir: %w", err)
	}
	dst := filepath.Join(binDir, "podnet-cni")
	same, err := sameContent(binary, dst)
	if err != nil {
		return err
	}
	if !same {
		if err := atomicfile.Copy(binary, dst, 0o755); err != nil {
			return fmt.Errorf("install plugin binary: %w", err)
		}
	}
	di, err := os.Stat(dst)
	if err != nil {
		return fmt.Errorf("installed plugin: %w", err)
	}
	for _, n := range names {
		p := filepath.Join(binDir, n)
		if fi, err := os.Stat(p); err == nil && os.SameFile(fi, di) {
			continue
		}
		tmp := filepath.Join(binDir, "."+n+".podnet-tmp")
		os.Remove(tmp)
		if err := os.Link(dst, tmp); err != nil {
			return fmt.Errorf("link plugin %s: %w", n, err)
		}
		if err := os.Rename(tmp, p); err != nil {
			os.Remove(tmp)
			return fmt.Errorf("install plugin %s: %w", n, err)
		}
	}
	return nil
}

func sameContent(a, b string) (bool, error) {
	ha, err := fileHash(a)
	if err != nil {
		return false, fmt.Errorf("plugin binary: %w", err)
	}
	hb, err := fileHash(b)
	if err != nil {
		return false, nil
	}
	return bytes.Equal(ha, hb), nil
}

func fileHash(p string) ([]byte, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}
