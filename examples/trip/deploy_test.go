package trip_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestOverlay renders the kustomize overlay (examples/trip/deploy) on its
// base, deploy/k8s, and checks what it changes. It needs kubectl.
func TestOverlay(t *testing.T) {
	kubectl, err := exec.LookPath("kubectl")
	if err != nil {
		t.Skip("kubectl is not installed")
	}
	out, err := exec.Command(kubectl, "kustomize", "deploy").CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl kustomize: %v\n%s", err, out)
	}
	for _, want := range []string{
		"image: ghcr.io/ksaga/tripd:",
		"namespace: ksaga-trip",
		"KSAGA_GROUP: ksaga-trip",
		"KSAGA_PARTICIPANTS: hotel,card",
		"- --dlt-retention",
		"KsagaDeadLetters", // the base's alerts
	} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the overlay has no %q", want)
		}
	}
	if strings.Contains(string(out), "namespace: ksaga\n") || strings.Contains(string(out), "ghcr.io/ksaga/sagad") {
		t.Error("the overlay still has the base's namespace or image")
	}
}
