// Command podnet-cni is podnet's multi-call CNI plugin binary. Installed as
// hard links named after the plugin types (bridge, ptp, host-local, …), it
// acts as the plugin named by argv[0].
package main

import (
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/plugins/bandwidth"
	"github.com/podnet/podnet/internal/plugins/bridge"
	"github.com/podnet/podnet/internal/plugins/firewall"
	"github.com/podnet/podnet/internal/plugins/hostlocal"
	"github.com/podnet/podnet/internal/plugins/loopback"
	"github.com/podnet/podnet/internal/plugins/macvlan"
	"github.com/podnet/podnet/internal/plugins/portmap"
	"github.com/podnet/podnet/internal/plugins/ptp"
	"github.com/podnet/podnet/internal/plugins/static"
	"github.com/podnet/podnet/internal/plugins/tuning"
)

func main() {
	cniplugin.Main(map[string]cniplugin.Plugin{
		"bandwidth":  bandwidth.Plugin(),
		"bridge":     bridge.Plugin(),
		"firewall":   firewall.Plugin(),
		"host-local": hostlocal.Plugin(),
		"ipvlan":     macvlan.IPVlanPlugin(),
		"loopback":   loopback.Plugin(),
		"portmap":    portmap.Plugin(),
		"macvlan":    macvlan.Plugin(),
		"ptp":        ptp.Plugin(),
		"static":     static.Plugin(),
		"tuning":     tuning.Plugin(),
	})
}
