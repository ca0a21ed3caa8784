package ipam

import (
	"encoding/json"
	"errors"
	"net"
	"strings"
	"testing"
)

// mustSet decodes and canonicalizes a range set.
func mustSet(t *testing.T, js string) RangeSet {
	t.Helper()
	var s RangeSet
	if err := json.Unmarshal([]byte(js), &s); err != nil {
		t.Fatalf("decode %s: %v", js, err)
	}
	if err := s.Canonicalize(); err != nil {
		t.Fatalf("canonicalize %s: %v", js, err)
	}
	return s
}

// openStore opens a store of network "net" in a fresh directory; it is
// closed when the test ends.
func openStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := Open(dir, "net")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func owner(id string) Owner { return Owner{ContainerID: id, IfName: "eth0"} }

// exhausted is the want of a step that finds no free address.
const exhausted = "exhausted"

func TestAllocator(t *testing.T) {
	type step struct {
		owner   string
		req     string // requested address
		release bool   // release the owner's addresses instead
		want    string // the address with its prefix, exhausted, or "error: <part of it>"
		gw      string // the gateway returned, when set
	}
	for _, tc := range []struct {
		name  string
		set   string
		steps []step
		free  bool // Free() after the steps
	}{
		{
			name: "in order from the gateway on, to exhaustion, then wrapping",
			set:  `[{"subnet":"10.0.0.0/29"}]`,
			steps: []step{
				{owner: "a", want: "10.0.0.2/29", gw: "10.0.0.1"}, {owner: "b", want: "10.0.0.3/29"}, {owner: "c", want: "10.0.0.4/29"},
				{owner: "d", want: "10.0.0.5/29"}, {owner: "e", want: "10.0.0.6/29"}, {owner: "f", want: exhausted},
				{owner: "b", release: true}, {owner: "g", want: "10.0.0.3/29"},
			},
		},
		{
			name: "round robin resumes after the last reserved, not at the lowest free",
			set:  `[{"subnet":"10.0.0.0/29"}]`,
			steps: []step{
				{owner: "a", want: "10.0.0.2/29"}, {owner: "b", want: "10.0.0.3/29"},
				{owner: "a", release: true}, {owner: "c", want: "10.0.0.4/29"},
			},
			free: true,
		},
		{
			name: "the ranges of a set in turn, each one's gateway skipped",
			set:  `[{"subnet":"10.0.0.0/30"},{"subnet":"10.0.1.0/30"}]`,
			steps: []step{
				{owner: "a", want: "10.0.0.2/30", gw: "10.0.0.1"}, {owner: "b", want: "10.0.1.2/30", gw: "10.0.1.1"},
				{owner: "c", want: exhausted},
			},
		},
		{
			name: "a gateway inside an explicit range is skipped",
			set:  `[{"subnet":"10.0.0.0/24","rangeStart":"10.0.0.5","rangeEnd":"10.0.0.7","gateway":"10.0.0.6"}]`,
			steps: []step{
				{owner: "a", want: "10.0.0.5/24", gw: "10.0.0.6"}, {owner: "b", want: "10.0.0.7/24"}, {owner: "c", want: exhausted},
			},
		},
		{
			name: "IPv6",
			set:  `[{"subnet":"fd00:9::/125"}]`,
			steps: []step{
				{owner: "a", want: "fd00:9::2/125", gw: "fd00:9::1"}, {owner: "b", want: "fd00:9::3/125"},
				{owner: "c", req: "fd00:9::7", want: "fd00:9::7/125"}, {owner: "d", want: "fd00:9::4/125"},
			},
			free: true,
		},
		{
			name: "requested addresses",
			set:  `[{"subnet":"10.0.0.0/29"}]`,
			steps: []step{
				{owner: "a", req: "10.0.0.4", want: "10.0.0.4/29"},
				{owner: "b", req: "10.0.0.4", want: "error: 10.0.0.4 is not available"},
				{owner: "b", req: "10.0.0.1", want: "error: gateway"},
				{owner: "b", req: "10.0.0.7", want: "error: not in range set"},
				{owner: "b", req: "fd00::2", want: "error: not in range set"},
				// A request does not move the round robin.
				{owner: "b", want: "10.0.0.2/29"}, {owner: "c", want: "10.0.0.3/29"}, {owner: "d", want: "10.0.0.5/29"},
			},
			free: true,
		},
		{
			name: "an owner gets back what it holds: a retried ADD neither fails nor leaks",
			set:  `[{"subnet":"10.0.0.0/29"}]`,
			steps: []step{
				{owner: "a", want: "10.0.0.2/29"}, {owner: "a", want: "10.0.0.2/29"},
				{owner: "a", req: "10.0.0.2", want: "10.0.0.2/29"},
				{owner: "b", want: "10.0.0.3/29"},
			},
			free: true,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			a := &Allocator{Set: mustSet(t, tc.set), Store: s}
			for i, st := range tc.steps {
				o := owner(st.owner)
				if st.release {
					if err := s.Release(o); err != nil {
						t.Fatalf("step %d: release %s: %v", i, st.owner, err)
					}
					continue
				}
				held, _ := s.Addresses(o)
				got, gw, err := a.Get(o, net.ParseIP(st.req), held)
				switch want, isErr := strings.CutPrefix(st.want, "error: "); {
				case st.want == exhausted:
					var ex *ErrExhausted
					if !errors.As(err, &ex) {
						t.Fatalf("step %d: Get for %s = %v, %v, want ErrExhausted", i, st.owner, got, err)
					}
				case isErr:
					if err == nil || !strings.Contains(err.Error(), want) {
						t.Fatalf("step %d: Get for %s = %v, %v, want an error with %q", i, st.owner, got, err, want)
					}
				case err != nil:
					t.Fatalf("step %d: Get for %s: %v", i, st.owner, err)
				case got.String() != st.want || st.gw != "" && !gw.Equal(net.ParseIP(st.gw)):
					t.Fatalf("step %d: Get for %s = %s gateway %s, want %s gateway %s", i, st.owner, got, gw, st.want, st.gw)
				default:
					if cur, ok := s.OwnerOf(got.IP); !ok || cur != o {
						t.Fatalf("step %d: %s allocated to %v, want %v", i, got.IP, cur, o)
					}
					if err := s.SetAddresses(o, appendNew(held, got.IP)); err != nil {
						t.Fatal(err)
					}
				}
			}
			if got := a.Free(); got != tc.free {
				t.Errorf("Free() = %v, want %v", got, tc.free)
			}
		})
	}
}

