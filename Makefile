# The test suite needs Dovecot, Postfix, swaks and curl from Debian's packages;
# `make test` installs what is missing (as root, or through sudo).
GO       ?= go
FUZZTIME ?= 15s

.PHONY: all build test deps check fuzz bench clean

all: build

build:
	$(GO) build -o bin/broker ./cmd/broker

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

clean:
	rm -rf bin
