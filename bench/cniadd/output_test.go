package main

import (
	"reflect"
	"strings"
	"testing"
)

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
