# ksaga — the two commands a newcomer needs:
#   make demo   run the embedded demo (no Kafka or Redis to install)
#   make test   install what the tests need (redis-server) and run them
#   make image  build sagad's OCI image into build/image (no Docker needed)

GO ?= go
# The image's tag. deploy/k8s/kustomization.yaml and the overlays pin the
# same one, with a digest (make pin-image): make deploy-check fails when
# they differ.
VERSION ?= 0.1.0
IMAGE ?= ghcr.io/ksaga/sagad

.PHONY: demo test vet unit chaos chaos-short bench image image-tripd pin-image manifests deploy-check

demo:
	$(GO) run ./cmd/sagad

test: vet
	./scripts/test-deps.sh
	@# Built once per machine into the Go build cache, outside the tests' timeout.
	./scripts/tools.sh promtool >/dev/null
	$(GO) test -race -count=1 -timeout 20m ./...

vet:
	$(GO) vet ./...
	@# The production build (make image) leaves the embedded demo and the
	@# chaos hooks out: keep the files it uses in its place compiling.
	$(GO) vet -tags ksaga_production ./daemon ./cmd/sagad ./examples/trip/cmd/tripd
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# unit runs the fast tests only (no end-to-end).
unit:
	$(GO) test -count=1 $$($(GO) list ./... | grep -v /test$$)

# chaos runs the long chaos suite (cmd/sagachaos): kfaked, three
# redis-servers, two engines and the participants as processes, 100,000
# sagas and 20 faults of each kind (about 40 minutes), then chaos/check.
chaos:
	./scripts/test-deps.sh
	$(GO) run ./cmd/sagachaos $(CHAOS_FLAGS)

# chaos-short is the CI version (TestChaos runs it in make test): 2,000
# sagas, one or two faults of each kind, in about three minutes.
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

# image builds sagad's OCI image, $(IMAGE):$(VERSION), without a Docker
# daemon and without pulling a base image (scripts/image.sh, with crane):
# build/image/oci (an OCI layout: crane push build/image/oci <ref>) and
# build/image/sagad-$(VERSION).tar (docker load -i).
image:
	VERSION=$(VERSION) IMAGE=$(IMAGE) ./scripts/image.sh

# image-tripd builds examples/trip's daemon the same way, as
# ghcr.io/ksaga/tripd:$(VERSION) in build/image-tripd (the image the
# examples/trip/deploy overlay runs).
image-tripd:
	VERSION=$(VERSION) NAME=tripd PKG=./examples/trip/cmd/tripd IMAGE_DIR=build/image-tripd ./scripts/image.sh

# pin-image writes the tag ($(VERSION)) and the digest of the images make
# image and make image-tripd built (build/image/digest,
# build/image-tripd/digest) into the kustomizations of deploy/ and
# examples/*/deploy (scripts/pin-image.sh): run it after pushing them.
pin-image:
	VERSION=$(VERSION) ./scripts/pin-image.sh

# manifests prints deploy/k8s rendered by kustomize (kubectl kustomize
# deploy/k8s prints the same).
manifests:
	@"$$(./scripts/tools.sh kustomize)" build deploy/k8s

# deploy-check builds the image and checks it (its config; sagad started
# from its filesystem with chroot as user 65532, which needs root) and the
# manifests (kustomize renders them and the overlays of examples/; the
# production defaults are in place): scripts/deploycheck. CI runs it after
# make test; there (CI=true) a check that cannot run fails instead of being
# skipped.
deploy-check: image
	cd scripts/deploycheck && KSAGA_DEPLOY_CHECK=$(if $(CI),required,) $(GO) test -count=1 -v ./...
