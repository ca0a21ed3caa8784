# podnet — build, test, demo, bench.
GO      ?= go
BIN     := bin
PLUGINS := loopback bridge ptp host-local static

.PHONY: build test demo bench clean

build:
	$(GO) build -trimpath -ldflags='-s -w' -o $(BIN)/podnet-cni ./cmd/podnet-cni
	@for p in $(PLUGINS); do ln -f $(BIN)/podnet-cni $(BIN)/$$p; done

clean:
	rm -rf $(BIN)
