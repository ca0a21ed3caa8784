// Command oldruntime is a container runtime from before CNI 1.1, for
// podnet's interop tests: it drives a conflist through libcni 1.1.2, the
// libcni of containerd 1.6 and 1.7, which knows results up to spec 1.0.0
// and ignores a conflist's cniVersions.
//
// It is a module of its own so that podnet's module keeps its current
// libcni. It reads OLDRUNTIME_CONFLIST, OLDRUNTIME_NETNS,
// OLDRUNTIME_CONTAINERID and OLDRUNTIME_CACHEDIR, plugins come from
// CNI_PATH; it runs ADD, CHECK and DEL of one attachment named eth0 and
// prints a Report as JSON.
package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
)

// Report is what each step gave; an error is empty on success.
type Report struct {
	CNIVersion string          `json:"cniVersion"` // the version libcni ran
	Result     json.RawMessage `json:"result"`     // ADD's result
	Add        string          `json:"add"`
	Check      string          `json:"check"`
	Del        string          `json:"del"`
}

func main() {
	var r Report
	ctx := context.Background()
	list, err := libcni.ConfListFromFile(os.Getenv("OLDRUNTIME_CONFLIST"))
	if err != nil {
		r.Add = err.Error()
		emit(r)
		return
	}
	r.CNIVersion = list.CNIVersion
	c := libcni.NewCNIConfigWithCacheDir(filepath.SplitList(os.Getenv("CNI_PATH")), os.Getenv("OLDRUNTIME_CACHEDIR"), nil)
	rt := &libcni.RuntimeConf{ContainerID: os.Getenv("OLDRUNTIME_CONTAINERID"), NetNS: os.Getenv("OLDRUNTIME_NETNS"), IfName: "eth0"}
	res, err := c.AddNetworkList(ctx, list, rt)
	r.Add = errText(err)
	if err == nil {
		r.Result, err = json.Marshal(res)
		r.Add = errText(err)
		r.Check = errText(c.CheckNetworkList(ctx, list, rt))
	}
	r.Del = errText(c.DelNetworkList(ctx, list, rt))
	emit(r)
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	if e, ok := err.(*types.Error); ok {
		b, _ := json.Marshal(e)
		return string(b)
	}
	return err.Error()
}

func emit(r Report) {
	if err := json.NewEncoder(os.Stdout).Encode(r); err != nil {
		os.Exit(1)
	}
}
