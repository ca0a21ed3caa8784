package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

// testSpecs are two images sharing nothing: one with a binary, a symlink
// to it, an explicit sticky directory and a config; one with a short
// (Docker Hub) name.
func testSpecs() []Spec {
	return []Spec{{
		Ref: "ghcr.io/podnet/podnet:test",
		Files: []File{
			{Path: "/usr/local/bin/podnet-agent", Mode: 0o755, Data: []byte("agent")},
			{Path: "usr/local/bin/agent", Link: "podnet-agent"},
			{Path: "/tmp", Mode: fs.ModeDir | fs.ModeSticky | 0o777},
			{Path: "/etc/podnet/config.yaml", Mode: 0o600, Data: []byte("backend: vxlan\n")},
		},
		Entrypoint: []string{"/usr/local/bin/podnet-agent"},
		Cmd:        []string{"--config", "/etc/podnet/config.yaml"},
		Env:        []string{"PATH=/usr/local/bin"},
		WorkingDir: "/tmp",
	}, {
		Ref:        "pause:3.10",
		Files:      []File{{Path: "/pause", Mode: 0o755, Data: []byte("pause")}},
		Entrypoint: []string{"/pause"},
	}}
}

// entry is what a test sees of one layer entry.
type entry struct {
	typ  byte
	mode int64
	link string
	data string
}

func TestWriteRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "images.tar")
	if err := Write(path, testSpecs()...); err != nil {
		t.Fatal(err)
	}
	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(path) })
	if err != nil {
		t.Fatal(err)
	}
	var tags []string
	for _, d := range m {
		tags = append(tags, d.RepoTags...)
	}
	if want := []string{"ghcr.io/podnet/podnet:test", "index.docker.io/library/pause:3.10"}; !slices.Equal(tags, want) {
		t.Errorf("RepoTags = %q, want %q", tags, want)
	}

	tests := []struct {
		ref     string
		config  v1.Config
		entries map[string]entry
	}{{
		ref: "ghcr.io/podnet/podnet:test",
		config: v1.Config{
			Entrypoint: []string{"/usr/local/bin/podnet-agent"},
			Cmd:        []string{"--config", "/etc/podnet/config.yaml"},
			Env:        []string{"PATH=/usr/local/bin"},
			WorkingDir: "/tmp",
		},
		entries: map[string]entry{
			"etc/":                       {typ: tar.TypeDir, mode: 0o755},
			"etc/podnet/":                {typ: tar.TypeDir, mode: 0o755},
			"etc/podnet/config.yaml":     {typ: tar.TypeReg, mode: 0o600, data: "backend: vxlan\n"},
			"tmp/":                       {typ: tar.TypeDir, mode: 0o1777},
			"usr/":                       {typ: tar.TypeDir, mode: 0o755},
			"usr/local/":                 {typ: tar.TypeDir, mode: 0o755},
			"usr/local/bin/":             {typ: tar.TypeDir, mode: 0o755},
			"usr/local/bin/agent":        {typ: tar.TypeSymlink, link: "podnet-agent"},
			"usr/local/bin/podnet-agent": {typ: tar.TypeReg, mode: 0o755, data: "agent"},
		},
	}, {
		ref:     "pause:3.10",
		config:  v1.Config{Entrypoint: []string{"/pause"}},
		entries: map[string]entry{"pause": {typ: tar.TypeReg, mode: 0o755, data: "pause"}},
	}}
	for _, tt := range tests {
		t.Run(tt.ref, func(t *testing.T) {
			tag, err := name.NewTag(tt.ref)
			if err != nil {
				t.Fatal(err)
			}
			img, err := tarball.ImageFromPath(path, &tag)
			if err != nil {
				t.Fatal(err)
			}
			cf, err := img.ConfigFile()
			if err != nil {
				t.Fatal(err)
			}
			if cf.OS != "linux" || cf.Architecture != runtime.GOARCH {
				t.Errorf("platform %s/%s, want linux/%s", cf.OS, cf.Architecture, runtime.GOARCH)
			}
			if !cf.Created.Equal(Epoch) {
				t.Errorf("created %v, want %v", cf.Created, Epoch)
			}
			c := cf.Config
			if !slices.Equal(c.Entrypoint, tt.config.Entrypoint) || !slices.Equal(c.Cmd, tt.config.Cmd) ||
				!slices.Equal(c.Env, tt.config.Env) || c.WorkingDir != tt.config.WorkingDir {
				t.Errorf("config %+v, want %+v", c, tt.config)
			}
			layers, err := img.Layers()
			if err != nil {
				t.Fatal(err)
			}
			if len(layers) != 1 {
				t.Fatalf("%d layers, want 1", len(layers))
			}
			got := map[string]entry{}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			tr := tar.NewReader(rc)
			for {
				h, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				if h.Uid != 0 || h.Gid != 0 || !h.ModTime.Equal(Epoch) {
					t.Errorf("%s: owner %d:%d time %v, want 0:0 %v", h.Name, h.Uid, h.Gid, h.ModTime, Epoch)
				}
				b, err := io.ReadAll(tr)
				if err != nil {
					t.Fatal(err)
				}
				e := entry{typ: h.Typeflag, mode: h.Mode, link: h.Linkname, data: string(b)}
				if h.Typeflag == tar.TypeSymlink {
					e.mode = 0
				}
				got[h.Name] = e
			}
			if len(got) != len(tt.entries) {
				t.Errorf("%d entries, want %d: %v", len(got), len(tt.entries), got)
			}
			for p, want := range tt.entries {
				if got[p] != want {
					t.Errorf("%s: %+v, want %+v", p, got[p], want)
				}
			}
		})
	}
}

