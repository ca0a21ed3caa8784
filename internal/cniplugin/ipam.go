package cniplugin

import (
	"context"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
)

// IPAM runs the IPAM plugin of a configuration the way the reference plugins
// delegate to it: found by type in CNI_PATH, given the same config and
// environment. When CNI_PATH resolves the type to this very binary (a hard
// link of podnet-cni), the plugin runs in-process and saves an exec; any
// other binary, such as the reference host-local, is executed.
type IPAM struct {
	Type string
	Args *skel.CmdArgs
}

// inProcess returns the registered plugin when CNI_PATH resolves the type
// to the running executable.
func (i IPAM) inProcess() (Plugin, bool, error) {
	path, err := invoke.FindInPath(i.Type, filepath.SplitList(i.Args.Path))
	if err != nil {
		return Plugin{}, false, NewError(types.ErrInvalidNetworkConfig, "IPAM plugin not found", err.Error())
	}
	p, ok := registry[i.Type]
	if !ok {
		return Plugin{}, false, nil
	}
	self, err := os.Executable()
	if err != nil {
		return Plugin{}, false, nil
	}
	a, errA := os.Stat(path)
	b, errB := os.Stat(self)
	if errA != nil || errB != nil || !os.SameFile(a, b) {
		return Plugin{}, false, nil
	}
	return p, true, nil
}

// Add allocates addresses and returns them as a current result.
func (i IPAM) Add(ctx context.Context) (*current.Result, error) {
	p, local, err := i.inProcess()
	if err != nil {
		return nil, err
	}
	var r types.Result
	if local {
		r, err = p.Add(i.Args)
	} else {
		r, err = invoke.DelegateAdd(ctx, i.Type, i.Args.StdinData, nil)
	}
	if err != nil {
		return nil, err
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, NewError(types.ErrDecodingFailure, "failed to convert IPAM result", err.Error())
	}
	if len(res.IPs) == 0 {
		return nil, NewError(types.ErrInternal, "IPAM plugin returned no IP configuration", "")
	}
	return res, nil
}

// Del releases the attachment's addresses.
func (i IPAM) Del(ctx context.Context) error {
	return i.run(ctx, "DEL", func(p Plugin) func(*skel.CmdArgs) error { return p.Del })
}

// Check verifies the attachment's addresses are still allocated.
func (i IPAM) Check(ctx context.Context) error {
	return i.run(ctx, "CHECK", func(p Plugin) func(*skel.CmdArgs) error { return p.Check })
}

// GC releases the addresses of attachments that are no longer valid.
func (i IPAM) GC(ctx context.Context) error {
	return i.run(ctx, "GC", func(p Plugin) func(*skel.CmdArgs) error { return p.GC })
}

// Status reports whether the IPAM plugin can allocate.
func (i IPAM) Status(ctx context.Context) error {
	return i.run(ctx, "STATUS", func(p Plugin) func(*skel.CmdArgs) error { return p.Status })
}

func (i IPAM) run(ctx context.Context, verb string, pick func(Plugin) func(*skel.CmdArgs) error) error {
	p, local, err := i.inProcess()
	if err != nil {
		return err
	}
	if local {
		if f := pick(p); f != nil {
			return f(i.Args)
		}
		return nil
	}
	switch verb {
	case "DEL":
		return invoke.DelegateDel(ctx, i.Type, i.Args.StdinData, nil)
	case "CHECK":
		return invoke.DelegateCheck(ctx, i.Type, i.Args.StdinData, nil)
	case "GC":
		return invoke.DelegateGC(ctx, i.Type, i.Args.StdinData, nil)
	default:
		return invoke.DelegateStatus(ctx, i.Type, i.Args.StdinData, nil)
	}
}
