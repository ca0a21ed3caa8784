package cnibin

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// script writes an executable shell script into a temporary directory.
func script(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "podnet-cni")
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNames(t *testing.T) {
	bin := script(t, `[ "$1" = names ] || exit 2; printf 'bridge\nhost-local\n'`)
	names, err := Names(bin)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"bridge", "host-local"}; !reflect.DeepEqual(names, want) {
		t.Errorf("Names = %v, want %v", names, want)
	}
	links, err := Links(bin)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[string]string{"bridge": bin, "host-local": bin}; !reflect.DeepEqual(links, want) {
		t.Errorf("Links = %v, want %v", links, want)
	}
}

func TestNamesFailures(t *testing.T) {
	for name, bin := range map[string]string{
		"missing":   filepath.Join(t.TempDir(), "podnet-cni"),
		"fails":     script(t, "echo 'unknown command' >&2; exit 1"),
		"no output": script(t, "exit 0"),
	} {
		if _, err := Names(bin); err == nil || !strings.Contains(err.Error(), "names") {
			t.Errorf("%s: Names error %v, want one naming the command", name, err)
		}
	}
}

func TestNamesRefused(t *testing.T) {
	for _, tc := range []struct{ name, body, err string }{
		{"fails", `echo boom >&2; exit 3`, "boom"},
		{"none", `exit 0`, "no plugin types"},
		{"path", `echo ../../etc/evil`, "not a plugin file name"},
		{"hidden", `echo .podnet-cni`, "not a plugin file name"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Names(script(t, tc.body))
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("Names = %v, %v; want an error mentioning %q", got, err, tc.err)
			}
		})
	}
}
