// Package image builds container images without a container engine: each
// image is one layer made from files given in memory, and Write stores
// images as a docker-archive tarball — the format `docker load` and
// `ctr -n k8s.io images import` read — so a node's containerd can run
// them with no registry.
//
// The images are reproducible: every file, directory and the image config
// carry a fixed timestamp and root ownership, entries are in path order,
// so the same Specs give the same archive byte for byte.
package image

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/podnet/podnet/internal/atomicfile"
)

// Epoch is the time of every file in an image and of the image itself.
var Epoch = time.Unix(0, 0).UTC()

// File is one entry of an image's filesystem.
type File struct {
	// Path is where the entry lives in the image, e.g.
	// "/usr/local/bin/podnet-agent"; missing parent directories are
	// created with mode 0755.
	Path string
	// Mode holds the permission bits (setuid, setgid and sticky count) and
	// the type: fs.ModeDir for a directory, fs.ModeSymlink or a non-empty
	// Link for a symbolic link, none for a regular file.
	Mode fs.FileMode
	// Data is a regular file's content.
	Data []byte
	// Link is a symbolic link's target.
	Link string
}

// Spec describes one image.
type Spec struct {
	// Ref is the name the archive stores the image under, with a tag, e.g.
	// "ghcr.io/podnet/podnet:dev"; a name without a registry is Docker
	// Hub's ("pause:3.10" is docker.io/library/pause:3.10 to containerd).
	Ref string
	// Files make the image's only layer.
	Files []File
	// Entrypoint, Cmd, Env ("NAME=value") and WorkingDir are the image
	// config's; Env defaults to nothing (no PATH unless given).
	Entrypoint, Cmd, Env []string
	WorkingDir           string
}

// Write builds every image of imgs and writes them to a docker-archive
// tarball at path, atomically (a reader sees the old archive or the new
// one); an archive already holding the same bytes is left alone. The images are for linux on the
// architecture of the running program.
func Write(path string, imgs ...Spec) error {
	if len(imgs) == 0 {
		return errors.New("image archive: no images")
	}
	var buf bytes.Buffer
	if err := writeArchive(&buf, imgs); err != nil {
		return err
	}
	if _, err := atomicfile.Write(path, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

// writeArchive writes the docker-archive of imgs to w: per image its
// config blob and its layer blob, then manifest.json naming them; images
// (and so entries) in the order given, a blob shared by images once.
func writeArchive(w io.Writer, imgs []Spec) error {
	tw := tar.NewWriter(w)
	written := map[string]bool{}
	manifest := tarball.Manifest{}
	refs := map[string]bool{}
	for _, s := range imgs {
		tag, err := name.NewTag(s.Ref)
		if err != nil {
			return fmt.Errorf("image %q: %w", s.Ref, err)
		}
		if refs[tag.Name()] {
			return fmt.Errorf("image %q: ref given twice", s.Ref)
		}
		refs[tag.Name()] = true
		img, err := build(s)
		if err != nil {
			return fmt.Errorf("image %s: %w", s.Ref, err)
		}
		cfgName, err := img.ConfigName()
		if err != nil {
			return fmt.Errorf("image %s config: %w", s.Ref, err)
		}
		cfg, err := img.RawConfigFile()
		if err != nil {
			return fmt.Errorf("image %s config: %w", s.Ref, err)
		}
		layers, err := img.Layers()
		if err != nil {
			return fmt.Errorf("image %s layers: %w", s.Ref, err)
		}
		d := tarball.Descriptor{Config: cfgName.String(), RepoTags: []string{tag.Name()}}
		if err := writeEntry(tw, written, d.Config, func() (io.ReadCloser, error) {
			return io.NopCloser(bytes.NewReader(cfg)), nil
		}); err != nil {
			return fmt.Errorf("image %s: %w", s.Ref, err)
		}
		for _, l := range layers {
			digest, err := l.Digest()
			if err != nil {
				return fmt.Errorf("image %s layer: %w", s.Ref, err)
			}
			file := digest.Hex + ".tar.gz"
			if err := writeEntry(tw, written, file, l.Compressed); err != nil {
				return fmt.Errorf("image %s: %w", s.Ref, err)
			}
			d.Layers = append(d.Layers, file)
		}
		manifest = append(manifest, d)
	}
	m, err := json.Marshal(manifest)
	if err != nil {
		return fmt.Errorf("image archive manifest: %w", err)
	}
	if err := writeEntry(tw, written, "manifest.json", func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(m)), nil
	}); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("image archive: %w", err)
	}
	return nil
}

