package cluster

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"
)

// TestNodeStatusJSON pins the field names of the agent's /status: the lab
// and other readers of the HTTP API decode them.
func TestNodeStatusJSON(t *testing.T) {
	b, err := json.Marshal(NodeStatus{})
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal(b, &fields); err != nil {
		t.Fatal(err)
	}
	want := []string{"backends", "cluster", "controllers", "joined", "mtu", "node", "peers", "peersSince", "pods", "ready", "subnetChanges"}
	if got := slices.Sorted(maps.Keys(fields)); !slices.Equal(got, want) {
		t.Fatalf("fields = %q, want %q", got, want)
	}
}
