package ipam

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
)

// mustRange decodes a range as host-local's configuration writes it and
// canonicalizes it.
func mustRange(t *testing.T, js string) Range {
	t.Helper()
	var r Range
	if err := json.Unmarshal([]byte(js), &r); err != nil {
		t.Fatalf("decode %s: %v", js, err)
	}
	if err := r.Canonicalize(); err != nil {
		t.Fatalf("canonicalize %s: %v", js, err)
	}
	return r
}

func TestRangeCanonicalize(t *testing.T) {
	for _, tc := range []struct {
		js                string
		start, end, gw    string
		contains, outside []string
	}{
		{
			js:    `{"subnet":"10.1.2.0/24"}`,
			start: "10.1.2.1", end: "10.1.2.254", gw: "10.1.2.1",
			contains: []string{"10.1.2.1", "10.1.2.254"},
			outside:  []string{"10.1.2.0", "10.1.2.255", "10.1.3.1", "fd00::1"},
		},
		{
			js:    `{"subnet":"10.1.2.0/24","rangeStart":"10.1.2.10","rangeEnd":"10.1.2.20","gateway":"10.1.2.254"}`,
			start: "10.1.2.10", end: "10.1.2.20", gw: "10.1.2.254",
			contains: []string{"10.1.2.10", "10.1.2.20"},
			outside:  []string{"10.1.2.9", "10.1.2.21", "10.1.2.254"},
		},
		{
			// IPv6 has no broadcast: the last address is allocatable.
			js:    `{"subnet":"fd00:1::/120"}`,
			start: "fd00:1::1", end: "fd00:1::ff", gw: "fd00:1::1",
			contains: []string{"fd00:1::ff"},
			outside:  []string{"fd00:1::", "fd00:1::100", "10.1.2.3"},
		},
	} {
		t.Run(tc.js, func(t *testing.T) {
			r := mustRange(t, tc.js)
			for what, got := range map[string]net.IP{tc.start: r.RangeStart, tc.end: r.RangeEnd, tc.gw: r.Gateway} {
				if !got.Equal(net.ParseIP(what)) {
					t.Errorf("got %v, want %s (range %s, gateway %s)", got, what, r.String(), r.Gateway)
				}
			}
			if len(r.RangeStart) != len(r.Subnet.IP) || len(r.Gateway) != len(r.Subnet.IP) {
				t.Errorf("addresses not in the subnet's canonical form: start %d bytes, gateway %d, subnet %d",
					len(r.RangeStart), len(r.Gateway), len(r.Subnet.IP))
			}
			for _, ip := range tc.contains {
				if !r.Contains(net.ParseIP(ip)) {
					t.Errorf("%s does not contain %s", r.String(), ip)
				}
			}
			for _, ip := range tc.outside {
				if r.Contains(net.ParseIP(ip)) {
					t.Errorf("%s contains %s", r.String(), ip)
				}
			}
			var back Range
			b, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(b, &back); err != nil || back.Subnet.String() != r.Subnet.String() || !back.RangeEnd.Equal(r.RangeEnd) {
				t.Errorf("JSON round trip %s = %+v, %v", b, back, err)
			}
		})
	}
}

func TestRangeCanonicalizeErrors(t *testing.T) {
	for _, tc := range []struct {
		js, want string
	}{
		{`{"subnet":"banana"}`, `invalid subnet "banana"`},
		{`{}`, "no subnet"},
		{`{"subnet":"10.0.0.0/31"}`, "too small"},
		{`{"subnet":"fd00::/127"}`, "too small"},
		{`{"subnet":"10.0.0.1/24"}`, "host bits set"},
		{`{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}`, "gateway 10.0.1.1 not in network"},
		{`{"subnet":"10.0.0.0/24","rangeStart":"10.0.1.1"}`, "rangeStart 10.0.1.1 not in network"},
		{`{"subnet":"10.0.0.0/24","rangeEnd":"fd00::1"}`, "rangeEnd fd00::1 not in network"},
		{`{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.8"}`, "after rangeEnd"},
	} {
		var r Range
		if err := json.Unmarshal([]byte(tc.js), &r); err != nil {
			t.Fatalf("decode %s: %v", tc.js, err)
		}
		if err := r.Canonicalize(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Canonicalize(%s) = %v, want an error with %q", tc.js, err, tc.want)
		}
	}
}

