# podnet — build, test, demo, bench.
GO      ?= go
BIN     := bin

# The release: the binaries' version (podnet version, podnet-agent
# --version) and the image's tag; IMAGE is the image's repository.
# deploy/podnet.yaml runs the image of the defaults, $(IMAGE):$(VERSION)
# (a test in deploy/ keeps them equal): building another VERSION means
# running that tag (docs/kubernetes.md).
VERSION ?= dev
IMAGE   ?= ghcr.io/podnet/podnet
# Static binaries (no cgo, so no libc to load): they run on any Linux and
# in an image holding nothing else. Only the tests' own build uses cgo
# (-race needs it).
GOBUILD := CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w -X main.Version=$(VERSION)'

# bench: pods per configuration, pods added at once in the burst and burst
# rounds per suite; extra flags for go run ./bench/cniadd.
N           ?= 200
BURST       ?= 100,50
ROUNDS      ?= 3
BENCH_FLAGS ?=
# bench-dataplane: iperf3 seconds per run and repetitions; bench-agent:
# nodes the lab comes up with and nodes added one by one after; extra
# flags in DP_FLAGS / AGENT_FLAGS.
DP_SECS     ?= 10
DP_REPS     ?= 3
AGENT_NODES ?= 10
AGENT_ADD   ?= 5
DP_FLAGS    ?=
AGENT_FLAGS ?=
# bench-chaos: ADD/DEL operations per chain; extra flags in CHAOS_FLAGS.
CHAOS_OPS   ?= 1000
CHAOS_FLAGS ?=
# bench-podstart: pods created at once per round, rounds per side; extra
# flags in PODSTART_FLAGS.
PODSTART_PODS   ?= 30
PODSTART_ROUNDS ?= 3
PODSTART_FLAGS  ?=
# conformance: the suite (services, netpol: the Kubernetes e2e cases;
# cnp: the network-policy-api conformance suite), the cluster's service
# proxy (kube-proxy or podnet) and extra flags for go run ./test/conformance.
SUITE       ?= services
PROXY       ?= kube-proxy
CONF_FLAGS  ?=
# bench-services: Services (× 5 endpoints) per scale, updates timed per
# proxy and scale; extra flags in SERVICES_FLAGS.
SERVICES_SCALES ?= 10,1000,5000,10000
SERVICES_TRIALS ?= 20
SERVICES_FLAGS  ?=
# bench-policy: NetworkPolicies in the cluster per scale, API-only pods,
# policies created (timed to enforced) per scale, real lab nodes; extra
# flags in POLICY_FLAGS.
POLICY_SCALES ?= 10,100,1000
POLICY_PODS   ?= 1000
POLICY_TRIALS ?= 20
POLICY_NODES  ?= 2
POLICY_FLAGS  ?=
# test: go test flags (e.g. TEST_FLAGS='-run TestLifecycle -v').
TEST_FLAGS  ?=

.PHONY: build image deps test demo demo-kube bench bench-cni bench-dataplane bench-agent bench-chaos bench-podstart bench-services bench-policy conformance clean

# The plugin binary, and in bin/cni/ the plugins as a CNI bin dir (one hard
# link per plugin type, ready to copy to /opt/cni/bin); the node agent and
# the user CLI. All static.
build:
	$(GOBUILD) -o $(BIN)/podnet-cni ./cmd/podnet-cni
	@mkdir -p $(BIN)/cni && for p in $$($(BIN)/podnet-cni names); do ln -f $(BIN)/podnet-cni $(BIN)/cni/$$p; done
	$(GOBUILD) -o $(BIN)/podnet-agent ./cmd/podnet-agent
	$(GOBUILD) -o $(BIN)/podnet ./cmd/podnet

# The container image deploy/podnet.yaml runs, $(IMAGE):$(VERSION), as a
# docker-archive: $(BIN)/podnet-image.tar, for `ctr -n k8s.io images
# import`, `docker load` or `crane push` (docs/kubernetes.md). Built from
# the binaries without a container engine.
image: build
	$(GO) run ./deploy/image -bin $(BIN) -ref $(IMAGE):$(VERSION) -o $(BIN)/podnet-image.tar

