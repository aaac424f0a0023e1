# The test suite needs Dovecot, Postfix, swaks and curl from Debian's packages;
# `make test` installs what is missing (as root, or through sudo).
GO       ?= go
FUZZTIME ?= 15s

# The version stamped into the binary (broker version) and the package.
VERSION     ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
DEB_VERSION ?= $(shell sh docs/packaging/debversion '$(VERSION)')
# The .deb's files get the commit's time, so that it is reproducible too.
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

# make install: a source install. DESTDIR stages it (packagers).
PREFIX  ?= /usr/local
BINDIR  ?= $(PREFIX)/bin
SYSCONFDIR ?= /etc
UNITDIR ?= /etc/systemd/system
DESTDIR ?=

# A static, path-independent binary: the same commit builds the same bytes
# (make reproducible-check).
GOBUILD = CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-X main.version=$(VERSION)'

.PHONY: all build test deps check fuzz bench perf clean install uninstall deb reproducible-check

all: build

build:
	$(GOBUILD) -o bin/broker ./cmd/broker

deps:
	@sh .ci/deps

check:
	@test -z "$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))" || { gofmt -l .; echo 'gofmt: files above need formatting'; exit 1; }
	$(GO) vet ./...
	$(GO) tool staticcheck ./...

test: deps check
	$(GO) test -race -timeout 30m ./...

# Runs every fuzz target for FUZZTIME each.
fuzz:
	@sh .ci/fuzz $(FUZZTIME)

bench: deps
	$(GO) test -run '^$$' -bench . -benchtime 200x -timeout 30m ./test/

# broker against a direct client on real Dovecot and Postfix, on loopback
# and at +30 ms (docs/performance.md); a benchmark, minutes long, not a
# test: missed targets do not fail it. PERFFLAGS=-quick for a smoke run.
PERFFLAGS ?=
perf: deps
	@mkdir -p bin
	$(GO) run ./test/perf -json bin/perf.json $(PERFFLAGS)

# The binary, the unit (ExecStart pointing at BINDIR), the optional socket
# unit (README: Socket activation) and, unless one is there already, the
# example configuration. Nothing else: no user, no state directory,
# nothing enabled (README: Operating broker).
install: build
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(UNITDIR)
	install -m 0755 bin/broker $(DESTDIR)$(BINDIR)/broker
	sed 's|/usr/local/bin/broker|$(BINDIR)/broker|' docs/broker.service > $(DESTDIR)$(UNITDIR)/broker.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/broker.service
	install -m 0644 docs/broker.socket $(DESTDIR)$(UNITDIR)/broker.socket
	@conf=$(DESTDIR)$(SYSCONFDIR)/broker/broker.toml; \
	if [ -e "$$conf" ]; then \
		echo "kept $$conf (not overwritten); the example is docs/broker.example.toml"; \
	else \
		group=; if [ -z "$(DESTDIR)" ] && [ "$$(id -u)" = 0 ] && getent group broker >/dev/null; then group="-g broker"; fi; \
		install -d -m 0750 $$group $(DESTDIR)$(SYSCONFDIR)/broker && \
		install -m 0640 $$group docs/broker.example.toml "$$conf" && \
		echo "installed the example configuration as $$conf"; \
	fi
	@echo "next: the broker user, your configuration, then systemctl daemon-reload && systemctl enable --now broker (README: Operating broker)"

# Removes what install put in place except the configuration (yours by
# now) and broker's state.
uninstall:
	rm -f $(DESTDIR)$(BINDIR)/broker $(DESTDIR)$(UNITDIR)/broker.service $(DESTDIR)$(UNITDIR)/broker.socket
	@echo "kept $(DESTDIR)$(SYSCONFDIR)/broker and the state directory (/var/lib/broker)"

# bin/broker_$(DEB_VERSION)_amd64.deb, with nfpm (a tool dependency in go.mod);
# the only .deb in bin/, so that bin/broker_*_amd64.deb names it.
deb: build
	rm -rf bin/pkg bin/broker_*.deb && mkdir -p bin/pkg
	cp bin/broker bin/pkg/broker
	sed 's|/usr/local/bin/broker|/usr/bin/broker|' docs/broker.service > bin/pkg/broker.service
	DEB_VERSION='$(DEB_VERSION)' SOURCE_DATE_EPOCH='$(SOURCE_DATE_EPOCH)' \
		$(GO) tool nfpm package -f docs/packaging/nfpm.yaml -p deb -t bin/

# Builds broker twice, the second time from a copy of the tree at another
# path with an empty build cache, and compares the binaries.
reproducible-check:
	@tmp=$$(mktemp -d) && trap 'chmod -R u+w "$$tmp" 2>/dev/null; rm -rf "$$tmp"' EXIT && \
	$(GOBUILD) -o "$$tmp/first" ./cmd/broker && \
	mkdir "$$tmp/elsewhere" && tar -cf - --exclude=./bin . | tar -xf - -C "$$tmp/elsewhere" && \
	(cd "$$tmp/elsewhere" && GOCACHE="$$tmp/cache" $(GOBUILD) -o "$$tmp/second" ./cmd/broker) && \
	if cmp -s "$$tmp/first" "$$tmp/second"; then \
		echo "reproducible: two builds of $(VERSION) are identical ($$(sha256sum < "$$tmp/first" | cut -c1-16)…)"; \
	else \
		echo "NOT reproducible: two builds of $(VERSION) differ"; exit 1; \
	fi

clean:
	rm -rf bin