func TestRangeSet(t *testing.T) {
	decode := func(js string) RangeSet {
		var s RangeSet
		if err := json.Unmarshal([]byte(js), &s); err != nil {
			t.Fatalf("decode %s: %v", js, err)
		}
		return s
	}
	for _, tc := range []struct {
		js, want string // want: "" for a valid set, else part of the error
	}{
		{`[{"subnet":"10.0.0.0/24"},{"subnet":"10.0.1.0/24"}]`, ""},
		{`[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.99"},{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.100"}]`, ""},
		{`[]`, "empty range set"},
		{`[{"subnet":"10.0.0.0/24"},{"subnet":"fd00::/64"}]`, "mixed address families"},
		{`[{"subnet":"10.0.0.0/16"},{"subnet":"10.0.3.0/24"}]`, "overlap"},
		{`[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.100"},{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.100"}]`, "overlap"},
		{`[{"subnet":"10.0.0.0/33"}]`, "invalid subnet"},
	} {
		err := decode(tc.js).Canonicalize()
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Canonicalize(%s) = %v, want %q", tc.js, err, tc.want)
		}
	}

	v4 := decode(`[{"subnet":"10.0.0.0/24","rangeEnd":"10.0.0.99"},{"subnet":"10.0.5.0/24"}]`)
	v6 := decode(`[{"subnet":"fd00::/64"}]`)
	inV4 := decode(`[{"subnet":"10.0.5.128/25","rangeStart":"10.0.5.200","rangeEnd":"10.0.5.201"}]`)
	for _, s := range []RangeSet{v4, v6, inV4} {
		if err := s.Canonicalize(); err != nil {
			t.Fatal(err)
		}
	}
	if !v4.IsV4() || v6.IsV4() {
		t.Errorf("IsV4: %v %v, want true false", v4.IsV4(), v6.IsV4())
	}
	if r := v4.RangeFor(net.ParseIP("10.0.5.7")); r != &v4[1] {
		t.Errorf("RangeFor(10.0.5.7) = %v, want the second range", r)
	}
	if v4.Contains(net.ParseIP("10.0.0.100")) || v4.Contains(net.ParseIP("fd00::1")) {
		t.Error("set contains an address outside its ranges")
	}
	if v4.Overlaps(v6) || !v4.Overlaps(inV4) || !inV4.Overlaps(v4) {
		t.Error("Overlaps is wrong")
	}
	if got, want := v4.String(), "10.0.0.1-10.0.0.99,10.0.5.1-10.0.5.254"; got != want {
		t.Errorf("String() = %s, want %s", got, want)
	}
}

func TestNextIPAndCanonical(t *testing.T) {
	for in, want := range map[string]string{
		"10.0.0.255":      "10.0.1.0",
		"255.255.255.255": "0.0.0.0",
		"fd00::ffff":      "fd00::1:0",
	} {
		ip, err := Canonical(net.ParseIP(in))
		if err != nil {
			t.Fatal(err)
		}
		if got := NextIP(ip); !got.Equal(net.ParseIP(want)) || len(got) != len(ip) {
			t.Errorf("NextIP(%s) = %s (%d bytes), want %s", in, got, len(got), want)
		}
		if !ip.Equal(net.ParseIP(in)) {
			t.Errorf("NextIP changed its argument: %s", ip)
		}
	}
	if _, err := Canonical(net.IP{1, 2, 3}); err == nil {
		t.Error("Canonical of 3 bytes succeeded")
	}
}
