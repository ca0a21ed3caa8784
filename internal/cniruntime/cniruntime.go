// Package cniruntime is the runtime side of CNI, as a container runtime
// uses it: libcni run inside a node's network namespace (Runtime), a
// CNI_PATH directory of links to plugin binaries, container IDs, and spec
// errors. The lab, `podnet demo` and the test harness share it.
package cniruntime

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
)

// RandomID returns 64 random hex digits, a container ID as containerd
// makes them.
func RandomID() string {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// CNIError returns the spec error carried by err, if any.
func CNIError(err error) (*types.Error, bool) {
	var e *types.Error
	if errors.As(err, &e) {
		return e, true
	}
	return nil, false
}

// Describe formats err with its spec code when it has one.
func Describe(err error) string {
	if e, ok := CNIError(err); ok {
		return fmt.Sprintf("code %d: %v", e.Code, err)
	}
	return err.Error()
}

// LinkDir fills dir with one entry per plugin type pointing at its
// binary: a hard link when possible (so argv[0] is the type and the binary
// is "the same file" for podnet's in-process IPAM), a symlink otherwise.
// It is a CNI_PATH directory in which each type resolves where links says.
func LinkDir(dir string, links map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, target := range links {
		p := filepath.Join(dir, name)
		_ = os.Remove(p)
		if err := os.Link(target, p); err == nil {
			continue
		}
		if err := os.Symlink(target, p); err != nil {
			return fmt.Errorf("link %s -> %s: %w", p, target, err)
		}
	}
	return nil
}
