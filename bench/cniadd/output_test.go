package main

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestWriteSection checks cniadd rewrites only its own section: in place
// between the markers, replacing a whole report of the earlier format,
// appended to a file of other sections, and as a new file.
func TestWriteSection(t *testing.T) {
	section := []byte("## CNI\n\nnew figures\n")
	block := beginMarker + "\n## CNI\n\nnew figures\n" + endMarker + "\n"
	for _, tc := range []struct {
		name, before, want string
		exists             bool
	}{
		{"new file", "", "# Performance\n\n" + block, false},
		{"earlier format", legacyHead + " -n 100`) on a day.\n\nold figures\n", "# Performance\n\n" + block, true},
		{"other sections only", "# Performance\n\n## Data plane\n\niperf3\n", "# Performance\n\n## Data plane\n\niperf3\n\n" + block, true},
		{"in place between other sections",
			"# Performance\n\n" + beginMarker + "\n## CNI\n\nold figures\n" + endMarker + "\n\n## Agent\n\nmemory\n",
			"# Performance\n\n" + block + "\n## Agent\n\nmemory\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "performance.md")
			if tc.exists {
				if err := os.WriteFile(path, []byte(tc.before), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := writeSection(path, section); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Errorf("got:\n%s\nwant:\n%s", got, tc.want)
			}
			// A second run changes nothing.
			if err := writeSection(path, section); err != nil {
				t.Fatal(err)
			}
			again, _ := os.ReadFile(path)
			if string(again) != tc.want {
				t.Errorf("second run changed the file:\n%s", again)
			}
		})
	}
}

func TestSizes(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    sizes
		wantErr string
	}{
		{"100", sizes{100}, ""},
		{"100,50", sizes{100, 50}, ""},
		{" 100 , 50 ", sizes{100, 50}, ""},
		{"0", nil, ""},
		{"100,x", nil, "not a count"},
		{"-5", nil, "not a count"},
	} {
		var z sizes
		err := z.Set(tc.in)
		switch {
		case tc.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Set(%q) = %v, want an error with %q", tc.in, err, tc.wantErr)
			}
		case err != nil:
			t.Errorf("Set(%q): %v", tc.in, err)
		case !reflect.DeepEqual(z, tc.want):
			t.Errorf("Set(%q) = %v, want %v", tc.in, z, tc.want)
		}
	}
}
