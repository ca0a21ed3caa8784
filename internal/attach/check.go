package attach

import (
	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podnet/podnet/internal/cniplugin"
)

// BeginCheck starts a CHECK: it requires the prevResult to verify, opens
// the container's namespace (a session that undoes nothing when closed)
// and has the IPAM plugin, if any, check its allocation.
func BeginCheck(args *skel.CmdArgs, conf *cniplugin.NetConf) (*Session, *current.Result, error) {
	prev, err := CheckPrev(conf)
	if err != nil {
		return nil, nil, err
	}
	s, err := Begin(args, conf)
	if err != nil {
		return nil, nil, err
	}
	s.Done()
	if conf.IPAM.Type != "" {
		if err := s.IPAM().Check(s.Ctx); err != nil {
			s.Close()
			return nil, nil, err
		}
	}
	return s, prev, nil
}
