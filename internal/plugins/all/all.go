// Package all is the registry of podnet's CNI plugins: the one list of the
// type names podnet-cni answers to, used by the binary, by the node agent
// when it installs the plugins, and by the tests.
package all

import (
	"github.com/podnet/podnet/internal/cniplugin"
	"github.com/podnet/podnet/internal/plugins/bandwidth"
	"github.com/podnet/podnet/internal/plugins/bridge"
	"github.com/podnet/podnet/internal/plugins/firewall"
	"github.com/podnet/podnet/internal/plugins/hostlocal"
	"github.com/podnet/podnet/internal/plugins/loopback"
	"github.com/podnet/podnet/internal/plugins/macvlan"
	"github.com/podnet/podnet/internal/plugins/podnet"
	"github.com/podnet/podnet/internal/plugins/portmap"
	"github.com/podnet/podnet/internal/plugins/ptp"
	"github.com/podnet/podnet/internal/plugins/static"
	"github.com/podnet/podnet/internal/plugins/tuning"
)

// Plugins returns every plugin by type name.
func Plugins() map[string]cniplugin.Plugin {
	return map[string]cniplugin.Plugin{
		"bandwidth":  bandwidth.Plugin(),
		"bridge":     bridge.Plugin(),
		"firewall":   firewall.Plugin(),
		"host-local": hostlocal.Plugin(),
		"ipvlan":     macvlan.IPVlanPlugin(),
		"loopback":   loopback.Plugin(),
		"macvlan":    macvlan.Plugin(),
		"podnet":     podnet.Plugin(),
		"portmap":    portmap.Plugin(),
		"ptp":        ptp.Plugin(),
		"static":     static.Plugin(),
		"tuning":     tuning.Plugin(),
	}
}

// Names returns the type names, sorted.
func Names() []string { return cniplugin.Names(Plugins()) }
