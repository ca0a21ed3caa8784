package cri

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podnet/podnet/internal/testing/sandbox"
)

// pauseImage is the sandbox image every private containerd runs pods
// with: ./pause built static and packed as an OCI image.
const pauseImage = "podnet.test/pause:1"

var (
	imageOnce sync.Once
	imageDir  string
	imagePath string
	imageErr  error
)

// pauseArchive returns the OCI archive of pauseImage, built once per test
// binary into a temporary directory that cleanupImage removes.
func pauseArchive(ctx context.Context) (string, error) {
	imageOnce.Do(func() {
		if imageDir, imageErr = os.MkdirTemp("", "podnet-cri-image-"); imageErr != nil {
			return
		}
		bin := filepath.Join(imageDir, "pause")
		if imageErr = sandbox.Build(ctx, bin, "./test/cri/pause"); imageErr != nil {
			return
		}
		imagePath = filepath.Join(imageDir, "pause.oci.tar")
		imageErr = writeImage(imagePath, bin, pauseImage)
	})
	return imagePath, imageErr
}

func cleanupImage() {
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
}

// descriptor is an OCI content descriptor.
type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// blobs is the content of an OCI layout by digest.
type blobs map[string][]byte

// add stores b and describes it.
func (bs blobs) add(mediaType string, b []byte) descriptor {
	d := digest(b)
	bs[d] = b
	return descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}
}

// addJSON stores v encoded as JSON and describes it.
func (bs blobs) addJSON(mediaType string, v any) (descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return descriptor{}, fmt.Errorf("encode %s: %w", mediaType, err)
	}
	return bs.add(mediaType, b), nil
}

func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// writeImage writes an OCI image archive — oci-layout, index.json and
// the blobs of one manifest, its config and one gzip layer holding the
// program bin as /pause, the image's entrypoint — that `ctr images
// import` stores under ref.
func writeImage(path, bin, ref string) error {
	prog, err := os.ReadFile(bin)
	if err != nil {
		return fmt.Errorf("read %s: %w", bin, err)
	}
	// Fixed times: the same program gives the same image.
	epoch := time.Unix(0, 0)
	layerTar, err := tarOf(epoch, map[string][]byte{"pause": prog}, 0o755)
	if err != nil {
		return fmt.Errorf("image layer: %w", err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	if _, err := zw.Write(layerTar); err != nil {
		return fmt.Errorf("compress layer: %w", err)
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("compress layer: %w", err)
	}

	bs := blobs{}
	layer := bs.add("application/vnd.oci.image.layer.v1.tar+gzip", gz.Bytes())
	config, err := bs.addJSON("application/vnd.oci.image.config.v1+json", map[string]any{
		"architecture": runtime.GOARCH,
		"os":           "linux",
		"config":       map[string]any{"Entrypoint": []string{"/pause"}},
		"rootfs":       map[string]any{"type": "layers", "diff_ids": []string{digest(layerTar)}},
	})
	if err != nil {
		return err
	}
	const manifestType = "application/vnd.oci.image.manifest.v1+json"
	manifest, err := bs.addJSON(manifestType, map[string]any{
		"schemaVersion": 2,
		"mediaType":     manifestType,
		"config":        config,
		"layers":        []descriptor{layer},
	})
	if err != nil {
		return err
	}
	manifest.Annotations = map[string]string{
		"io.containerd.image.name":          ref,
		"org.opencontainers.image.ref.name": ref[strings.LastIndex(ref, ":")+1:],
	}
	index, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.index.v1+json",
		"manifests":     []descriptor{manifest},
	})
	if err != nil {
		return fmt.Errorf("encode index: %w", err)
	}
	files := map[string][]byte{
		"oci-layout": []byte(`{"imageLayoutVersion":"1.0.0"}`),
		"index.json": index,
	}
	for d, b := range bs {
		files["blobs/sha256/"+strings.TrimPrefix(d, "sha256:")] = b
	}
	archive, err := tarOf(epoch, files, 0o644)
	if err != nil {
		return fmt.Errorf("image archive: %w", err)
	}
	if err := os.WriteFile(path, archive, 0o644); err != nil {
		return fmt.Errorf("write image archive: %w", err)
	}
	return nil
}

// tarOf makes a tar stream of files (name → content), every file with
// mode and modification time t, owned by root, in name order;
// directories are implied.
func tarOf(t time.Time, files map[string][]byte, mode int64) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, name := range slices.Sorted(maps.Keys(files)) {
		b := files[name]
		h := &tar.Header{Typeflag: tar.TypeReg, Name: name, Size: int64(len(b)), Mode: mode, ModTime: t, Format: tar.FormatPAX}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", name, err)
		}
		if _, err := tw.Write(b); err != nil {
			return nil, fmt.Errorf("tar %s: %w", name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
