package cri

import (
	"context"
	"os"
	"sync"

	"github.com/podnet/podnet/internal/kube"
)

var (
	imageOnce  sync.Once
	imageDir   string
	imagePaths []string
	imageErr   error
)

// podImages returns the archives of the pod images every private
// containerd gets (kube.PauseImage is its sandbox image), built once per
// test binary into a temporary directory that cleanupImages removes.
func podImages(ctx context.Context) ([]string, error) {
	imageOnce.Do(func() {
		if imageDir, imageErr = os.MkdirTemp("", "podnet-cri-image-"); imageErr != nil {
			return
		}
		imagePaths, imageErr = kube.PodImages(ctx, imageDir)
	})
	return imagePaths, imageErr
}

func cleanupImages() {
	if imageDir != "" {
		os.RemoveAll(imageDir)
	}
}
