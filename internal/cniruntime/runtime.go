package cniruntime

import (
	"context"
	"io"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/podnet/podnet/internal/netns"
)

// Runtime is a container runtime's CNI side: libcni with a CNI_PATH and a
// cache dir, executing plugins from a thread inside a node's namespace
// (a child inherits it), so the plugins program that namespace.
type Runtime struct {
	// NS is the node's namespace the plugins run in.
	NS *netns.NS
	// CNI is the libcni runtime; call it through the methods below, which
	// run it inside NS.
	CNI *libcni.CNIConfig
}

// NewRuntime returns a runtime for the node namespace ns; plugins are found
// in path and write their stderr to stderr (nil: discarded).
func NewRuntime(ns *netns.NS, path []string, cacheDir string, stderr io.Writer) *Runtime {
	if stderr == nil {
		stderr = io.Discard
	}
	exec := &invoke.DefaultExec{
		RawExec:       &invoke.RawExec{Stderr: stderr},
		PluginDecoder: version.PluginDecoder{},
	}
	return &Runtime{NS: ns, CNI: libcni.NewCNIConfigWithCacheDir(path, cacheDir, exec)}
}

// Add runs ADD of the list for the attachment.
func (r *Runtime) Add(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) (types.Result, error) {
	var res types.Result
	err := r.NS.Do(func() error {
		var err error
		res, err = r.CNI.AddNetworkList(ctx, list, rt)
		return err
	})
	return res, err
}

// Check runs CHECK of the list for the attachment (spec 0.4.0 and later).
func (r *Runtime) Check(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return r.NS.Do(func() error { return r.CNI.CheckNetworkList(ctx, list, rt) })
}

// Del runs DEL of the list for the attachment.
func (r *Runtime) Del(ctx context.Context, list *libcni.NetworkConfigList, rt *libcni.RuntimeConf) error {
	return r.NS.Do(func() error { return r.CNI.DelNetworkList(ctx, list, rt) })
}

// GC runs GC of the list, keeping the valid attachments: libcni first
// DELs the cached attachments that are not valid, then (spec 1.1.0) sends
// GC with cni.dev/valid-attachments to every plugin.
func (r *Runtime) GC(ctx context.Context, list *libcni.NetworkConfigList, valid []types.GCAttachment) error {
	if valid == nil {
		valid = []types.GCAttachment{}
	}
	return r.NS.Do(func() error {
		return r.CNI.GCNetworkList(ctx, list, &libcni.GCArgs{ValidAttachments: valid})
	})
}

// Status runs STATUS of the list (spec 1.1.0; earlier versions succeed
// without calling the plugins).
func (r *Runtime) Status(ctx context.Context, list *libcni.NetworkConfigList) error {
	return r.NS.Do(func() error { return r.CNI.GetStatusNetworkList(ctx, list) })
}
