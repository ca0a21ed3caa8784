module github.com/podnet/podnet/test/cni/oldruntime

go 1.22

require github.com/containernetworking/cni v1.1.2
