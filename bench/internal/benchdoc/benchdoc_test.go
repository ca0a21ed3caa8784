package benchdoc

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestWriteSection(t *testing.T) {
	b, e := markers("x")
	tests := []struct {
		name, old, want string
		missing         bool
	}{
		{name: "new file", missing: true, want: b + "\nbody\n" + e + "\n"},
		{name: "appended after other text", old: "# P\n\ncniadd\n", want: "# P\n\ncniadd\n\n" + b + "\nbody\n" + e + "\n"},
		{name: "appended, no final newline", old: "text", want: "text\n\n" + b + "\nbody\n" + e + "\n"},
		{name: "replaced in place, the rest kept", old: "head\n\n" + b + "\nold\n" + e + "\n\ntail\n", want: "head\n\n" + b + "\nbody\n" + e + "\n\ntail\n"},
		{name: "other sections untouched", old: "<!-- begin y (generated; replaced by the next run) -->\ny\n<!-- end y -->\n",
			want: "<!-- begin y (generated; replaced by the next run) -->\ny\n<!-- end y -->\n\n" + b + "\nbody\n" + e + "\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "perf.md")
			if !tt.missing {
				if err := os.WriteFile(p, []byte(tt.old), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := WriteSection(p, "x", "body\n"); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("got\n%q\nwant\n%q", got, tt.want)
			}
		})
	}
}

func TestStats(t *testing.T) {
	if m := Median([]float64{3, 1, 2}); m != 2 {
		t.Errorf("median odd = %v", m)
	}
	if m := Median([]float64{4, 1, 2, 3}); m != 2.5 {
		t.Errorf("median even = %v", m)
	}
	ds := []time.Duration{5, 1, 4, 2, 3}
	for _, tt := range []struct {
		p    float64
		want time.Duration
	}{{.5, 3}, {1, 5}, {.01, 1}} {
		if got := Percentile(ds, tt.p); got != tt.want {
			t.Errorf("p%v = %v, want %v", tt.p, got, tt.want)
		}
	}
}
