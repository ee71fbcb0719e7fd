# ksaga — the two commands a newcomer needs:
#   make demo   run the embedded demo (no Kafka or Redis to install)
#   make test   install what the tests need (redis-server) and run them

GO ?= go

.PHONY: demo test vet unit chaos chaos-short bench

demo:
	$(GO) run ./cmd/sagad

test: vet
	./scripts/test-deps.sh
	$(GO) test -race -count=1 -timeout 10m ./...

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# unit runs the fast tests only (no end-to-end).
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test$$)

# chaos runs the long chaos suite (cmd/sagachaos): kfaked, three
# redis-servers, two engines and the participants as processes, 100,000
# sagas and 20 faults of each kind (about half an hour), then chaos/check.
chaos:
	./scripts/test-deps.sh
	$(GO) run ./cmd/sagachaos $(CHAOS_FLAGS)

# chaos-short is the CI version (TestChaos runs it in make test): 2,000
# sagas, one or two faults of each kind, in about two minutes.
chaos-short:
	./scripts/test-deps.sh
	$(GO) run ./cmd/sagachaos --short --with-sigstop $(CHAOS_FLAGS)

# bench runs the benchmark harness (cmd/sagabench): an in-process kfake, a
# redis-server, the engine and the participants as processes, the order saga
# at full speed and at half of it (0% and 10% failures) and a bare
# Kafka-transaction loop, in a few minutes; see docs/PERFORMANCE.md. Pass
# e.g. BENCH_FLAGS="--sagas 2000" or "--rss-sagas 1000000".
bench:
	./scripts/test-deps.sh
	$(GO) run ./cmd/sagabench $(BENCH_FLAGS)
