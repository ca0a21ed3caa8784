package agent

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/podnet/podnet/internal/cnibin"
)

// installCNIBinary installs the podnet-cni binary into binDir with one
// hard link per plugin type it answers to. It asks the binary itself
// (`podnet-cni names`), so the links match exactly the binary installed,
// whatever its version, and the agent need not link every plugin.
func installCNIBinary(binary, binDir string) error {
	names, err := cnibin.Names(binary)
	if err != nil {
		return fmt.Errorf("install plugins: %w", err)
	}
	return installPlugins(binary, binDir, names)
}

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
		if err := copyAtomic(binary, dst); err != nil {
			return err
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

func copyAtomic(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("plugin binary: %w", err)
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".podnet-cni-")
	if err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, in)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o755)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), dst)
	}
	if err != nil {
		return fmt.Errorf("install plugin binary: %w", err)
	}
	return nil
}

// writeAtomic writes data to path through a temporary file and a rename,
// unless the file already holds exactly data; it reports whether it wrote.
func writeAtomic(path string, data []byte) (bool, error) {
	if cur, err := os.ReadFile(path); err == nil && bytes.Equal(cur, data) {
		return false, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return false, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	_, err = tmp.Write(data)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return false, fmt.Errorf("write %s: %w", path, err)
	}
	return true, nil
}
