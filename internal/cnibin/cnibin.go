// Package cnibin is podnet-cni, the multi-call plugin binary, seen from
// outside: the plugin types a given binary answers to, asked of the
// binary itself (`podnet-cni names`), so that links made to it match
// exactly that binary, whatever its version. It links no plugin.
package cnibin

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
)

// EnvBinary names the environment variable that points at an already
// built podnet-cni binary (as `make build` writes it).
const EnvBinary = "PODNET_CNI_BIN"

// Names runs `binary names` and returns the plugin types the binary
// answers to when linked under their names.
func Names(binary string) ([]string, error) {
	out, err := exec.Command(binary, "names").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			return nil, fmt.Errorf("%s names: %w: %s", binary, err, strings.TrimSpace(string(ee.Stderr)))
		}
		return nil, fmt.Errorf("%s names: %w", binary, err)
	}
	names := strings.Fields(string(out))
	if len(names) == 0 {
		return nil, fmt.Errorf("%s names: no plugin types", binary)
	}
	// The names become files beside the binary: nothing may lead elsewhere.
	for _, n := range names {
		if n != filepath.Base(n) || strings.HasPrefix(n, ".") {
			return nil, fmt.Errorf("%s names: %q is not a plugin file name", binary, n)
		}
	}
	return names, nil
}

// Links maps every plugin type binary answers to to binary, the links a
// CNI_PATH directory needs for it.
func Links(binary string) (map[string]string, error) {
	names, err := Names(binary)
	if err != nil {
		return nil, err
	}
	m := make(map[string]string, len(names))
	for _, n := range names {
		m[n] = binary
	}
	return m, nil
}