# A 3-node lab with 2 pods per node: every node runs podnet-agent, pods are
# attached through CNI, every pod is checked against every pod and the
# outside, then the lab is torn down; the exit code tells (needs root).
demo: build
	$(BIN)/podnet lab demo --name demo

# The same on a real Kubernetes (v1.32.3, built once from the Go module
# proxy into /var/cache/podnet/kube: ~7-10 min on 2 cores the first time,
# then ~35-45 s): control plane, containerd, kubelet and kube-proxy on every
# node, podnet installed from deploy/podnet.yaml and its image, the pods a
# Deployment's (needs root; docs/lab.md).
demo-kube: build
	$(BIN)/podnet lab demo --kubernetes --name demok

# Tools the kernel tests use (reference plugins, nft, iperf3, ip, gcc for
# -race); installs only what is missing, only as root with apt-get.
deps:
	@.ci/deps

# vet, format, build, then every test with the race detector; the CNI
# tests drive the binaries `build` just made. test/kube runs a real
# Kubernetes: its binaries are built first, on their own (the first run
# takes ~10 min more, then they come from the cache in a second).
test: deps build
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -l reports:"; echo "$$out"; exit 1; fi
	$(GO) build ./...
	@if [ "$$(id -u)" -eq 0 ]; then PATH=$(dir $(shell command -v $(GO))):$$PATH $(BIN)/podnet lab build; fi
	PODNET_CNI_BIN=$(CURDIR)/$(BIN)/podnet-cni PODNET_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -timeout 30m $(TEST_FLAGS) ./...

# The performance report, docs/performance.md and its JSON beside it: each
# benchmark rewrites its own section (needs root; ~50 min on 2 cores,
# plus bench-services' hour and bench-policy's ~5 min).
bench: bench-cni bench-dataplane bench-agent bench-chaos bench-podstart bench-services bench-policy

# CNI ADD and DEL latency (bridge, ptp, the full chain, the cluster
# conflist), the 100- and 50-pod bursts and the plugin footprint, podnet vs
# the reference plugins through cnitool; the report goes to its own section
# of docs/performance.md and to docs/performance.json.
bench-cni: deps build
	$(GO) run ./bench/cniadd -cni-bin $(CURDIR)/$(BIN)/podnet-cni -n $(N) -burst $(BURST) -burst-rounds $(ROUNDS) -md docs/performance.md -json docs/performance.json $(BENCH_FLAGS)

# Data plane: iperf3 TCP and request/response latency of pods (same node:
# podnet routed and bridge; across nodes: host-gw and VXLAN) as ratios to a
# bare veth pair / the bare underlay, same run; writes its section of
# docs/performance.md and docs/performance-dataplane.json (needs root).
bench-dataplane: deps build
	$(GO) run ./bench/dataplane -agent-bin $(BIN)/podnet-agent -cni-bin $(BIN)/podnet-cni -t $(DP_SECS) -reps $(DP_REPS) \
		-md docs/performance.md -json docs/performance-dataplane.json $(DP_FLAGS)

# Agent: node join → routes everywhere, reconcile time and agent memory on
# a lab of AGENT_NODES nodes plus AGENT_ADD added one by one; writes its
# section of docs/performance.md and docs/performance-agent.json (needs root).
bench-agent: build
	$(GO) run ./bench/agent -agent-bin $(BIN)/podnet-agent -cni-bin $(BIN)/podnet-cni -nodes $(AGENT_NODES) -add $(AGENT_ADD) \
		-md docs/performance.md -json docs/performance-agent.json $(AGENT_FLAGS)

# Crash chaos: CHAOS_OPS ADD/DEL per chain (the full chain, the cluster
# conflist; the reference plugins' full chain as a contrast) through
# cnitool, 30 % SIGKILLed mid-operation, then GC and an audit for
# duplicate and leaked IPs, links, rules; writes its section of
# docs/performance.md and docs/performance-chaos.json (needs root).
bench-chaos: deps build
	$(GO) run ./bench/chaos -cni-bin $(CURDIR)/$(BIN)/podnet-cni -n $(CHAOS_OPS) \
		-md docs/performance.md -json docs/performance-chaos.json $(CHAOS_FLAGS)

