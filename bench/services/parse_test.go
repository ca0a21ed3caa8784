package main

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseHistogram(t *testing.T) {
	const name = "podnet_services_sync_duration_seconds"
	for _, tc := range []struct {
		what, text string
		count      int
		total      time.Duration
		wantErr    bool
	}{
		{"histogram", "# HELP x\n" + name + `_bucket{le="0.001"} 1` + "\n" + name + "_sum 0.25\n" + name + "_count 3\n", 3, 250 * time.Millisecond, false},
		{"other metrics only", "other_count 3\nother_sum 1\n", 0, 0, true},
		{"garbage", name + "_count x\n" + name + "_sum\n", 0, 0, true},
	} {
		t.Run(tc.what, func(t *testing.T) {
			count, total, err := parseHistogram(strings.NewReader(tc.text), name)
			if (err != nil) != tc.wantErr || count != tc.count || total != tc.total {
				t.Errorf("parseHistogram = %d, %s, %v; want %d, %s, error %v", count, total, err, tc.count, tc.total, tc.wantErr)
			}
		})
	}
}

func TestParseScales(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []int
		err  bool
	}{
		{"10,1000", []int{10, 1000}, false},
		{"5000, 10,10", []int{10, 5000}, false},
		{"0", nil, true},
		{"ten", nil, true},
		{"", nil, true},
	} {
		got, err := parseScales(tc.in)
		if (err != nil) != tc.err || !reflect.DeepEqual(got, tc.want) {
			t.Errorf("parseScales(%q) = %v, %v; want %v, error %v", tc.in, got, err, tc.want, tc.err)
		}
	}
}
