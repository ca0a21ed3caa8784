package cniplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/netns"
)

func TestAsCNIError(t *testing.T) {
	storeErr := &fs.PathError{Op: "open", Path: "/data/net/lock", Err: unix.EROFS}
	ipamErr := ipamOpenError(t)
	gone := openError(t, "/nonexistent/netns")
	own := openError(t, "/proc/thread-self/ns/net")
	notNS := openError(t, "/proc/self/ns/uts")
	for _, tc := range []struct {
		name    string
		err     error
		code    uint
		msg     string // substring of Msg
		details string // substring of Details
		isErrno error  // errors.Is must still see it on the input
	}{
		{name: "plain", err: errors.New("boom"), code: types.ErrInternal, msg: "boom"},
		{name: "spec error kept", err: NewError(types.ErrInvalidNetworkConfig, "bad", "why"), code: 7, msg: "bad", details: "why"},
		{name: "spec error in context", err: fmt.Errorf("loading: %w", NewError(types.ErrDecodingFailure, "bad json", "at 3")), code: 6, msg: "bad json", details: "loading: bad json"},
		{name: "wrapped I/O", err: fmt.Errorf("allocate: %w", Wrap(types.ErrIOFailure, "IPAM store I/O failure", storeErr)), code: 5, msg: "I/O failure", details: "/data/net/lock: read-only file system", isErrno: unix.EROFS},
		{name: "EAGAIN", err: fmt.Errorf("netlink: %w", unix.EAGAIN), code: types.ErrTryAgainLater, msg: "resource temporarily unavailable"},
		{name: "EBUSY", err: fmt.Errorf("set up: %w", unix.EBUSY), code: types.ErrTryAgainLater, msg: "busy"},
		{name: "dump interrupted", err: fmt.Errorf("list links: %w", netlink.ErrDumpInterrupted), code: types.ErrTryAgainLater, msg: "list links"},
		{name: "EBUSY under a spec code keeps the code", err: Wrap(types.ErrInvalidNetworkConfig, "taken", unix.EBUSY), code: 7, msg: "taken"},
		{name: "joined: first spec error wins", err: errors.Join(errors.New("a"), Wrap(types.ErrIOFailure, "io", unix.ENOSPC)), code: 5, msg: "io", details: "no space left on device"},
		{name: "netns gone", err: gone, code: types.ErrUnknownContainer, msg: "does not exist", details: "/nonexistent/netns"},
		{name: "netns gone in context", err: fmt.Errorf("open container: %w", gone), code: 3, details: "open container: "},
		{name: "netns of another type", err: notNS, code: types.ErrInvalidEnvironmentVariables, msg: "CNI_NETNS is not a network namespace", details: "/proc/self/ns/uts: namespace type"},
		{name: "netns empty", err: openError(t, ""), code: 4, msg: "CNI_NETNS", details: "empty path"},
		{name: "own netns", err: own, code: 4, msg: "own network namespace", details: "/proc/thread-self/ns/net"},
		{name: "IPAM store I/O", err: fmt.Errorf("allocate: %w", ipamErr), code: types.ErrIOFailure, msg: "IPAM store I/O failure", details: "not a directory", isErrno: unix.ENOTDIR},
		{name: "bare IPAM store I/O", err: ipamErr, code: 5, msg: "IPAM store I/O failure", details: "create IPAM store"},
		{name: "requested IP the gateway", err: fmt.Errorf("range 0: %w", requestError(t)), code: types.ErrInvalidNetworkConfig, msg: "requested IP", details: "gateway"},
		{name: "IPAM I/O with EBUSY stays I/O", err: fmt.Errorf("%w: %w", ipam.ErrIO, unix.EBUSY), code: 5, details: "busy"},
		{name: "spec error around plumbing wins", err: Wrap(types.ErrInvalidNetworkConfig, "bad netns", gone), code: 7, msg: "bad netns"},
		{name: "joined: first of plumbing and spec wins", err: errors.Join(own, Wrap(types.ErrIOFailure, "io", unix.ENOSPC)), code: 4, msg: "own"},
		{name: "joined: spec before plumbing", err: errors.Join(Wrap(types.ErrIOFailure, "io", unix.ENOSPC), own), code: 5, msg: "io"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := AsCNIError(tc.err)
			var e *types.Error
			if !errors.As(out, &e) {
				t.Fatalf("AsCNIError(%v) = %T, want *types.Error", tc.err, out)
			}
			if e.Code != tc.code || !strings.Contains(e.Msg, tc.msg) || !strings.Contains(e.Details, tc.details) {
				t.Errorf("AsCNIError(%v) = code %d msg %q details %q, want code %d, msg ~%q, details ~%q",
					tc.err, e.Code, e.Msg, e.Details, tc.code, tc.msg, tc.details)
			}
			if tc.isErrno != nil && !errors.Is(tc.err, tc.isErrno) {
				t.Errorf("Wrap lost the cause: errors.Is(%v, %v) = false", tc.err, tc.isErrno)
			}
		})
	}
	if AsCNIError(nil) != nil {
		t.Error("AsCNIError(nil) != nil")
	}
}

