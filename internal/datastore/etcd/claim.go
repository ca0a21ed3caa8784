package etcd

import (
	"net"
	"strings"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// A claim is a node's key <prefix>claims/<node>/<subnet key name>, bound to
// the node's lease. A node writes only claims under its own name (its etcd
// role allows no other), so several nodes may claim one subnet; the subnet
// belongs to the live claim etcd created first: the lowest create
// revision, which etcd assigns and keeps across rewrites of the key, so no
// node can give its claim precedence over an older one.

// claimKey is the key of node's claim of subnet sn.
func (s *Store) claimKey(node string, sn *net.IPNet) string {
	return s.key(keyClaims + node + "/" + subnetKeyName(sn))
}

// parseClaimKey splits a claim key into the node name and the subnet key
// name; ok is false for any other key.
func (s *Store) parseClaimKey(k string) (node, subnet string, ok bool) {
	rest, ok := strings.CutPrefix(k, s.key(keyClaims))
	if !ok {
		return "", "", false
	}
	node, subnet, ok = strings.Cut(rest, "/")
	return node, subnet, ok && node != "" && subnet != ""
}

// claims are the live claims: subnet key name → node → create revision.
type claims map[string]map[string]int64

// put records a claim key; it reports false for any other key.
func (c claims) put(s *Store, kv *mvccpb.KeyValue) bool {
	node, sn, ok := s.parseClaimKey(string(kv.Key))
	if !ok {
		return false
	}
	if c[sn] == nil {
		c[sn] = map[string]int64{}
	}
	c[sn][node] = kv.CreateRevision
	return true
}

// remove forgets a deleted claim key; it reports false for any other key.
func (c claims) remove(s *Store, key string) bool {
	node, sn, ok := s.parseClaimKey(key)
	if !ok {
		return false
	}
	delete(c[sn], node)
	if len(c[sn]) == 0 {
		delete(c, sn)
	}
	return true
}

// owner is the node whose claim of the subnet etcd created first (of
// claims created in one transaction, which only an administrator can
// write, the lowest name), or "" when nobody claims it.
func (c claims) owner(subnet string) string {
	var owner string
	var first int64
	for node, rev := range c[subnet] {
		if owner == "" || rev < first || rev == first && node < owner {
			owner, first = node, rev
		}
	}
	return owner
}

// claimedByOthers reports whether a node other than node claims subnet.
func (c claims) claimedByOthers(subnet, node string) bool {
	_, mine := c[subnet][node]
	n := len(c[subnet])
	if mine {
		n--
	}
	return n > 0
}