func TestWriteDeterministic(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a.tar"), filepath.Join(dir, "b.tar")
	specs := testSpecs()
	if err := Write(a, specs...); err != nil {
		t.Fatal(err)
	}
	// The same files given in another order make the same archive.
	slices.Reverse(specs[0].Files)
	if err := Write(b, specs...); err != nil {
		t.Fatal(err)
	}
	ab, err := os.ReadFile(a)
	if err != nil {
		t.Fatal(err)
	}
	bb, err := os.ReadFile(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(ab, bb) {
		t.Error("the same images gave different archives")
	}
}

func TestWriteRejects(t *testing.T) {
	reg := func(p string) File { return File{Path: p, Mode: 0o644, Data: []byte("x")} }
	tests := []struct {
		name  string
		specs []Spec
		want  string
	}{
		{"no images", nil, "no images"},
		{"bad ref", []Spec{{Ref: "UPPER/case:x"}}, "UPPER/case:x"},
		{"ref twice", []Spec{{Ref: "a:1"}, {Ref: "docker.io/library/a:1"}}, "given twice"},
		{"dot dot", []Spec{{Ref: "a:1", Files: []File{reg("/../etc/passwd")}}}, "has .."},
		{"root", []Spec{{Ref: "a:1", Files: []File{{Path: "/", Mode: fs.ModeDir | 0o755}}}}, "image root"},
		{"file twice", []Spec{{Ref: "a:1", Files: []File{reg("/a"), reg("a")}}}, "given twice"},
		{"file as dir", []Spec{{Ref: "a:1", Files: []File{reg("/a"), reg("/a/b")}}}, "not a directory"},
		{"link without target", []Spec{{Ref: "a:1", Files: []File{{Path: "/l", Mode: fs.ModeSymlink}}}}, "no target"},
		{"link with data", []Spec{{Ref: "a:1", Files: []File{{Path: "/l", Link: "a", Data: []byte("x")}}}}, "has data"},
		{"dir with data", []Spec{{Ref: "a:1", Files: []File{{Path: "/d", Mode: fs.ModeDir, Data: []byte("x")}}}}, "has data"},
		{"device", []Spec{{Ref: "a:1", Files: []File{{Path: "/dev/null", Mode: fs.ModeDevice}}}}, "unsupported type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "x.tar")
			err := Write(path, tt.specs...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Write = %v, want an error with %q", err, tt.want)
			}
			if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("archive written despite the error (%v)", err)
			}
		})
	}
}
