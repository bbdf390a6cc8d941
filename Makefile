# fhirward — the two quick-start commands are `make run` and `make test`.
BUILD_DIR ?= build
DATA_DIR ?= data
LISTEN ?= 127.0.0.1:8443
JOBS ?= 2

.PHONY: all bootstrap configure build run test unit integration e2e fuzz bench bench-search bench-validate bench-token bench-policy bench-crypto bench-audit conformance format clean

all: build

bootstrap:
	@scripts/bootstrap

configure: bootstrap
	@test -f $(BUILD_DIR)/build.ninja || cmake -S . -B $(BUILD_DIR) -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

build: configure
	@cmake --build $(BUILD_DIR) -j$(JOBS)

run: build
	@scripts/run-demo $(DATA_DIR) $(LISTEN)

test: build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L unit
	@$(BUILD_DIR)/fhirward policy check policies/default.toml
	@$(BUILD_DIR)/fhirward policy test policies/default.toml policies/scenarios/default.toml \
	  > $(BUILD_DIR)/policy-test.txt || { cat $(BUILD_DIR)/policy-test.txt; exit 1; }
	@tail -1 $(BUILD_DIR)/policy-test.txt
	@tests/run-integration $(BUILD_DIR)/fhirward

unit: build
	@ctest --test-dir $(BUILD_DIR) --output-on-failure -j$(JOBS) -L unit

integration: build
	@tests/run-integration $(BUILD_DIR)/fhirward

fuzz: bootstrap
	@cmake -S . -B build-fuzz -G Ninja -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DFHIRWARD_FUZZ=ON -DFHIRWARD_BUILD_TESTS=OFF >/dev/null
	@cmake --build build-fuzz -j$(JOBS) --target fuzzers
	@fuzz/run build-fuzz

bench: build
	@FHIRWARD_BENCH=1 scripts/bootstrap
	@bench/run $(BUILD_DIR)/fhirward

# Search and transaction import over ~100,000 synthetic resources, beside the Medplum peer.
bench-search: build
	@FHIRWARD_BENCH=1 scripts/bootstrap
	@bench/search-run $(BUILD_DIR)/fhirward

# Validation throughput beside JSON parse throughput over the R4 examples (one core).
R4_EXAMPLES ?= ../shared/fhir/r4-examples
bench-validate: build
	@taskset -c 0 $(BUILD_DIR)/bench/validate_bench $(R4_EXAMPLES) 5

# Token endpoint beside oidc-provider (client_credentials, private_key_jwt, ES256), and the
# resource server's per-request token check (cached, uncached, DPoP); bench/results/token-DATE.txt.
bench-token: build
	@FHIRWARD_BENCH=1 scripts/bootstrap
	@bench/token-run $(BUILD_DIR)/fhirward $(BUILD_DIR)/bench/token_check_bench

# Authorization decision cost (request step + per-resource step) with policies/default.toml;
# bench/results/policy-DATE.txt.
# Record seal/open per size beside `openssl speed -evp aes-256-gcm`, and uncached opens
# with a local and a SoftHSM2 KEK; bench/results/crypto-DATE.txt.
bench-crypto: build
	@bench/crypto-run $(BUILD_DIR)/bench/crypto_bench

# Audit appends (Merkle tree, terms, signed heads, two file sinks) beside a plain SQLite insert,
# the Merkle kernel beside SHA-256, proofs from a 10-million-record trail (built once into
# BENCH_AUDIT_DB, default /tmp/fhirward-audit-10m.db) and the secure read vs nginx with two
# file sinks; bench/results/audit-DATE.txt.
bench-audit: build
	@FHIRWARD_BENCH=1 scripts/bootstrap
	@bench/audit-run $(BUILD_DIR)/bench/audit_bench $(BUILD_DIR)/fhirward

bench-policy: build
	@mkdir -p bench/results
	@taskset -c 0 $(BUILD_DIR)/bench/policy_bench --benchmark_min_time=0.5 | tee bench/results/policy-$$(date +%F).txt

conformance: build
	@JOBS=$(JOBS) scripts/conformance $(BUILD_DIR)

format:
	@git ls-files '*.cc' '*.h' | xargs clang-format -i

clean:
	rm -rf $(BUILD_DIR) build-fuzz
