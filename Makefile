# The two commands a fresh machine needs: `make run` and `make test`.
GO      ?= go
BIN     := bin
CMDS    := $(notdir $(wildcard cmd/*))
GOFLAGS ?=

.PHONY: all build run test test-short lint fuzz bench bench-go deps clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

# Runs a local cluster on the embedded default (lwm2m-lb in proxy mode in
# front of three lwm2m-server instances, in-memory state, no Redis).
run: build
	./$(BIN)/lwm2m-cluster

deps:
	./scripts/deps.sh nginx

# Every test, with the race detector; installs what the tests need first.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 20m ./...

test-short:
	$(GO) test -count=1 ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# Short runs of every fuzz target (FUZZTIME=30s by default).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
		for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
			echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
		done; \
	done

# Go micro-benchmarks (no unit tests).
bench-go: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

# Device-fleet comparison (bench/compare): the same fleet against one
# lwm2m-server, three behind lwm2m-lb (proxy and nat modes) and three behind
# nginx's stream UDP proxy, on loopback; prints the table and writes
# bin/bench-report.html and bin/bench-report.json. BENCHFLAGS adds flags, e.g.
# BENCHFLAGS='--scenario failover' or BENCHFLAGS='--devices 10000 --ramp 20s'.
BENCHFLAGS ?=
bench: deps build
	./$(BIN)/lwm2m-bench --compare --devices 2000 --ramp 5s --duration 20s \
		--report $(BIN)/bench-report.json --html $(BIN)/bench-report.html $(BENCHFLAGS)

clean:
	rm -rf $(BIN)

# UDP load-balancer throughput: direct echo, nginx's stream UDP proxy, and
# lwm2m-lb in nat and proxy modes, in one run (bench/lbbench). Installs nginx
# and its stream module when missing. LBBENCHFLAGS adds flags, for example
# LBBENCHFLAGS='--duration 10s --json lbbench.json'.
.PHONY: bench-lb
bench-lb:
	./scripts/deps.sh nginx
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/lwm2m-lbbench $(addprefix ./,$(wildcard cmd/lwm2m-lb))
	./$(BIN)/lwm2m-lbbench $(LBBENCHFLAGS)
