package agent

import (
	"os"
	"path/filepath"
	"testing"
)

// TestInstallCNIBinary installs a binary that answers `names` like
// podnet-cni: each name it prints becomes a link, and nothing else does.
// A binary that does not answer installs nothing.
func TestInstallCNIBinary(t *testing.T) {
	dir := t.TempDir()
	src := filepath.Join(dir, "podnet-cni")
	script := "#!/bin/sh\n[ \"$1\" = names ] && printf 'podnet\\nportmap\\n'\n"
	if err := os.WriteFile(src, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "bin")
	if err := installCNIBinary(src, bin); err != nil {
		t.Fatal(err)
	}
	installed, err := os.Stat(filepath.Join(bin, "podnet-cni"))
	if err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(bin)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, e := range entries {
		got[e.Name()] = true
		if fi, err := os.Stat(filepath.Join(bin, e.Name())); err != nil || !os.SameFile(fi, installed) {
			t.Errorf("%s is not a link of the installed podnet-cni (%v)", e.Name(), err)
		}
	}
	if len(got) != 3 || !got["podnet"] || !got["portmap"] {
		t.Errorf("bin dir holds %v, want podnet-cni, podnet and portmap", got)
	}

	mute := filepath.Join(dir, "mute")
	if err := os.WriteFile(mute, []byte("#!/bin/sh\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := installCNIBinary(mute, empty); err == nil {
		t.Error("installed a binary that does not name its plugin types")
	}
	if _, err := os.Stat(empty); !os.IsNotExist(err) {
		t.Errorf("the failed install left %s (%v)", empty, err)
	}
}
