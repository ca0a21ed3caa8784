package netns

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
)

func TestOpenErrors(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	for _, tc := range []struct {
		path string
		code uint
	}{
		{"", types.ErrInvalidEnvironmentVariables},
		{"/nonexistent/netns", types.ErrUnknownContainer},
		{f.Name(), types.ErrInvalidEnvironmentVariables},
		{"/proc/self/ns/uts", types.ErrInvalidEnvironmentVariables},
		{"/proc/thread-self/ns/net", types.ErrInvalidEnvironmentVariables},
	} {
		_, err := Open(tc.path)
		e, ok := err.(*types.Error)
		if !ok || e.Code != tc.code {
			t.Errorf("Open(%q) = %v, want code %d", tc.path, err, tc.code)
		}
	}
	t.Setenv("CNI_NETNS_OVERRIDE", "1")
	ns, err := Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatalf("own namespace with CNI_NETNS_OVERRIDE=1: %v", err)
	}
	ns.Close()
}

func TestTempAndDo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	tmp, err := NewTemp("pntest")
	if err != nil {
		t.Fatal(err)
	}
	defer tmp.Remove()
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	var inside *NS
	if err := tmp.Do(func() error {
		var err error
		inside, err = Current()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Handle().Equal(tmp.Handle()) {
		t.Error("Do did not run inside the namespace")
	}
	after, _ := Current()
	defer after.Close()
	if !after.Handle().Equal(cur.Handle()) {
		t.Error("caller's namespace changed")
	}
	if err := tmp.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp.Path()); !os.IsNotExist(err) {
		t.Errorf("netns file remains: %v", err)
	}
}

// TestDeleteNamedLeftovers covers what a process killed inside Create
// leaves: a binding file without its mount. DeleteNamed removes it, and a
// second delete of the same name is no error.
func TestDeleteNamedLeftovers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	tmp, err := NewTemp("pntest")
	if err != nil {
		t.Fatal(err)
	}
	tmp.Close()
	bare := tmp.Name + "-bare"
	if err := os.WriteFile(filepath.Join(RunDir, bare), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{tmp.Name, bare, tmp.Name, bare} {
		if err := DeleteNamed(name); err != nil {
			t.Errorf("DeleteNamed(%s): %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(RunDir, name)); !os.IsNotExist(err) {
			t.Errorf("%s remains: %v", name, err)
		}
	}
}
