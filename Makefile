# The two commands a fresh machine needs: `make run` and `make test`.
GO      ?= go
BIN     := bin
CMDS    := $(notdir $(wildcard cmd/*))
GOFLAGS ?=

.PHONY: all build run test test-short lint fuzz bench deps clean

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build $(GOFLAGS) -o $(BIN)/ ./cmd/...

# Runs a local server on the embedded default (in-memory state, no Redis).
run: build
	./$(BIN)/lwm2m-server --coap 127.0.0.1:5683 --admin 127.0.0.1:9683

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

bench: deps
	$(GO) test -run '^$$' -bench . -benchmem ./...

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