// openError is netns.Open's error for path.
func openError(t *testing.T, path string) error {
	t.Helper()
	ns, err := netns.Open(path)
	if err == nil {
		ns.Close()
		t.Fatalf("netns.Open(%q) succeeded", path)
	}
	return err
}

// ipamOpenError is the IPAM store's error for a data directory that is a
// file.
func ipamOpenError(t *testing.T) error {
	t.Helper()
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	s, err := ipam.Open(file, "net")
	if err == nil {
		s.Close()
		t.Fatal("ipam.Open under a file succeeded")
	}
	return err
}

// requestError is the allocator's error for a requested address that is
// its subnet's gateway.
func requestError(t *testing.T) error {
	t.Helper()
	set := ipam.RangeSet{{Subnet: net.IPNet{IP: net.IPv4(10, 0, 0, 0).To4(), Mask: net.CIDRMask(24, 32)}}}
	if err := set.Canonicalize(); err != nil {
		t.Fatal(err)
	}
	s, err := ipam.Open(t.TempDir(), "net")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a := &ipam.Allocator{Set: set, Store: s}
	_, _, err = a.Get(ipam.Owner{ContainerID: "c", IfName: "eth0"}, net.IPv4(10, 0, 0, 1).To4(), nil)
	if err == nil {
		t.Fatal("the gateway was allocated")
	}
	return err
}

func TestIsGone(t *testing.T) {
	gone := openError(t, "/nonexistent/netns")
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"netns gone", gone, true},
		{"netns gone in context", fmt.Errorf("DEL: %w", gone), true},
		{"spec error 3", NewError(types.ErrUnknownContainer, "gone", ""), true},
		{"netns invalid", openError(t, "/proc/self/ns/uts"), false},
		{"own netns", openError(t, "/proc/thread-self/ns/net"), false},
		{"I/O", ipamOpenError(t), false},
		{"plain", errors.New("no such file or directory"), false},
	} {
		if got := IsGone(tc.err); got != tc.want {
			t.Errorf("%s: IsGone(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}

func TestUnsupported(t *testing.T) {
	backend := "ipset"
	for _, tc := range []struct {
		field string
		value any
		want  string
	}{
		{"vlan", 7, "vlan=7"},
		{"ipMasqBackend", &backend, `ipMasqBackend="ipset"`},
		{"vlanTrunk", []int{5, 6}, "vlanTrunk=[5,6]"},
	} {
		e := Unsupported(tc.field, tc.value, "because")
		if e.Code != types.ErrUnsupportedField || !strings.Contains(e.Msg, tc.want) || e.Details != "because" {
			t.Errorf("Unsupported(%s, %v) = %d %q %q, want code 2 naming %s", tc.field, tc.value, e.Code, e.Msg, e.Details, tc.want)
		}
	}
}
