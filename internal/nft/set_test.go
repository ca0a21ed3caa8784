package nft

import (
	"fmt"
	"math/rand"
	"net"
	"reflect"
	"testing"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"

	"github.com/podnet/podnet/internal/testing/nfttest"
)

func elem(key string) nftables.SetElement { return nftables.SetElement{Key: []byte(key)} }

func val(key, v string) nftables.SetElement {
	return nftables.SetElement{Key: []byte(key), Val: []byte(v)}
}

func jump(key, chain string) nftables.SetElement {
	return nftables.SetElement{Key: []byte(key), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
}

func TestDiff(t *testing.T) {
	end := func(key string) nftables.SetElement {
		return nftables.SetElement{Key: []byte(key), IntervalEnd: true}
	}
	for _, tc := range []struct {
		name           string
		have, want     []nftables.SetElement
		wantAdd, wantD []nftables.SetElement
	}{
		{name: "empty"},
		{name: "all new", want: []nftables.SetElement{elem("a"), elem("b")}, wantAdd: []nftables.SetElement{elem("a"), elem("b")}},
		{name: "all stale", have: []nftables.SetElement{elem("a"), elem("b")}, wantD: []nftables.SetElement{elem("a"), elem("b")}},
		{
			name:    "only the difference",
			have:    []nftables.SetElement{elem("a"), elem("b"), elem("c")},
			want:    []nftables.SetElement{elem("b"), elem("d"), elem("c")},
			wantAdd: []nftables.SetElement{elem("d")}, wantD: []nftables.SetElement{elem("a")},
		},
		{name: "duplicates in want count once", want: []nftables.SetElement{elem("a"), elem("a")}, wantAdd: []nftables.SetElement{elem("a")}},
		{
			name:    "an interval end is not the start of the same key",
			have:    []nftables.SetElement{elem("a"), end("b")},
			want:    []nftables.SetElement{elem("a"), elem("b")},
			wantAdd: []nftables.SetElement{elem("a"), elem("b")}, wantD: []nftables.SetElement{elem("a"), end("b")},
		},
		{
			name:    "ranges are kept, deleted and added whole",
			have:    []nftables.SetElement{end("d"), elem("c"), end("b"), elem("a")}, // as the kernel dumps them
			want:    []nftables.SetElement{elem("a"), end("b"), elem("e"), end("f"), elem("g")},
			wantAdd: []nftables.SetElement{elem("e"), end("f"), elem("g")}, wantD: []nftables.SetElement{elem("c"), end("d")},
		},
		{
			name:    "a range whose start changes loses its end too",
			have:    []nftables.SetElement{elem("a"), end("z")},
			want:    []nftables.SetElement{elem("b"), end("z")},
			wantAdd: []nftables.SetElement{elem("b"), end("z")}, wantD: []nftables.SetElement{elem("a"), end("z")},
		},
		{
			name:    "a map value change is delete and add",
			have:    []nftables.SetElement{val("a", "1"), val("b", "2")},
			want:    []nftables.SetElement{val("a", "1"), val("b", "3")},
			wantAdd: []nftables.SetElement{val("b", "3")}, wantD: []nftables.SetElement{val("b", "2")},
		},
		{
			name:    "a verdict change is delete and add",
			have:    []nftables.SetElement{jump("a", "x"), jump("b", "y")},
			want:    []nftables.SetElement{jump("a", "x"), jump("b", "z")},
			wantAdd: []nftables.SetElement{jump("b", "z")}, wantD: []nftables.SetElement{jump("b", "y")},
		},
		{
			name:    "a comment change is delete and add",
			have:    []nftables.SetElement{{Key: []byte("a"), Comment: "x"}},
			want:    []nftables.SetElement{{Key: []byte("a"), Comment: "y"}},
			wantAdd: []nftables.SetElement{{Key: []byte("a"), Comment: "y"}}, wantD: []nftables.SetElement{{Key: []byte("a"), Comment: "x"}},
		},
		{
			name:    "concatenated ranges differ by their end",
			have:    []nftables.SetElement{{Key: []byte("a1"), KeyEnd: []byte("a5")}},
			want:    []nftables.SetElement{{Key: []byte("a1"), KeyEnd: []byte("a6")}},
			wantAdd: []nftables.SetElement{{Key: []byte("a1"), KeyEnd: []byte("a6")}}, wantD: []nftables.SetElement{{Key: []byte("a1"), KeyEnd: []byte("a5")}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			add, del := Diff(tc.have, tc.want)
			if !reflect.DeepEqual(add, tc.wantAdd) || !reflect.DeepEqual(del, tc.wantD) {
				t.Errorf("Diff = add %v, del %v; want add %v, del %v", add, del, tc.wantAdd, tc.wantD)
			}
		})
	}
}

func TestPrefixElements(t *testing.T) {
	ip := func(s string) []byte {
		if v4 := net.ParseIP(s).To4(); v4 != nil {
			return v4
		}
		return net.ParseIP(s)
	}
	start := func(s string) nftables.SetElement { return nftables.SetElement{Key: ip(s)} }
	end := func(s string) nftables.SetElement { return nftables.SetElement{Key: ip(s), IntervalEnd: true} }
	for _, tc := range []struct {
		name     string
		prefixes []string
		want     []nftables.SetElement
	}{
		{"none", nil, nil},
		{"one", []string{"10.244.0.0/16"}, []nftables.SetElement{start("10.244.0.0"), end("10.245.0.0")}},
		{"host bits ignored", []string{"10.244.3.7/16"}, []nftables.SetElement{start("10.244.0.0"), end("10.245.0.0")}},
		{"a host", []string{"192.0.2.1/32"}, []nftables.SetElement{start("192.0.2.1"), end("192.0.2.2")}},
		{"contained dropped", []string{"10.1.0.0/24", "10.0.0.0/8"}, []nftables.SetElement{start("10.0.0.0"), end("11.0.0.0")}},
		{"adjacent merged", []string{"10.245.0.0/16", "10.246.0.0/16"}, []nftables.SetElement{start("10.245.0.0"), end("10.247.0.0")}},
		{
			"apart in order", []string{"10.3.0.0/16", "10.1.0.0/16"},
			[]nftables.SetElement{start("10.1.0.0"), end("10.2.0.0"), start("10.3.0.0"), end("10.4.0.0")},
		},
		{"to the end of the space", []string{"255.255.255.0/24"}, []nftables.SetElement{start("255.255.255.0")}},
		{"everything", []string{"0.0.0.0/0"}, []nftables.SetElement{start("0.0.0.0")}},
		{"ipv6", []string{"fd00:10:244::/56"}, []nftables.SetElement{start("fd00:10:244::"), end("fd00:10:244:100::")}},
		{
			"both families, IPv4 first", []string{"fd00::/64", "10.0.0.0/8"},
			[]nftables.SetElement{start("10.0.0.0"), end("11.0.0.0"), start("fd00::"), end("fd00:0:0:1::")},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := PrefixElements(nfttest.CIDRs(t, tc.prefixes...))
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("PrefixElements(%v) = %v, want %v", tc.prefixes, got, tc.want)
			}
		})
	}
	for _, bad := range []*net.IPNet{nil, {IP: net.ParseIP("10.0.0.1")}, {IP: net.IP{1, 2, 3}, Mask: net.CIDRMask(8, 32)}} {
		if _, err := PrefixElements([]*net.IPNet{bad}); err == nil {
			t.Errorf("PrefixElements(%v) succeeded", bad)
		}
	}
}

