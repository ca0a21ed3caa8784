// Package cniplugin is the runtime contract every podnet plugin shares: it
// dispatches a multi-call binary on argv[0], decodes and validates network
// configurations, converts results to the requested spec version, maps
// failures to CNI error codes, and runs IPAM plugins in-process when the
// runtime's CNI_PATH resolves them to this same binary.
package cniplugin

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/attachment"
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
			if err := checkIdentity(args); err != nil {
				return err
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
		Del: func(args *skel.CmdArgs) error {
			if checkIdentity(args) != nil {
				return nil // nothing can exist under an identity ADD refuses
			}
			return wrap(p.Del)(args)
		},
		Check: wrap(p.Check),
		GC: func(args *skel.CmdArgs) error {
			if err := checkGCInput(args.StdinData); err != nil {
				return err
			}
			return wrap(p.GC)(args)
		},
		Status: wrap(p.Status),
	}
}

// checkIdentity refuses an attachment whose identity is longer than
// attachment.MaxLen: nothing podnet records could name it, so ADD would
// fail half-way (the IPAM index's file name too long, code 5) and DEL
// would fail the same way on every retry. The container ID is what makes
// it long in practice: the spec limits its characters, not its length, so
// it is an invalid CNI_CONTAINERID (4); a network name too long for any
// attachment is an invalid configuration (7). A configuration that cannot
// be parsed is left to the plugin to report.
func checkIdentity(args *skel.CmdArgs) error {
	var conf struct {
		Name string `json:"name"`
	}
	if json.Unmarshal(args.StdinData, &conf) != nil {
		return nil
	}
	id := AttachmentOf(conf.Name, args)
	if len(id.String()) <= attachment.MaxLen {
		return nil
	}
	// The room the network name and interface leave for the container ID.
	room := attachment.MaxLen - len(id.String()) + len(args.ContainerID)
	if room < 1 {
		return NewError(types.ErrInvalidNetworkConfig, "network name too long",
			fmt.Sprintf("an attachment identity (network/containerID/ifname) holds at most %d bytes; the name %q leaves no room", attachment.MaxLen, conf.Name))
	}
	return NewError(types.ErrInvalidEnvironmentVariables, "CNI_CONTAINERID too long",
		fmt.Sprintf("%d bytes; with network %q and interface %q at most %d fit the attachment identity (%d bytes)",
			len(args.ContainerID), conf.Name, args.IfName, room, attachment.MaxLen))
}