// writeEntry adds a regular file named file with the content open gives,
// unless written already has it.
func writeEntry(tw *tar.Writer, written map[string]bool, file string, open func() (io.ReadCloser, error)) error {
	if written[file] {
		return nil
	}
	written[file] = true
	r, err := open()
	if err != nil {
		return fmt.Errorf("archive %s: %w", file, err)
	}
	defer r.Close()
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("archive %s: %w", file, err)
	}
	h := &tar.Header{Typeflag: tar.TypeReg, Name: file, Size: int64(len(b)), Mode: 0o644, ModTime: Epoch, Format: tar.FormatPAX}
	if err := tw.WriteHeader(h); err != nil {
		return fmt.Errorf("archive %s: %w", file, err)
	}
	if _, err := tw.Write(b); err != nil {
		return fmt.Errorf("archive %s: %w", file, err)
	}
	return nil
}

// build makes the image s describes: one layer, and a config for linux on
// this architecture created at Epoch.
func build(s Spec) (v1.Image, error) {
	layerTar, err := layer(s.Files)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.ConfigFile(empty.Image, &v1.ConfigFile{
		Architecture: runtime.GOARCH,
		OS:           "linux",
		Config: v1.Config{
			Entrypoint: s.Entrypoint,
			Cmd:        s.Cmd,
			Env:        s.Env,
			WorkingDir: s.WorkingDir,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   l,
		History: v1.History{Created: v1.Time{Time: Epoch}, CreatedBy: "podnet internal/image"},
	})
	if err != nil {
		return nil, fmt.Errorf("append layer: %w", err)
	}
	img, err = mutate.CreatedAt(img, v1.Time{Time: Epoch})
	if err != nil {
		return nil, fmt.Errorf("created time: %w", err)
	}
	return img, nil
}

// layer returns the uncompressed tar of files: each parent directory not
// given once (mode 0755) before its entries, everything in path order,
// owned by root, dated Epoch.
func layer(files []File) ([]byte, error) {
	entries := map[string]File{}
	for _, f := range files {
		p, err := clean(f.Path)
		if err != nil {
			return nil, err
		}
		if _, ok := entries[p]; ok {
			return nil, fmt.Errorf("file %s given twice", f.Path)
		}
		if f.Link != "" || f.Mode&fs.ModeSymlink != 0 {
			if f.Link == "" {
				return nil, fmt.Errorf("symlink %s: no target", f.Path)
			}
			if len(f.Data) > 0 {
				return nil, fmt.Errorf("symlink %s: has data", f.Path)
			}
		} else if f.Mode.IsDir() && len(f.Data) > 0 {
			return nil, fmt.Errorf("directory %s: has data", f.Path)
		} else if f.Mode.Type()&^fs.ModeDir != 0 {
			return nil, fmt.Errorf("file %s: unsupported type %s", f.Path, f.Mode.Type())
		}
		f.Path = p
		entries[p] = f
	}
	for p := range entries {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			e, ok := entries[dir]
			if ok && !e.Mode.IsDir() {
				return nil, fmt.Errorf("%s is not a directory but %s is in it", e.Path, p)
			}
			if !ok {
				entries[dir] = File{Path: dir, Mode: fs.ModeDir | 0o755}
			}
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, p := range slices.Sorted(maps.Keys(entries)) {
		f := entries[p]
		h := &tar.Header{Name: p, Mode: tarMode(f.Mode), ModTime: Epoch, Format: tar.FormatPAX}
		switch {
		case f.Link != "":
			h.Typeflag, h.Linkname = tar.TypeSymlink, f.Link
		case f.Mode.IsDir():
			h.Typeflag, h.Name = tar.TypeDir, p+"/"
		default:
			h.Typeflag, h.Size = tar.TypeReg, int64(len(f.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("layer %s: %w", p, err)
		}
		if _, err := tw.Write(f.Data); err != nil {
			return nil, fmt.Errorf("layer %s: %w", p, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return buf.Bytes(), nil
}

// clean returns p as a layer entry name: relative to the image root,
// without "." or ".." elements; it refuses p escaping the root or naming
// the root itself.
func clean(p string) (string, error) {
	if slices.Contains(strings.Split(p, "/"), "..") {
		return "", fmt.Errorf("path %q: has ..", p)
	}
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("path %q: names the image root", p)
	}
	return c, nil
}

// tarMode is the tar header mode of m: permission bits plus the setuid,
// setgid and sticky bits in their Unix positions.
func tarMode(m fs.FileMode) int64 {
	mode := int64(m.Perm())
	if m&fs.ModeSetuid != 0 {
		mode |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		mode |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		mode |= 0o1000
	}
	return mode
}
