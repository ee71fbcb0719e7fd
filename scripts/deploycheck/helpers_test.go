package deploycheck

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// repoRoot is the ksaga repository: this package is scripts/deploycheck.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "deploy", "k8s", "kustomization.yaml")); err != nil {
		t.Fatalf("%s is not the ksaga repository: %v", root, err)
	}
	return root
}

// tool returns the path of a pinned tool (crane, kustomize), which
// scripts/tools.sh builds on first use.
func tool(t *testing.T, name string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(repoRoot(t), "scripts", "tools.sh"), name)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scripts/tools.sh %s: %v\n%s", name, err, stderr.String())
	}
	return strings.TrimSpace(string(out))
}

// makeVersion is VERSION in the Makefile: the tag make image gives the
// image, which the manifests must pin.
func makeVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^VERSION\s*\?=\s*(\S+)`).FindSubmatch(b)
	if m == nil {
		t.Fatal("Makefile: no VERSION ?= line")
	}
	return string(m[1])
}

// required reports whether a missing prerequisite (root, a built image)
// fails the test instead of skipping it: make deploy-check sets
// KSAGA_DEPLOY_CHECK=required in CI, so that CI cannot pass by skipping.
func required() bool { return os.Getenv("KSAGA_DEPLOY_CHECK") == "required" }

func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if required() {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
