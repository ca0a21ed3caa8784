package hostlocal

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/containernetworking/cni/pkg/types"

	"github.com/podnet/podnet/internal/cniplugin"
)

// parseResolvConf reads nameserver, domain, search and options lines of a
// resolv.conf into a result's DNS, as the reference does. A file that
// cannot be read is an I/O failure (5).
func parseResolvConf(path string) (*types.DNS, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, cniplugin.Wrap(types.ErrIOFailure, "cannot read resolvConf", err)
	}
	defer f.Close()
	dns := &types.DNS{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == ';' {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 2 {
			continue
		}
		switch fields[0] {
		case "nameserver":
			dns.Nameservers = append(dns.Nameservers, fields[1])
		case "domain":
			dns.Domain = fields[1]
		case "search":
			dns.Search = append(dns.Search, fields[1:]...)
		case "options":
			dns.Options = append(dns.Options, fields[1:]...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, cniplugin.Wrap(types.ErrIOFailure, "cannot read resolvConf", fmt.Errorf("%s: %w", path, err))
	}
	return dns, nil
}
