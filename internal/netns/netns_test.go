package netns

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestOpenErrors(t *testing.T) {
	f, err := os.CreateTemp(t.TempDir(), "notns")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	// Opening a FIFO for reading blocks until a writer comes.
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	fifoLink := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(fifo, fifoLink); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		path string
		want error
	}{
		{"", ErrInvalid},
		{"/nonexistent/netns", ErrNotExist},
		{f.Name(), ErrInvalid},
		{"/proc/self/ns/uts", ErrInvalid},
		{"/proc/thread-self/ns/net", ErrOwn},
		{fifo, ErrInvalid},
		{fifoLink, ErrInvalid},
		{"/dev/null", ErrInvalid},
		{t.TempDir(), ErrInvalid},
	} {
		ns, err := openWithin(t, tc.path, 5*time.Second)
		if !errors.Is(err, tc.want) {
			t.Errorf("Open(%q) = %v, want %v", tc.path, err, tc.want)
		}
		if err == nil {
			ns.Close()
			continue
		}
		if tc.path != "" && !strings.Contains(err.Error(), tc.path) {
			t.Errorf("Open(%q) = %v, does not name the path", tc.path, err)
		}
	}
	t.Setenv("CNI_NETNS_OVERRIDE", "1")
	ns, err := Open("/proc/thread-self/ns/net")
	if err != nil {
		t.Fatalf("own namespace with CNI_NETNS_OVERRIDE=1: %v", err)
	}
	ns.Close()
}

// openWithin is Open failing the test instead of hanging when it has not
// returned within d.
func openWithin(t *testing.T, path string, d time.Duration) (*NS, error) {
	t.Helper()
	type opened struct {
		ns  *NS
		err error
	}
	done := make(chan opened, 1)
	go func() {
		ns, err := Open(path)
		done <- opened{ns, err}
	}()
	select {
	case o := <-done:
		return o.ns, o.err
	case <-time.After(d):
		t.Fatalf("Open(%q) still blocked after %v", path, d)
		return nil, nil
	}
}

// newTemp is a fresh namespace removed when the test ends; the test is
// skipped unless run as root.
func newTemp(t *testing.T) *Temp {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	tmp, err := NewTemp("pntest")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tmp.Remove() })
	return tmp
}

func TestTempAndDo(t *testing.T) {
	tmp := newTemp(t)
	cur, err := Current()
	if err != nil {
		t.Fatal(err)
	}
	defer cur.Close()
	var inside *NS
	if err := tmp.Do(func() error {
		var err error
		inside, err = Current()
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer inside.Close()
	if !inside.Handle().Equal(tmp.Handle()) {
		t.Error("Do did not run inside the namespace")
	}
	after, _ := Current()
	defer after.Close()
	if !after.Handle().Equal(cur.Handle()) {
		t.Error("caller's namespace changed")
	}
	if err := tmp.Remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(tmp.Path()); !os.IsNotExist(err) {
		t.Errorf("netns file remains: %v", err)
	}
}

// TestDeleteNamedLeftovers covers what a process killed inside Create
// leaves: a binding file without its mount. DeleteNamed removes it, and a
// second delete of the same name is no error.
func TestDeleteNamedLeftovers(t *testing.T) {
	tmp := newTemp(t)
	tmp.Close()
	bare := tmp.Name + "-bare"
	if err := os.WriteFile(filepath.Join(RunDir, bare), nil, 0o444); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{tmp.Name, bare, tmp.Name, bare} {
		if err := DeleteNamed(name); err != nil {
			t.Errorf("DeleteNamed(%s): %v", name, err)
		}
		if _, err := os.Stat(filepath.Join(RunDir, name)); !os.IsNotExist(err) {
			t.Errorf("%s remains: %v", name, err)
		}
	}
}

// TestAddLoopbackAddr: the addresses land on the namespace's lo as host
// addresses, not on the caller's.
func TestAddLoopbackAddr(t *testing.T) {
	tmp := newTemp(t)
	for _, a := range []netip.Addr{netip.MustParseAddr("192.0.2.77"), netip.MustParseAddr("2001:db8::77")} {
		if err := tmp.AddLoopbackAddr(a); err != nil {
			t.Fatal(err)
		}
	}
	h, err := netlink.NewHandleAt(tmp.Handle(), unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		t.Fatal(err)
	}
	addrs, err := h.AddrList(lo, netlink.FAMILY_ALL)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, a := range addrs {
		got = append(got, a.IPNet.String())
	}
	for _, want := range []string{"192.0.2.77/32", "2001:db8::77/128"} {
		if !slices.Contains(got, want) {
			t.Errorf("lo has %v, want %s", got, want)
		}
	}
	if own, err := netlink.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, a := range own {
			if a.IP.Equal(net.IPv4(192, 0, 2, 77)) {
				t.Errorf("the address landed in the caller's namespace")
			}
		}
	}
}
