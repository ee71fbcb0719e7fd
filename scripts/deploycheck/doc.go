// Package deploycheck holds the checks that make deploy-check runs (CI runs
// it after make test): the image that make image wrote to build/image
// (TestImage) and the Kubernetes manifests in deploy/k8s (TestManifests*).
//
// It is a module of its own, so that its YAML parser stays out of ksaga's
// go.mod; run it from the repository root with
//
//	make deploy-check
//
// or, once make image has run, cd scripts/deploycheck && go test ./...
package deploycheck
