# podnet — build, test, demo, bench.
GO      ?= go
BIN     := bin

# bench: pods per configuration, pods added at once in the burst and burst
# rounds per suite; extra flags for go run ./bench/cniadd.
N           ?= 200
BURST       ?= 100,50
ROUNDS      ?= 3
BENCH_FLAGS ?=
# test: go test flags (e.g. TEST_FLAGS='-run TestLifecycle -v').
TEST_FLAGS  ?=

.PHONY: build deps test demo bench clean

# The plugin binary and one hard link per plugin type, the node agent and
# the user CLI.
build:
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/podnet-cni ./cmd/podnet-cni
	@for p in $$($(BIN)/podnet-cni names); do ln -f $(BIN)/podnet-cni $(BIN)/$$p; done
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/podnet-agent ./cmd/podnet-agent
	$(GO) build -trimpath -o $(BIN)/podnet ./cmd/podnet

# A 3-node lab with 2 pods per node: every node runs podnet-agent, pods are
# attached through CNI, every pod is checked against every pod and the
# outside, then the lab is torn down; the exit code tells (needs root).
demo: build
	$(BIN)/podnet lab demo --name demo

# Tools the kernel tests use (reference plugins, nft, iperf3, ip, gcc for
# -race); installs only what is missing, only as root with apt-get.
deps:
	@.ci/deps

# vet, format, build, then every test with the race detector; the CNI
# tests drive the binaries `build` just made.
test: deps build
	$(GO) vet ./...
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt -l reports:"; echo "$$out"; exit 1; fi
	$(GO) build ./...
	PODNET_CNI_BIN=$(CURDIR)/$(BIN)/podnet-cni PODNET_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -race -count=1 -timeout 15m $(TEST_FLAGS) ./...

# CNI ADD and DEL latency (bridge, ptp, the full chain, the cluster
# conflist), the 100- and 50-pod bursts and the plugin footprint, podnet vs
# the reference plugins through cnitool; the report goes to its own section
# of docs/performance.md and to docs/performance.json (needs root, ~30 min).
bench: build
	$(GO) run ./bench/cniadd -cni-bin $(CURDIR)/$(BIN)/podnet-cni -n $(N) -burst $(BURST) -burst-rounds $(ROUNDS) -md docs/performance.md -json docs/performance.json $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