// TestSyncSetKernel syncs sets and maps of every shape against the
// kernel: each step must leave exactly the wanted elements, report a
// change only when there was one, and the kernel must reject nothing.
func TestSyncSetKernel(t *testing.T) {
	port := func(p uint16) []byte { return []byte{byte(p >> 8), byte(p), 0, 0} } // inet_service, padded to 4
	svc := func(a, b, c, d byte, proto byte, p uint16) []byte {
		return append([]byte{a, b, c, d, proto, 0, 0, 0}, port(p)...)
	}
	target := &nftables.Chain{Table: testTable, Name: "svc-a"}
	for _, tc := range []struct {
		name  string
		set   Set
		steps [][]nftables.SetElement
	}{
		{
			name: "set of ipv4_addr . inet_proto . inet_service",
			set: Set{Table: testTable, Name: "services", Key: []nftables.SetDatatype{
				nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService}},
			steps: [][]nftables.SetElement{
				{{Key: svc(10, 96, 0, 1, 6, 80)}, {Key: svc(10, 96, 0, 1, 17, 53)}},
				{{Key: svc(10, 96, 0, 1, 6, 80)}, {Key: svc(10, 96, 0, 2, 6, 443)}},
				nil,
			},
		},
		{
			name: "interval set of ipv4_addr",
			set:  Set{Table: testTable, Name: "cidrs", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Interval: true},
			steps: [][]nftables.SetElement{
				mustPrefixes(t, "10.244.0.0/16", "192.168.0.0/24"),
				mustPrefixes(t, "10.244.0.0/16", "10.96.0.0/12"),
				mustPrefixes(t, "10.0.0.0/8"),
			},
		},
		{
			name: "interval set of concatenations",
			set: Set{Table: testTable, Name: "ranges", Interval: true, Key: []nftables.SetDatatype{
				nftables.TypeIPAddr, nftables.TypeInetService}},
			steps: [][]nftables.SetElement{
				{{Key: append([]byte{10, 0, 0, 0}, port(80)...), KeyEnd: append([]byte{10, 0, 0, 255}, port(90)...)}},
				{{Key: append([]byte{10, 0, 0, 0}, port(80)...), KeyEnd: append([]byte{10, 0, 0, 255}, port(100)...)}},
			},
		},
		{
			name: "data map ipv4_addr : mark",
			set:  Set{Table: testTable, Name: "marks", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Data: nftables.TypeMark},
			steps: [][]nftables.SetElement{
				{{Key: []byte{10, 0, 0, 1}, Val: []byte{1, 0, 0, 0}}, {Key: []byte{10, 0, 0, 2}, Val: []byte{2, 0, 0, 0}}},
				{{Key: []byte{10, 0, 0, 1}, Val: []byte{3, 0, 0, 0}}, {Key: []byte{10, 0, 0, 2}, Val: []byte{2, 0, 0, 0}}},
			},
		},
		{
			name: "verdict map ipv4_addr . inet_proto . inet_service",
			set: Set{Table: testTable, Name: "dispatch", Data: nftables.TypeVerdict, Key: []nftables.SetDatatype{
				nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService}},
			steps: [][]nftables.SetElement{
				{
					{Key: svc(10, 96, 0, 1, 6, 80), VerdictData: &expr.Verdict{Kind: expr.VerdictJump, Chain: target.Name}},
					{Key: svc(10, 96, 0, 1, 6, 81), VerdictData: &expr.Verdict{Kind: expr.VerdictDrop}, Comment: "owner"},
				},
				{{Key: svc(10, 96, 0, 1, 6, 80), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: target.Name}}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := connIn(t, nfttest.NS(t, "nftset"))
			if err := c.Transact(func(tx *Tx) (bool, error) {
				tx.AddTable(testTable)
				tx.AddChain(target)
				return false, nil
			}); err != nil {
				t.Fatal(err)
			}
			for i, want := range tc.steps {
				changed, err := c.SyncSet(tc.set, want)
				if err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
				if !changed {
					t.Errorf("step %d reported no change", i)
				}
				have, err := c.Elements(tc.set)
				if err != nil {
					t.Fatal(err)
				}
				if add, del := Diff(have, want); len(add)+len(del) != 0 {
					t.Fatalf("step %d: kernel has %v; missing %v, stale %v", i, have, add, del)
				}
				if changed, err := c.SyncSet(tc.set, want); err != nil || changed {
					t.Errorf("step %d again: changed=%v err=%v, want no change", i, changed, err)
				}
			}
		})
	}
}

