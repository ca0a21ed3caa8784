// Package cniplugin is the runtime contract every podnet plugin shares: it
// dispatches a multi-call binary on argv[0], decodes and validates network
// configurations, converts results to the requested spec version, maps
// failures to CNI error codes, and runs IPAM plugins in-process when the
// runtime's CNI_PATH resolves them to this same binary.
package cniplugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Version is podnet's release, printed in the plugins' "about" line.
var Version = "dev"

// SupportedVersions is every CNI spec version podnet's plugins speak.
var SupportedVersions = version.All

// Plugin is one CNI plugin: the verbs it implements. Add returns its result
// in any version; the dispatcher converts it to the version of the config.
// A nil Check, GC or Status means the verb has nothing to do and succeeds.
type Plugin struct {
	Add    func(*skel.CmdArgs) (types.Result, error)
	Del    func(*skel.CmdArgs) error
	Check  func(*skel.CmdArgs) error
	GC     func(*skel.CmdArgs) error
	Status func(*skel.CmdArgs) error
}

// registry holds the plugins of this binary, by type name; IPAM delegation
// looks here to run a plugin in-process.
var registry map[string]Plugin

// Main runs the plugin named by argv[0] (the name of the hard link the
// runtime executed) and exits with the spec's error protocol on failure.
func Main(plugins map[string]Plugin) {
	registry = plugins
	name := filepath.Base(os.Args[0])
	p, ok := plugins[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "podnet-cni %s: run as one of the plugin names (%s), e.g. through a hard link\n",
			Version, strings.Join(Names(plugins), ", "))
		os.Exit(1)
	}
	// Run by hand (no CNI_* variable at all), a plugin introduces itself;
	// a runtime that set some but not CNI_COMMAND gets error 4.
	about := fmt.Sprintf("CNI %s plugin podnet %s", name, Version)
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "CNI_") {
			about = ""
			break
		}
	}
	skel.PluginMainFuncs(p.funcs(), SupportedVersions, about)
}

// Names lists the plugin names of a registry, sorted.
func Names(plugins map[string]Plugin) []string {
	names := make([]string, 0, len(plugins))
	for n := range plugins {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// funcs adapts a Plugin to skel: results are printed in the config's version
// and every error leaves as a *types.Error with a spec code.
func (p Plugin) funcs() skel.CNIFuncs {
	wrap := func(f func(*skel.CmdArgs) error) func(*skel.CmdArgs) error {
		return func(args *skel.CmdArgs) error {
			if f == nil {
				return nil
			}
			return AsCNIError(f(args))
		}
	}
	return skel.CNIFuncs{
		Add: func(args *skel.CmdArgs) error {
			if p.Add == nil {
				return NewError(types.ErrInvalidEnvironmentVariables, "this plugin does not implement ADD", "")
			}
			res, err := p.Add(args)
			if err != nil {
				return AsCNIError(err)
			}
			ver, err := (&version.ConfigDecoder{}).Decode(args.StdinData)
			if err != nil {
				return NewError(types.ErrDecodingFailure, "cannot read cniVersion", err.Error())
			}
			return AsCNIError(types.PrintResult(res, ver))
		},
		Del:    wrap(p.Del),
		Check:  wrap(p.Check),
		GC:     wrap(p.GC),
		Status: wrap(p.Status),
	}
}

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

// AsCNIError returns err as a *types.Error: a spec error found anywhere in
// its chain keeps its code and gains the surrounding context in its
// details; a transient kernel condition (see Transient) is "try again
// later" (11); any other error is an internal error (999).
func AsCNIError(err error) error {
	if err == nil {
		return nil
	}
	var e *types.Error
	if errors.As(err, &e) {
		if err.Error() == e.Error() {
			return e
		}
		// A bare Wrap need not repeat its msg in the details.
		details := strings.TrimPrefix(err.Error(), e.Error()+": ")
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

// IsGone tells whether err says the container (its netns) no longer exists,
// which DEL and GC treat as work already done.
func IsGone(err error) bool {
	var e *types.Error
	return errors.As(err, &e) && e.Code == types.ErrUnknownContainer
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
