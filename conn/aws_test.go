package conn

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// TestMSKIAMSignsWithTheEnvironment proves AWS_MSK_IAM signs its login
// with the AWS credentials of the environment, read at login time.
func TestMSKIAMSignsWithTheEnvironment(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFIRST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret")
	t.Setenv("AWS_SESSION_TOKEN", "")
	mech, err := Kafka{TLS: true, SASLMechanism: AWSMSKIAM}.mechanism()
	if err != nil {
		t.Fatalf("mechanism: %v", err)
	}
	if got := mech.Name(); got != AWSMSKIAM {
		t.Errorf("Name: got %q, want %q", got, AWSMSKIAM)
	}
	// The credentials are read at every login, not when the mechanism
	// is made.
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDSECOND")
	t.Setenv("AWS_SESSION_TOKEN", "token")
	_, first, err := mech.Authenticate(context.Background(), "b-1.demo.abc123.c2.kafka.eu-west-1.amazonaws.com:9098")
	if err != nil {
		t.Fatalf("Authenticate: %v", err)
	}
	var msg map[string]string
	if err := json.Unmarshal(first, &msg); err != nil {
		t.Fatalf("login message %s: %v", first, err)
	}
	if got := msg["action"]; got != "kafka-cluster:Connect" {
		t.Errorf("action: got %q, want kafka-cluster:Connect", got)
	}
	if got := msg["x-amz-credential"]; !strings.HasPrefix(got, "AKIDSECOND/") || !strings.Contains(got, "/eu-west-1/kafka-cluster/") {
		t.Errorf("x-amz-credential: got %q, want AKIDSECOND/<date>/eu-west-1/kafka-cluster/aws4_request", got)
	}
	if got := msg["x-amz-security-token"]; got != "token" {
		t.Errorf("x-amz-security-token: got %q, want token", got)
	}
}
