// Package benchlab holds what the benchmarks that run a lab share: the
// lab's binaries and a fresh lab name.
package benchlab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/podnet/podnet/internal/lab"
)

// Binaries returns bins with each path given made absolute (the lab runs
// them from other directories); it fails when one does not exist.
func Binaries(bins lab.Binaries) (lab.Binaries, error) {
	for _, p := range []*string{&bins.Agent, &bins.CNI, &bins.CLI} {
		if *p == "" {
			continue
		}
		abs, err := filepath.Abs(*p)
		if err != nil {
			return bins, err
		}
		if _, err := os.Stat(abs); err != nil {
			return bins, fmt.Errorf("%w (make build makes it)", err)
		}
		*p = abs
	}
	return bins, nil
}

// Name is a fresh lab name: prefix, a dash and six random hex digits.
func Name(prefix string) string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return prefix + "-" + hex.EncodeToString(b[:])
}

// Pause waits d, or until ctx ends (its error then).
func Pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
