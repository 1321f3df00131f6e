# sabaki: `make run` starts the agent on the embedded default config,
# `make test` runs the whole suite (vet, race-enabled tests, every fuzz
# target's seed corpus); `make fuzz` explores new inputs.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT   ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
LDFLAGS  := -s -w -X main.version=$(VERSION) -X main.commit=$(COMMIT)
# Packages whose tests exercise concurrency (pipeline, store, outbox, receivers,
# the daemon) run with -race; the rest (histogram, metric, internal, and the
# capacity report, whose tests are CPU-bound: 33 s plain, 429 s with -race)
# without, since the race detector slows CPU-bound tests many times over.
# The same goes for cmd/sabaki's capacity golden test (TestExportCapacity:
# a 91-day store through SQLite, about 240 s under -race): it runs plain, the
# rest of cmd/sabaki with -race.
RACE_DIRS   ?= ./agent/... ./exporters/... ./sources/... ./cmd/...
NORACE_PKGS ?= /agent/capacity
NORACE_TESTS ?= ^TestExportCapacity$$
FUZZTIME ?= 5s

PLATFORMS ?= linux/amd64 linux/arm64
PREFIX   ?= /usr/local

.PHONY: all build run test test-unit test-race fuzz bench bench-go lint fmt clean release install e2e bench-report

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/sabaki ./cmd/sabaki

run:
	$(GO) run ./cmd/sabaki run

# The fuzz targets' seeds (including every input a fuzzer ever found, kept
# under testdata/fuzz) run in test-unit and test-race like any test. New-input
# exploration (`make fuzz`) is not part of the gate: a random new finding
# would make CI fail by chance; run it on its own and commit what it finds.
test: lint test-unit test-race

test-unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v -e '/agent' -e '/exporters' -e '/sources' -e '/cmd/') \
		$$($(GO) list $(RACE_DIRS) | grep -e '$(NORACE_PKGS)')
	$(GO) test -count=1 -run '$(NORACE_TESTS)' ./cmd/...

test-race:
	$(GO) test -race -count=1 $$($(GO) list $(RACE_DIRS) | grep -v -e '$(NORACE_PKGS)' -e '/cmd/')
	$(GO) test -race -count=1 -skip '$(NORACE_TESTS)' ./cmd/...

# A short exploration of every fuzz target (seeds already run as normal tests).
fuzz:
	@set -e; for pkg in $$($(GO) list ./...); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' $$dir/*_test.go 2>/dev/null | sed 's/^func //'); do \
			echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
			$(GO) test -run='^$$' -fuzz="^$$t\$$" -fuzztime=$(FUZZTIME) $$pkg; \
		done; \
	done

# The end-to-end suite at full length: the real binary under load, faults
# and bad input (make test runs the short version, in test-unit).
e2e:
	SABAKI_E2E=full $(GO) test -count=1 -v -timeout 30m ./internal/e2e

# The benchmark report (markdown): component benchmarks and the whole agent
# beside Prometheus in agent mode on the same load. Takes about 20 minutes;
# needs the prometheus binary (Debian package prometheus).
BENCH_OUT ?= bench-report.md
bench bench-report:
	$(GO) run ./internal/benchreport -out $(BENCH_OUT)

# Every go test benchmark of the tree, raw (BenchmarkBuildYear generates a
# year-long store once, about 10 minutes, kept in the temp directory).
bench-go:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=200ms -count=3 ./...

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

# Static binaries for every platform in dist/, with version info and a
# SHA256SUMS file: dist/sabaki-<version>-<os>-<arch>.
release:
	@rm -rf dist && mkdir -p dist
	@set -e; for p in $(PLATFORMS); do \
		os=$${p%/*}; arch=$${p#*/}; out=dist/sabaki-$(VERSION)-$$os-$$arch; \
		echo "build $$out"; \
		CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $$out ./cmd/sabaki; \
	done
	cd dist && sha256sum sabaki-* > SHA256SUMS && cat SHA256SUMS

# Install as a systemd service (run as root): binary, config (kept if it
# exists), environment file for MACKEREL_APIKEY (0600), unit.
install: build
	install -D -m 0755 bin/sabaki $(DESTDIR)$(PREFIX)/bin/sabaki
	install -d -m 0755 $(DESTDIR)/etc/sabaki
	test -e $(DESTDIR)/etc/sabaki/sabaki.yaml || install -m 0644 configs/systemd/sabaki.yaml $(DESTDIR)/etc/sabaki/sabaki.yaml
	test -e $(DESTDIR)/etc/sabaki/sabaki.env || install -m 0600 /dev/null $(DESTDIR)/etc/sabaki/sabaki.env
	install -D -m 0644 configs/systemd/sabaki.service $(DESTDIR)/etc/systemd/system/sabaki.service
	@echo "Now: put MACKEREL_APIKEY=... in /etc/sabaki/sabaki.env, edit /etc/sabaki/sabaki.yaml, then"
	@echo "     systemctl daemon-reload && systemctl enable --now sabaki"

clean:
	rm -rf bin dist
