// Package sandbox drives CNI plugins the way a container runtime does —
// through libcni, against a conflist and a CNI_PATH — inside throwaway
// network namespaces: one plays the node ("the host"), one per pod. It is
// the harness of the runtime-side tests and the benchmarks, built on the
// product's libcni runtime (internal/cniruntime).
//
// Nothing here touches the caller's own network namespace: plugins are
// executed from a thread inside the host namespace (a child inherits it),
// libcni's cache and the IPAM state live in a temporary directory, and
// Close removes every namespace and file the sandbox created.
package sandbox

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniruntime"
	"github.com/podnet/podnet/internal/netns"
)

// Options configure a Sandbox.
type Options struct {
	// CNIPath is the runtime's CNI_PATH: directories searched for plugins.
	CNIPath []string
	// Plugins, when set, makes a bin dir in the sandbox with one link per
	// type to its binary (see cniruntime.LinkDir) and puts it first in CNI_PATH.
	Plugins map[string]string
	// Prefix starts the names of the namespaces (default "pn").
	Prefix string
	// Stderr receives the plugins' stderr (default: discarded).
	Stderr io.Writer
}

// Sandbox is a throwaway host network namespace with a libcni runtime
// whose plugins run inside it, and the pods created in it.
type Sandbox struct {
	// Dir is the sandbox's temporary directory: libcni's cache is
	// Dir/cache, IPAM data dirs go under Dir/data.
	Dir string
	// Path is the CNI_PATH plugins are found in.
	Path []string
	// Host is the namespace that plays the node.
	Host *netns.Temp
	// Runtime runs libcni inside Host.
	*cniruntime.Runtime

	prefix string
	mu     sync.Mutex
	pods   map[*Pod]bool
}

// New creates the host namespace and the temporary directory.
func New(o Options) (*Sandbox, error) {
	if o.Prefix == "" {
		o.Prefix = "pn"
	}
	if o.Stderr == nil {
		o.Stderr = io.Discard
	}
	dir, err := os.MkdirTemp("", "podnet-sandbox-")
	if err != nil {
		return nil, err
	}
	path := o.CNIPath
	if o.Plugins != nil {
		bin := filepath.Join(dir, "bin")
		if err := cniruntime.LinkDir(bin, o.Plugins); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		path = append([]string{bin}, path...)
	}
	host, err := netns.NewTemp(o.Prefix + "host")
	if err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	return &Sandbox{
		Dir:     dir,
		Path:    path,
		Host:    host,
		Runtime: cniruntime.NewRuntime(host.NS, path, filepath.Join(dir, "cache"), o.Stderr),
		prefix:  o.Prefix,
		pods:    map[*Pod]bool{},
	}, nil
}

// DataDir returns a fresh directory under the sandbox for IPAM state.
func (s *Sandbox) DataDir(name string) string {
	return filepath.Join(s.Dir, "data", name)
}

// Close removes every pod namespace still there, the host namespace (with
// every link, route and rule inside) and the temporary directory.
func (s *Sandbox) Close() error {
	s.mu.Lock()
	pods := s.pods
	s.pods = map[*Pod]bool{}
	s.mu.Unlock()
	var errs []error
	for p := range pods {
		errs = append(errs, p.NS.Remove())
	}
	errs = append(errs, s.Host.Remove())
	errs = append(errs, os.RemoveAll(s.Dir))
	return errors.Join(errs...)
}

// Pod is a container's network namespace and identity.
type Pod struct {
	NS          *netns.Temp
	ContainerID string
	IfName      string

	sb      *Sandbox
	removed bool
}

// NewPod creates a pod namespace with a random 64-hex-digit container ID
// (as containerd makes them) and interface eth0.
func (s *Sandbox) NewPod() (*Pod, error) {
	ns, err := netns.NewTemp(s.prefix + "pod")
	if err != nil {
		return nil, err
	}
	p := &Pod{NS: ns, ContainerID: cniruntime.RandomID(), IfName: "eth0", sb: s}
	s.mu.Lock()
	s.pods[p] = true
	s.mu.Unlock()
	return p, nil
}

// Remove deletes the pod's namespace (as a runtime does when the sandbox
// dies), before or after DEL.
func (p *Pod) Remove() error {
	p.sb.mu.Lock()
	if p.removed {
		p.sb.mu.Unlock()
		return nil
	}
	p.removed = true
	delete(p.sb.pods, p)
	p.sb.mu.Unlock()
	return p.NS.Remove()
}

// Removed tells whether Remove was called.
func (p *Pod) Removed() bool {
	p.sb.mu.Lock()
	defer p.sb.mu.Unlock()
	return p.removed
}

// Path is the pod's namespace path, the runtime's CNI_NETNS.
func (p *Pod) Path() string { return p.NS.Path() }

// RT returns the runtime configuration of the pod's attachment, with
// capability args as containerd sends them (e.g. "ips", "mac",
// "portMappings").
func (p *Pod) RT(caps map[string]any) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID:    p.ContainerID,
		NetNS:          p.Path(),
		IfName:         p.IfName,
		CapabilityArgs: caps,
	}
}

// Attachment is the pod's GC identity.
func (p *Pod) Attachment() types.GCAttachment {
	return types.GCAttachment{ContainerID: p.ContainerID, IfName: p.IfName}
}
