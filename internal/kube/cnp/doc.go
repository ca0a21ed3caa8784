// Package cnp is the conformance suite of sigs.k8s.io/network-policy-api
// (profile ClusterNetworkPolicy, its standard features) as a test binary
// (go test -c) run against a cluster: cnp_test.go. It holds no code of its
// own.
package cnp
