// Package kube builds and runs a real Kubernetes for podnet's lab and
// tests: Build makes the pinned release's binaries (Version, from the
// components module) once and caches them; StartControlPlane runs etcd,
// kube-apiserver, kube-controller-manager and kube-scheduler inside a
// network namespace, with an x509 PKI, Node,RBAC authorization and
// NodeRestriction admission, and hands out client-certificate
// kubeconfigs for the nodes and their components; StartNode runs a node
// (containerd, kubelet and, unless another service proxy serves the
// node, kube-proxy in iptables or nftables mode) inside a node's network
// namespace and mount and UTS namespaces of its own (its hostname is the
// node's name). Nothing runs in, or changes, the
// machine's own network namespace.
package kube