func mustPrefixes(t *testing.T, prefixes ...string) []nftables.SetElement {
	t.Helper()
	elems, err := PrefixElements(nfttest.CIDRs(t, prefixes...))
	if err != nil {
		t.Fatal(err)
	}
	return elems
}

// TestSingleElements adds and deletes elements one at a time, including
// ones that are not there, and a set that does not exist.
func TestSingleElements(t *testing.T) {
	ns := nfttest.NS(t, "nftset")
	c := connIn(t, ns)
	s := Set{Table: testTable, Name: "pods", Key: []nftables.SetDatatype{nftables.TypeIPAddr}}
	a, b := nftables.SetElement{Key: []byte{10, 0, 0, 1}}, nftables.SetElement{Key: []byte{10, 0, 0, 2}}
	if err := c.DeleteElements(s, a); err != nil {
		t.Fatalf("delete from a missing set: %v", err)
	}
	for i := 0; i < 2; i++ {
		if err := c.AddElements(s, a, b); err != nil {
			t.Fatalf("add #%d: %v", i+1, err)
		}
	}
	other := connIn(t, ns)
	if err := other.DeleteElements(s, a); err != nil {
		t.Fatal(err)
	}
	// a is gone already: the blind batch fails, the retry deletes b only.
	if err := c.DeleteElements(s, a, b); err != nil {
		t.Fatalf("delete of a missing and a present element: %v", err)
	}
	if have, err := c.Elements(s); err != nil || len(have) != 0 {
		t.Errorf("elements left: %v %v", have, err)
	}
}

