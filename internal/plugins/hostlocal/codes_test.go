package hostlocal

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniplugin"
)

// snapshot is every file under dir with its content ("<dir>" for
// directories), to show a failed call changed nothing. The round-robin
// cursors (last_reserved_ip.*) are left out: like the reference's, they
// advance past an address a failed ADD tried, which changes no allocation.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if strings.HasPrefix(d.Name(), "last_reserved_ip.") {
			return nil
		}
		if d.IsDir() {
			out[p] = "<dir>"
			return nil
		}
		b, err := os.ReadFile(p)
		out[p] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func codeOf(err error) (*types.Error, bool) {
	var e *types.Error
	ok := errors.As(cniplugin.AsCNIError(err), &e)
	return e, ok
}

// TestStoreIOFailures breaks the store's file system in each way a
// plugin can meet it as root — a file where a directory should be, a
// directory where a file should be — and checks that ADD, DEL and GC
// answer "I/O failure" (5) naming the path, that STATUS answers 50, and
// that the failed calls changed nothing: an address already allocated
// stays allocated, an address the failed ADD reserved is released.
// (Read-only and full file systems are provoked through the built binary
// in test/cni.)
func TestStoreIOFailures(t *testing.T) {
	const ranges = `"ranges":[[{"subnet":"10.6.0.0/24"}]]`
	for _, tc := range []struct {
		name string
		// breakStore damages the store under dataDir, after "keep" got an
		// address when allocate is set; it returns the path the error must
		// name and the dataDir to configure.
		breakStore func(t *testing.T, dataDir string) (path, confDir string)
		allocate   bool
		// delFails: DEL and GC fail too (the store cannot be opened).
		delFails bool
	}{
		{
			name: "dataDir is a file",
			breakStore: func(t *testing.T, d string) (string, string) {
				f := filepath.Join(d, "file")
				writeFile(t, f, "not a directory")
				return f, f
			},
			delFails: true,
		},
		{
			name: "network directory is a file",
			breakStore: func(t *testing.T, d string) (string, string) {
				writeFile(t, filepath.Join(d, "net1"), "not a directory")
				return filepath.Join(d, "net1"), d
			},
			delFails: true,
		},
		{
			name: "attachments is a file",
			breakStore: func(t *testing.T, d string) (string, string) {
				p := filepath.Join(d, "net1", "attachments")
				mustRemoveAll(t, p)
				writeFile(t, p, "not a directory")
				return p, d
			},
			allocate: true,
			delFails: true,
		},
		{
			name: "last reserved is a directory",
			breakStore: func(t *testing.T, d string) (string, string) {
				p := filepath.Join(d, "net1", "last_reserved_ip.0")
				mustRemoveAll(t, p)
				mustMkdir(t, p)
				return p, d
			},
			allocate: true,
		},
		{
			name: "allocation index cannot be written",
			breakStore: func(t *testing.T, d string) (string, string) {
				p := filepath.Join(d, "net1", "attachments", "new@eth0.tmp")
				mustMkdir(t, p)
				return p, d
			},
			allocate: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			var kept []string
			if tc.allocate {
				kept = addrs(t, conf(t, "1.1.0", dataDir, ranges), "keep")
			}
			path, confDir := tc.breakStore(t, dataDir)
			c := conf(t, "1.1.0", confDir, ranges)
			before := snapshot(t, dataDir)

			_, err := Plugin().Add(cmdArgs(c, "new", "eth0", ""))
			if e, ok := codeOf(err); !ok || e.Code != types.ErrIOFailure || !strings.Contains(e.Details, path) {
				t.Fatalf("ADD = %v, want code 5 naming %s", err, path)
			} else {
				t.Logf("ADD: code %d: %s; %s", e.Code, e.Msg, e.Details)
			}
			if after := snapshot(t, dataDir); !reflect.DeepEqual(before, after) {
				t.Errorf("failed ADD changed the store:\nbefore %v\nafter  %v", before, after)
			}
			if tc.allocate {
				if got := allocatedTo(t, dataDir, "keep"); len(got) != 1 || got[0]+"/24" != kept[0] {
					t.Errorf("existing allocation %v became %v", kept, got)
				}
			}
			verbs := map[string]func() error{
				"DEL": func() error { return Plugin().Del(cmdArgs(c, "new", "eth0", "")) },
				"GC":  func() error { return Plugin().GC(cmdArgs(c, "", "", "")) },
			}
			for verb, run := range verbs {
				err := run()
				if !tc.delFails {
					if err != nil {
						t.Errorf("%s with a usable store: %v", verb, err)
					}
					continue
				}
				if e, ok := codeOf(err); !ok || e.Code != types.ErrIOFailure || !strings.Contains(e.Details, path) {
					t.Errorf("%s = %v, want code 5 naming %s", verb, err, path)
				}
			}
			if tc.delFails {
				if after := snapshot(t, dataDir); !reflect.DeepEqual(before, after) {
					t.Errorf("failed DEL/GC changed the store:\nbefore %v\nafter  %v", before, after)
				}
				if e, ok := codeOf(Plugin().Status(cmdArgs(c, "", "", ""))); !ok || e.Code != cniplugin.ErrPluginNotAvailable {
					t.Errorf("STATUS = %v, want code 50", e)
				}
			}
		})
	}
}

func TestUnreadableResolvConf(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-resolv.conf")
	c := conf(t, "1.1.0", dir, `"ranges":[[{"subnet":"10.6.0.0/24"}]],"resolvConf":"`+missing+`"`)
	_, err := Plugin().Add(cmdArgs(c, "a", "eth0", ""))
	if e, ok := codeOf(err); !ok || e.Code != types.ErrIOFailure || !strings.Contains(e.Details, missing) {
		t.Fatalf("ADD with an unreadable resolvConf = %v, want code 5 naming it", err)
	}
	if got := allocatedTo(t, dir, "a"); len(got) != 0 {
		t.Errorf("failed ADD allocated %v", got)
	}
}

func writeFile(t *testing.T, p, s string) {
	t.Helper()
	if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
		t.Fatal(err)
	}
}

func mustMkdir(t *testing.T, p string) {
	t.Helper()
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustRemoveAll(t *testing.T, p string) {
	t.Helper()
	if err := os.RemoveAll(p); err != nil {
		t.Fatal(err)
	}
}
