package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podnet/podnet/internal/ipam"
	"github.com/podnet/podnet/internal/netns"
)

// NewError builds a spec error.
func NewError(code uint, msg, details string) *types.Error {
	return types.NewError(code, msg, details)
}

// Invalid is an invalid-configuration error (7) with a formatted message.
func Invalid(format string, a ...any) *types.Error {
	return Errorf(types.ErrInvalidNetworkConfig, format, a...)
}

// Errorf builds a spec error whose message is formatted.
func Errorf(code uint, format string, a ...any) *types.Error {
	return types.NewError(code, fmt.Sprintf(format, a...), "")
}

// Wrap gives err a spec code: the result's chain holds both a spec error
// (code, msg) and err itself, so errors.Is and errors.As still see the
// cause, and AsCNIError reports code and msg with err's text in details.
func Wrap(code uint, msg string, err error) error {
	return fmt.Errorf("%w: %w", NewError(code, msg, ""), err)
}

// Unsupported is error 2, a field whose value is well formed but that this
// plugin or this kernel cannot honour. As the spec asks, the message names
// the field and its value (JSON-encoded); details say why.
func Unsupported(field string, value any, details string) *types.Error {
	v, err := json.Marshal(value)
	if err != nil {
		v = []byte(fmt.Sprint(value))
	}
	return NewError(types.ErrUnsupportedField, fmt.Sprintf("unsupported field in network configuration: %s=%s", field, v), details)
}

// plumbing gives the errors of the kernel plumbing (netns, ipam), which
// know nothing of CNI, their spec code and the message a runtime reads.
var plumbing = []struct {
	err  error
	code uint
	msg  string
}{
	{netns.ErrNotExist, types.ErrUnknownContainer, "network namespace does not exist"},
	{netns.ErrInvalid, types.ErrInvalidEnvironmentVariables, "CNI_NETNS is not a network namespace"},
	{netns.ErrOwn, types.ErrInvalidEnvironmentVariables, "CNI_NETNS is the plugin's own network namespace"},
	{ipam.ErrIO, types.ErrIOFailure, "IPAM store I/O failure"},
	{ipam.ErrInvalidRequest, types.ErrInvalidNetworkConfig, "requested IP address cannot be allocated"},
}

// specError finds the first error in err's tree, in the order errors.As
// walks it, that is a spec error or one of plumbing's, and returns that
// error (found) and the spec error it stands for.
func specError(err error) (e *types.Error, found error) {
	if te, ok := err.(*types.Error); ok {
		return te, te
	}
	for _, p := range plumbing {
		if err == p.err {
			return types.NewError(p.code, p.msg, ""), err
		}
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		if next := u.Unwrap(); next != nil {
			return specError(next)
		}
	case interface{ Unwrap() []error }:
		for _, next := range u.Unwrap() {
			if e, found := specError(next); found != nil {
				return e, found
			}
		}
	}
	return nil, nil
}

// AsCNIError returns err as a *types.Error: a spec error, or an error of
// the plumbing (see plumbing), found anywhere in its chain gives its code
// and message, and the surrounding context goes into the details; a
// transient kernel condition (see Transient) is "try again later" (11);
// any other error is an internal error (999).
func AsCNIError(err error) error {
	if err == nil {
		return nil
	}
	if e, found := specError(err); found != nil {
		if err.Error() == found.Error() {
			return e
		}
		// A bare Wrap need not repeat its msg in the details.
		details := strings.TrimPrefix(err.Error(), found.Error()+": ")
		if e.Details != "" && !strings.Contains(details, e.Details) {
			details += ": " + e.Details
		}
		return types.NewError(e.Code, e.Msg, details)
	}
	if Transient(err) {
		return types.NewError(types.ErrTryAgainLater, "try again later: "+err.Error(), "")
	}
	return types.NewError(types.ErrInternal, err.Error(), "")
}

// Transient tells whether err is a kernel condition that clears up by
// itself, for which the spec's "try again later" (11) tells the runtime to
// retry the call: EAGAIN, EBUSY (a resource held for a moment by another
// process) and netlink dumps interrupted by a concurrent change.
func Transient(err error) bool {
	return errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EBUSY) || errors.Is(err, netlink.ErrDumpInterrupted)
}

// IsGone tells whether err says the container (its netns) no longer exists
// (error 3), which DEL and GC treat as work already done.
func IsGone(err error) bool {
	e, found := specError(err)
	return found != nil && e.Code == types.ErrUnknownContainer
}

// STATUS error codes of spec 1.1, which containernetworking/cni v1.2 does
// not name yet.
const (
	// ErrPluginNotAvailable (50): the plugin cannot serve ADD requests.
	ErrPluginNotAvailable uint = 50
	// ErrLimitedConnectivity (51): the plugin is not available and the
	// network's existing containers may have limited connectivity.
	ErrLimitedConnectivity uint = 51
)
