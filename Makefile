# slate: the two commands are `make demo` (set up, build, run the main job)
# and `make test` (the whole suite; what .ci/run calls).
CARGO ?= cargo
FUZZ_SECONDS ?= 10
SHELL := /bin/bash

.PHONY: demo test setup build check lint unit corpus bench clean fuzz-smoke fuzz-long

demo: setup build
	./scripts/demo.sh

setup:
	./scripts/setup.sh

build:
	$(CARGO) build --release --locked

lint:
	$(CARGO) fmt --all -- --check
	cd fuzz && $(CARGO) fmt -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

corpus:
	./scripts/corpus.sh

# Everything: formatting, lints, unit and integration tests (the real-tree
# tests build the Debian corpus once and cache it under /var/tmp).
test: setup lint corpus
	$(CARGO) build --release --locked
	./scripts/fuzz.sh smoke $(FUZZ_SECONDS)
	set -o pipefail; SLATE_CORPUS=$${SLATE_CORPUS:-/var/tmp/stateless-bench/corpus} \
	  SLATE_TESTS_MUST_RUN=1 $(CARGO) test --workspace --release --locked --lib --bins --tests -- --test-threads=2 2>&1 | tee target/test.log
	@awk '/^test result:/ {p += $$4; f += $$6} END {printf "tests: %d passed, %d failed\n", p, f}' target/test.log

# Every fuzz target for a few seconds from its seed corpus (fuzz/corpus):
# fails on any crash or hang (`make test` runs it before the tests). See
# docs/security.md, "Fuzzing".
fuzz-smoke: setup
	./scripts/fuzz.sh smoke $(FUZZ_SECONDS)

# The long run: every target in turn, FUZZ_TOTAL seconds shared equally
# (default one hour each); a summary per target in target/fuzz.summary.
fuzz-long: setup
	./scripts/fuzz.sh long $(FUZZ_TOTAL)

bench: setup build corpus
	./bench/repo.sh

clean:
	$(CARGO) clean