# Pod start on Kubernetes: create → Running of PODSTART_PODS pods at once
# on a podnet node and on a node of the same lab cluster running the
# reference bridge + host-local + portmap, PODSTART_ROUNDS alternating
# rounds per side, with the delete time and where a start's time goes;
# writes its section of docs/performance.md and
# docs/performance-podstart.json (needs root; builds Kubernetes on the
# first run, ~7 min, cached after).
bench-podstart: deps build
	$(GO) run ./bench/podstart -agent-bin $(BIN)/podnet-agent -cni-bin $(BIN)/podnet-cni -cli-bin $(BIN)/podnet \
		-pods $(PODSTART_PODS) -rounds $(PODSTART_ROUNDS) -md docs/performance.md -json docs/performance-podstart.json $(PODSTART_FLAGS)

# Service proxy: podnet's (the services controller in its own process)
# against upstream kube-proxy in nftables and in iptables mode, one after
# the other on fresh nodes of one real API server holding SERVICES_SCALES
# Services × 5 endpoints: cold sync, Service added and endpoint changed →
# in the kernel, CPU and memory, connect latency, ClusterIP throughput;
# writes its section of docs/performance.md and
# docs/performance-services.json after every scale (needs root, nft; an
# hour or more on 2 cores: kube-proxy is slow at 5k-10k Services).
bench-services: build
	$(GO) build -o $(BIN)/bench-services-proxy ./bench/services/proxy
	$(GO) run ./bench/services -proxy-bin $(BIN)/bench-services-proxy -scales $(SERVICES_SCALES) -trials $(SERVICES_TRIALS) \
		-md docs/performance.md -json docs/performance-services.json $(SERVICES_FLAGS)

# NetworkPolicy on a Kubernetes lab of POLICY_NODES real nodes (a probe
# pod each) and POLICY_PODS API-only pods on virtual nodes: policy created
# → enforced on every node (real traffic) and peer pod created → in every
# node's sets at POLICY_SCALES NetworkPolicies, throughput and connection
# rate with none and with the largest scale's, agent CPU and memory;
# writes its section of docs/performance.md and
# docs/performance-policy.json after every scale (needs root; ~5 min on 2
# cores, the lab's start included).
bench-policy: deps build
	$(GO) run ./bench/policy -agent-bin $(BIN)/podnet-agent -cni-bin $(BIN)/podnet-cni -cli-bin $(BIN)/podnet \
		-nodes $(POLICY_NODES) -pods $(POLICY_PODS) -scales $(POLICY_SCALES) -trials $(POLICY_TRIALS) \
		-md docs/performance.md -json docs/performance-policy.json $(POLICY_FLAGS)

# An upstream conformance suite on a 3-node Kubernetes lab with PROXY as
# its service proxy, CoreDNS as its DNS: SUITE=services, the Kubernetes e2e
# tests for Services ([sig-network] Services: every [Conformance] case and
# the rest needing no cloud provider); SUITE=netpol, its NetworkPolicy
# tests ([sig-network] Netpol); SUITE=cnp, the network-policy-api
# conformance suite (profile ClusterNetworkPolicy). e2e.test, ginkgo,
# agnhost, CoreDNS and the cnp test binary built from the Go module proxy
# (cached like the Kubernetes binaries). Writes docs/conformance.md and
# docs/conformance.json, keeping the other runs beside this one (needs
# root; docs/conformance.md).
conformance: deps build
	$(GO) run ./test/conformance -agent-bin $(BIN)/podnet-agent -cni-bin $(BIN)/podnet-cni -cli-bin $(BIN)/podnet \
		-suite $(SUITE) -proxy $(PROXY) -md docs/conformance.md -json docs/conformance.json $(CONF_FLAGS)

clean:
	rm -rf $(BIN)
