package main

import (
	"slices"
	"testing"
)

func TestRollingDeployBuilds(t *testing.T) {
	var got []orderBuild
	for n := 1; n <= 6; n++ {
		got = append(got, buildAfter(n))
	}
	want := []orderBuild{{"2,3", "2"}, {"2,3", "3"}, {"3", ""}, {"2,3", "3"}, {"3", ""}, {"2,3", "3"}}
	if !slices.Equal(got, want) {
		t.Fatalf("builds %v, want %v", got, want)
	}
	args := []string{"--kafka-brokers", "k", "--order-versions", "2", "--metrics-addr", "m"}
	if got, want := withBuild(args, orderBuild{"2,3", "2"}), []string{"--kafka-brokers", "k", "--metrics-addr", "m", "--order-versions", "2,3", "--order-start-version", "2"}; !slices.Equal(got, want) {
		t.Fatalf("withBuild %q, want %q", got, want)
	}
	if got, want := withBuild(withBuild(args, orderBuild{"2,3", "3"}), orderBuild{"3", ""}), []string{"--kafka-brokers", "k", "--metrics-addr", "m", "--order-versions", "3"}; !slices.Equal(got, want) {
		t.Fatalf("withBuild twice %q, want %q", got, want)
	}
}
