// Command podnet-cni is podnet's multi-call CNI plugin binary. Installed as
// hard links named after the plugin types (bridge, ptp, host-local, …), it
// acts as the plugin named by argv[0].
package main

import (
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/plugins/bridge"
	"github.com/podnet/podnet/internal/plugins/hostlocal"
	"github.com/podnet/podnet/internal/plugins/loopback"
	"github.com/podnet/podnet/internal/plugins/podnet"
	"github.com/podnet/podnet/internal/plugins/ptp"
	"github.com/podnet/podnet/internal/plugins/static"
)

func main() {
	cniplugin.Main(map[string]cniplugin.Plugin{
		"bridge":     bridge.Plugin(),
		"host-local": hostlocal.Plugin(),
		"loopback":   loopback.Plugin(),
		"podnet":     podnet.Plugin(),
		"ptp":        ptp.Plugin(),
		"static":     static.Plugin(),
	})
}