// appendNew appends ip unless ips holds it.
func appendNew(ips []net.IP, ip net.IP) []net.IP {
	for _, x := range ips {
		if x.Equal(ip) {
			return ips
		}
	}
	return append(ips, ip)
}

// TestAllocatorCursor: the round robin starts over at the set's first
// address when its cursor is outside the set (the configuration changed)
// or unreadable, and each range set of a network has its own cursor.
func TestAllocatorCursor(t *testing.T) {
	set := mustSet(t, `[{"subnet":"10.0.0.0/29"}]`)
	for _, tc := range []struct {
		name   string
		cursor func(s *Store) error
		want   string
	}{
		{"no cursor", func(*Store) error { return nil }, "10.0.0.2"},
		{"cursor inside", func(s *Store) error { return s.SetLastReserved(0, net.ParseIP("10.0.0.4").To4()) }, "10.0.0.5"},
		{"cursor at the end wraps", func(s *Store) error { return s.SetLastReserved(0, net.ParseIP("10.0.0.6").To4()) }, "10.0.0.2"},
		{"cursor outside the set", func(s *Store) error { return s.SetLastReserved(0, net.ParseIP("10.9.0.4").To4()) }, "10.0.0.2"},
		{"another set's cursor", func(s *Store) error { return s.SetLastReserved(1, net.ParseIP("10.0.0.4").To4()) }, "10.0.0.2"},
		{"garbage cursor", func(s *Store) error { return writeFile(s, "last_reserved_ip.0", "not an address") }, "10.0.0.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := openStore(t, t.TempDir())
			if err := tc.cursor(s); err != nil {
				t.Fatal(err)
			}
			got, _, err := (&Allocator{Set: set, Store: s}).Get(owner("a"), nil, nil)
			if err != nil || !got.IP.Equal(net.ParseIP(tc.want)) {
				t.Fatalf("Get = %v, %v, want %s", got, err, tc.want)
			}
			if last := s.LastReserved(0); !last.Equal(got.IP) {
				t.Errorf("cursor after Get = %v, want %s", last, got.IP)
			}
		})
	}
}
