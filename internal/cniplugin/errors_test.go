package cniplugin

import (
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

func TestAsCNIError(t *testing.T) {
	storeErr := &fs.PathError{Op: "open", Path: "/data/net/lock", Err: unix.EROFS}
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
