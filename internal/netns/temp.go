package netns

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunDir is where named namespaces are bound, as iproute2 does it.
const RunDir = "/var/run/netns"

// Temp is a named network namespace created for a test, a benchmark or the
// lab; Remove deletes it (and with it every link inside).
type Temp struct {
	*NS
	Name string
}

// NewTemp creates a fresh named network namespace called prefix-<random>
// (see Create).
func NewTemp(prefix string) (*Temp, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, err
	}
	return Create(prefix + "-" + hex.EncodeToString(b[:]))
}

// Create creates a named network namespace (bound under RunDir, as
// iproute2 does) with its loopback up, without switching any caller's
// thread into it. It fails if the name is taken.
func Create(name string) (*Temp, error) {
	errc := make(chan error, 1)
	go func() {
		// NewNamed moves the thread into the new namespace: this thread
		// stays locked and is discarded when the goroutine ends.
		runtime.LockOSThread()
		h, err := netns.NewNamed(name)
		if err == nil {
			h.Close()
		}
		errc <- err
	}()
	if err := <-errc; err != nil {
		return nil, fmt.Errorf("create netns %s: %w", name, err)
	}
	ns, err := Open(filepath.Join(RunDir, name))
	if err != nil {
		_ = DeleteNamed(name)
		return nil, err
	}
	t := &Temp{NS: ns, Name: name}
	if err := t.Do(setLoopbackUp); err != nil {
		t.Remove()
		return nil, err
	}
	return t, nil
}

// OpenNamed opens the namespace Create made under name.
func OpenNamed(name string) (*Temp, error) {
	ns, err := Open(filepath.Join(RunDir, name))
	if err != nil {
		return nil, err
	}
	return &Temp{NS: ns, Name: name}, nil
}

// DeleteNamed deletes the named namespace's binding; its links go with
// it once no process holds it. A name that does not exist is no error, and
// neither is a binding file without its mount: a process killed inside
// Create leaves one, and the file alone is removed.
func DeleteNamed(name string) error {
	path := filepath.Join(RunDir, name)
	err := unix.Unmount(path, unix.MNT_DETACH)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil && !errors.Is(err, unix.EINVAL):
		return fmt.Errorf("delete netns %s: unmount: %w", name, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete netns %s: %w", name, err)
	}
	return nil
}

// Remove closes and deletes the namespace.
func (t *Temp) Remove() error {
	t.Close()
	return DeleteNamed(t.Name)
}
