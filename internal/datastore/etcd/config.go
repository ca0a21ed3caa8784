package etcd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/podnet/podnet/internal/cluster"
)

// ErrNoClusterConfig is returned when the datastore holds no cluster config
// and the caller gave none to store.
var ErrNoClusterConfig = errors.New("datastore: no cluster config stored")

// EnsureClusterConfig stores want (defaulted and validated) when the
// datastore holds no cluster config yet — an etcd transaction creates the
// key only if absent, so of agents starting at once the first one's config
// wins — and returns the stored config.
//
// A later agent gets the stored config back together with one line per
// field that it set (non-zero in want as given) to a value other than the
// stored one; those differences are not an error (the stored config is the
// cluster's truth) so the agent can log them and go on. A zero want only
// reads: ErrNoClusterConfig when nothing is stored. An invalid want is an
// error even when a config is stored.
func (s *Store) EnsureClusterConfig(ctx context.Context, want cluster.Config) (cluster.Config, []string, error) {
	key := s.key(keyConfig)
	if want == (cluster.Config{}) {
		c, err := s.ClusterConfig(ctx)
		return c, nil, err
	}
	full := want
	full.Default()
	if err := full.Validate(); err != nil {
		return cluster.Config{}, nil, err
	}
	// Read first: a node whose etcd role may only read the config (see
	// AuthorizeNode) cannot run the transaction, whose both branches etcd
	// authorizes.
	stored, err := s.ClusterConfig(ctx)
	if err == nil {
		return stored, configDiff(stored, want), nil
	}
	if !errors.Is(err, ErrNoClusterConfig) {
		return cluster.Config{}, nil, err
	}
	val, err := json.Marshal(full)
	if err != nil {
		return cluster.Config{}, nil, fmt.Errorf("datastore: cluster config: %w", err)
	}
	resp, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(key), "=", 0)).
		Then(clientv3.OpPut(key, string(val))).
		Else(clientv3.OpGet(key)).
		Commit()
	if errors.Is(err, rpctypes.ErrPermissionDenied) {
		return cluster.Config{}, nil, fmt.Errorf("datastore: no cluster config stored yet, and this node may not store one (the embedding agent stores it when it starts): %w", err)
	}
	if err != nil {
		return cluster.Config{}, nil, fmt.Errorf("datastore: store cluster config: %w", err)
	}
	if resp.Succeeded {
		return full, nil, nil
	}
	kvs := resp.Responses[0].GetResponseRange().Kvs
	if len(kvs) == 0 {
		return cluster.Config{}, nil, fmt.Errorf("datastore: cluster config vanished while read")
	}
	stored, err = decodeConfig(kvs[0].Value)
	if err != nil {
		return cluster.Config{}, nil, err
	}
	return stored, configDiff(stored, want), nil
}

// ClusterConfig reads the stored cluster config; ErrNoClusterConfig when
// there is none.
func (s *Store) ClusterConfig(ctx context.Context) (cluster.Config, error) {
	resp, err := s.cli.Get(ctx, s.key(keyConfig))
	if err != nil {
		return cluster.Config{}, fmt.Errorf("datastore: read cluster config: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return cluster.Config{}, ErrNoClusterConfig
	}
	return decodeConfig(resp.Kvs[0].Value)
}

func decodeConfig(b []byte) (cluster.Config, error) {
	var c cluster.Config
	if err := json.Unmarshal(b, &c); err != nil {
		return cluster.Config{}, fmt.Errorf("datastore: stored cluster config: %w", err)
	}
	if err := c.Validate(); err != nil {
		return cluster.Config{}, fmt.Errorf("datastore: stored %w", err)
	}
	return c, nil
}

// configDiff names the fields set in want that differ from stored.
func configDiff(stored, want cluster.Config) []string {
	var d []string
	for _, f := range stored.Diff(want, true) {
		d = append(d, fmt.Sprintf("%s: stored %s, wanted %s", f.Field, f.A, f.B))
	}
	return d
}
