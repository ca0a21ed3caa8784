package etcd

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// etcd's administrator user and role.
const rootName = "root"

// nodeRolePrefix names the role of each node: podnet-node:<name>.
const nodeRolePrefix = "podnet-node:"

// EnableNodeAuth turns etcd's authentication on, for a server that
// requires client certificates (their CN is the etcd user): admin (the
// CN of this Store's own certificate) gets the root role; every node that
// has a record gets its node role (see AuthorizeNode). It is a no-op when
// authentication is already on. From then on a node's certificate only
// reads under the prefix and writes its own record and claims.
func (s *Store) EnableNodeAuth(ctx context.Context, admin string) error {
	st, err := s.cli.AuthStatus(ctx)
	if err != nil {
		return fmt.Errorf("datastore: auth status: %w", err)
	}
	if st.Enabled {
		return nil
	}
	resp, err := s.cli.Get(ctx, s.key(keyNodes), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("datastore: list nodes: %w", err)
	}
	for _, kv := range resp.Kvs {
		if name := strings.TrimPrefix(string(kv.Key), s.key(keyNodes)); name != admin {
			if err := s.AuthorizeNode(ctx, name); err != nil {
				return err
			}
		}
	}
	if _, err := s.cli.RoleAdd(ctx, rootName); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("datastore: role %s: %w", rootName, err)
	}
	for _, u := range []string{rootName, admin} {
		if err := s.addUser(ctx, u, rootName); err != nil {
			return err
		}
	}
	if _, err := s.cli.AuthEnable(ctx); err != nil {
		return fmt.Errorf("datastore: enable auth: %w", err)
	}
	return nil
}

// AuthorizeNode gives the etcd user name (a node's certificate CN) its
// node role: read every key under the prefix, write its record
// <prefix>nodes/<name> and its claims <prefix>claims/<name>/, nothing
// else. It refuses a name that holds the root role. Idempotent.
func (s *Store) AuthorizeNode(ctx context.Context, name string) error {
	if u, err := s.cli.UserGet(ctx, name); err == nil && slices.Contains(u.Roles, rootName) {
		return fmt.Errorf("datastore: %q is an administrator, not a node", name)
	}
	role := nodeRolePrefix + name
	own := s.key(keyClaims + name + "/")
	if _, err := s.cli.RoleAdd(ctx, role); err != nil && !errors.Is(err, rpctypes.ErrRoleAlreadyExist) {
		return fmt.Errorf("datastore: role %s: %w", role, err)
	}
	for _, p := range []struct {
		key, end string
		perm     clientv3.PermissionType
	}{
		{s.prefix, clientv3.GetPrefixRangeEnd(s.prefix), clientv3.PermissionType(clientv3.PermRead)},
		{s.key(keyNodes + name), "", clientv3.PermissionType(clientv3.PermReadWrite)},
		{own, clientv3.GetPrefixRangeEnd(own), clientv3.PermissionType(clientv3.PermReadWrite)},
	} {
		if _, err := s.cli.RoleGrantPermission(ctx, role, p.key, p.end, p.perm); err != nil {
			return fmt.Errorf("datastore: role %s: grant %s: %w", role, p.key, err)
		}
	}
	return s.addUser(ctx, name, role)
}

// addUser adds a user without a password (it authenticates by its
// certificate) if absent, and grants it role.
func (s *Store) addUser(ctx context.Context, name, role string) error {
	_, err := s.cli.UserAddWithOptions(ctx, name, "", &clientv3.UserAddOptions{NoPassword: true})
	if err != nil && !errors.Is(err, rpctypes.ErrUserAlreadyExist) {
		return fmt.Errorf("datastore: user %s: %w", name, err)
	}
	if _, err := s.cli.UserGrantRole(ctx, name, role); err != nil {
		return fmt.Errorf("datastore: user %s: grant %s: %w", name, role, err)
	}
	return nil
}
