package tuning

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/podnet/podnet/internal/attachment"
)

// saved is what ADD replaced, to be put back on DEL. Only what the
// configuration changed is recorded.
type saved struct {
	Attachment string  `json:"attachment"`
	Sysctls    Sysctls `json:"sysctls,omitempty"`
	Mac        string  `json:"mac,omitempty"`
	MTU        int     `json:"mtu,omitempty"`
	Promisc    *bool   `json:"promisc,omitempty"`
	Allmulti   *bool   `json:"allmulti,omitempty"`
	TxQLen     *int    `json:"txQLen,omitempty"`
}

// statePath is the file of an attachment's saved values:
// <dataDir>/<network>/<containerID>@<ifname>.json.
func statePath(dataDir string, a attachment.ID) string {
	return filepath.Join(dataDir, a.Network, a.ContainerID+"@"+a.IfName+".json")
}

// readState returns the saved values of an attachment; ok is false when
// there are none.
func readState(p string) (s saved, ok bool, err error) {
	b, err := os.ReadFile(p)
	if errors.Is(err, fs.ErrNotExist) {
		return saved{}, false, nil
	}
	if err != nil {
		return saved{}, false, fmt.Errorf("read saved values: %w", err)
	}
	if err := json.Unmarshal(b, &s); err != nil {
		return saved{}, false, fmt.Errorf("saved values %s are corrupt: %w", p, err)
	}
	return s, true, nil
}

// writeState writes the file whole or not at all: a temporary file in the
// same directory renamed over it, so a killed plugin leaves either the old
// values or the new ones.
func writeState(p string, s saved) error {
	b, err := json.Marshal(s)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(p), err)
	}
	f, err := os.CreateTemp(filepath.Dir(p), ".new-")
	if err != nil {
		return fmt.Errorf("save values: %w", err)
	}
	_, werr := f.Write(b)
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(f.Name(), p)
	}
	if werr != nil {
		os.Remove(f.Name())
		return fmt.Errorf("save values: %w", werr)
	}
	return nil
}

// removeState deletes an attachment's saved values; none is no error.
func removeState(p string) error {
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove saved values: %w", err)
	}
	return nil
}

// staleTemp is the age past which a temporary file is a killed plugin's
// leftover rather than a write in progress.
const staleTemp = 10 * time.Minute

// gcState removes the saved values of the network's attachments that keep
// rejects, and temporary files left by killed plugins.
func gcState(dataDir, network string, keep func(attachment.ID) bool) error {
	dir := filepath.Join(dataDir, network)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list saved values: %w", err)
	}
	var errs []error
	for _, e := range entries {
		p := filepath.Join(dir, e.Name())
		if strings.HasPrefix(e.Name(), ".new-") {
			if info, err := e.Info(); err == nil && time.Since(info.ModTime()) > staleTemp {
				errs = append(errs, removeState(p))
			}
			continue
		}
		s, ok, err := readState(p)
		if err != nil || !ok {
			continue
		}
		a, err := attachment.Parse(s.Attachment)
		if err != nil || a.Network != network || keep(a) {
			continue
		}
		errs = append(errs, removeState(p))
	}
	return errors.Join(errs...)
}
