module github.com/podnet/podnet

go 1.26.8

require (
	github.com/containernetworking/cni v1.2.3
	github.com/vishvananda/netlink v1.3.1
	github.com/vishvananda/netns v0.0.5
	golang.org/x/sys v0.35.0
)

require (
	github.com/google/go-cmp v0.7.0 // indirect
	github.com/onsi/ginkgo/v2 v2.22.0 // indirect
	github.com/onsi/gomega v1.36.0 // indirect
	golang.org/x/net v0.43.0 // indirect
)