// TestSyncIntervalSetRandom walks an interval set through random sets of
// prefixes (a fixed seed: the same walk every run), synced element by
// element: ranges that overlap, touch, share a start or an end with the
// previous ones. Every step must leave exactly the wanted elements.
func TestSyncIntervalSetRandom(t *testing.T) {
	c := connIn(t, nfttest.NS(t, "nftset"))
	s := Set{Table: testTable, Name: "cidrs", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Interval: true}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 300; i++ {
		var prefixes []string
		for j := r.Intn(6); j > 0; j-- {
			prefixes = append(prefixes, fmt.Sprintf("10.%d.%d.0/%d", r.Intn(256), r.Intn(256), 8+r.Intn(17)))
		}
		want := mustPrefixes(t, prefixes...)
		if _, err := c.SyncSet(s, want); err != nil {
			t.Fatalf("step %d to %v: %v", i, prefixes, err)
		}
		have, err := c.Elements(s)
		if err != nil {
			t.Fatal(err)
		}
		if add, del := Diff(have, want); len(add)+len(del) != 0 {
			t.Fatalf("step %d to %v: missing %v, stale %v", i, prefixes, add, del)
		}
	}
}

func TestGetElementsAndChains(t *testing.T) {
	c := connIn(t, nfttest.NS(t, "nftset"))
	target := &nftables.Chain{Table: testTable, Name: "net/pod/eth0"}
	s := Set{Table: testTable, Name: "vmap", Key: []nftables.SetDatatype{nftables.TypeIPAddr}, Data: nftables.TypeVerdict}
	goTo := nftables.SetElement{Key: []byte{10, 0, 0, 1}, VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: target.Name}}
	var found []nftables.SetElement
	var chains []string
	err := c.Transact(func(tx *Tx) (bool, error) {
		if _, err := tx.GetElements(s, goTo.Key); err != nil { // no table yet
			return false, err
		}
		tx.AddTable(testTable)
		tx.AddChain(target)
		if err := tx.AddSet(s); err != nil {
			return false, err
		}
		return false, tx.AddElements(s, []nftables.SetElement{goTo})
	})
	if err != nil {
		t.Fatal(err)
	}
	err = c.read(func(tx *Tx) (err error) {
		if found, err = tx.GetElements(s, []byte{10, 0, 0, 2}, goTo.Key); err != nil {
			return err
		}
		chains, err = tx.Chains(testTable)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(found, []nftables.SetElement{goTo}) {
		t.Errorf("GetElements = %v, want %v", found, goTo)
	}
	if !reflect.DeepEqual(chains, []string{target.Name}) {
		t.Errorf("Chains = %q", chains)
	}
}
