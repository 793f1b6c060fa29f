# slate: the two commands are `make demo` (set up, build, run the main job)
# and `make test` (the whole suite; what .ci/run calls).
CARGO ?= cargo
SHELL := /bin/bash

.PHONY: demo test setup build check lint unit corpus bench clean

demo: setup build
	./scripts/demo.sh

setup:
	./scripts/setup.sh

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

corpus:
	./scripts/corpus.sh

# Everything: formatting, lints, unit and integration tests (the real-tree
# tests build the Debian corpus once and cache it under /var/tmp).
test: setup lint corpus
	$(CARGO) build --release --locked
	set -o pipefail; SLATE_CORPUS=$${SLATE_CORPUS:-/var/tmp/stateless-bench/corpus} \
	  $(CARGO) test --workspace --release --locked --lib --bins --tests -- --test-threads=2 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log

bench: setup build corpus
	./bench/repo.sh

clean:
	$(CARGO) clean
