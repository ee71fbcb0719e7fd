// Package monitoring holds the tests of ksaga's alert rules and dashboard
// (the manifests beside this file): promtool's checks and unit tests of
// the rules, and a scrape of a running sagad that every metric the rules
// and the dashboard name must be in.
package monitoring

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// promtoolVersion is the Prometheus release whose promtool checks the
// rules (a module version of github.com/prometheus/prometheus).
const promtoolVersion = "v0.316.0"

var (
	promtoolOnce sync.Once
	promtoolPath string
	promtoolErr  error
)

// promtool returns the path of a pinned promtool: $KSAGA_PROMTOOL, or the
// one built under $(go env GOCACHE)/ksaga-tools/promtool-<version>/, which
// it builds with go install the first time on a machine (a few minutes:
// the Go module proxy serves Prometheus's sources, nothing prebuilt).
func promtool(t *testing.T) string {
	t.Helper()
	promtoolOnce.Do(func() {
		if p := os.Getenv("KSAGA_PROMTOOL"); p != "" {
			promtoolPath = p
			return
		}
		out, err := exec.Command("go", "env", "GOCACHE").Output()
		if err != nil {
			promtoolErr = fmt.Errorf("go env GOCACHE: %w", err)
			return
		}
		dir := filepath.Join(strings.TrimSpace(string(out)), "ksaga-tools", "promtool-"+promtoolVersion)
		promtoolPath = filepath.Join(dir, "promtool")
		if _, err := os.Stat(promtoolPath); err == nil {
			return
		}
		t.Logf("building promtool %s into %s (once per machine)", promtoolVersion, dir)
		// Outside the ksaga module, so that its go.mod neither constrains
		// nor records promtool's dependencies.
		cmd := exec.Command("go", "install", "github.com/prometheus/prometheus/cmd/promtool@"+promtoolVersion)
		cmd.Dir = os.TempDir()
		cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=", "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			promtoolErr = fmt.Errorf("go install promtool: %w\n%s", err, out)
		}
	})
	if promtoolErr != nil {
		t.Fatal(promtoolErr)
	}
	return promtoolPath
}

// rulesFile writes the groups of prometheusrule.yaml (its spec, as a plain
// Prometheus rule file) to dir/rules.yaml.
func rulesFile(t *testing.T, dir string) string {
	t.Helper()
	raw, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_, spec, ok := strings.Cut(string(raw), "\nspec:\n")
	if !ok {
		t.Fatal("prometheusrule.yaml has no spec")
	}
	var b strings.Builder
	for _, line := range strings.SplitAfter(spec, "\n") {
		b.WriteString(strings.TrimPrefix(line, "  "))
	}
	path := filepath.Join(dir, "rules.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestRules runs promtool check rules and the unit tests of
// rules_test.yaml, which cover every alert.
func TestRules(t *testing.T) {
	if testing.Short() {
		t.Skip("builds promtool the first time")
	}
	tool := promtool(t)
	dir := t.TempDir()
	rules := rulesFile(t, dir)
	if out, err := exec.Command(tool, "check", "rules", rules).CombinedOutput(); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	tests, err := os.ReadFile("rules_test.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "rules_test.yaml"), tests, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(tool, "test", "rules", filepath.Join(dir, "rules_test.yaml")).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	// Every alert has a test case and a runbook section.
	runbook, err := os.ReadFile("../../../docs/OPERATIONS.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, alert := range alerts(t) {
		if !strings.Contains(string(tests), "alertname: "+alert+"\n") {
			t.Errorf("alert %s has no test case in rules_test.yaml", alert)
		}
		if !strings.Contains(string(runbook), "\n### "+alert+"\n") {
			t.Errorf("alert %s has no section in docs/OPERATIONS.md", alert)
		}
	}
}

// alerts returns the names of the alerts.
func alerts(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, m := range regexp.MustCompile(`(?m)^\s*- alert: (\S+)$`).FindAllStringSubmatch(string(raw), -1) {
		out = append(out, m[1])
	}
	return out
}

// metricRE matches the names of ksaga's metrics in PromQL.
var metricRE = regexp.MustCompile(`\bksaga_[a-z0-9_]+\b`)

// queried returns the metrics that the rules' and the dashboard's queries
// name, each with where it is named.
func queried(t *testing.T) map[string][]string {
	t.Helper()
	out := make(map[string][]string)
	raw, err := os.ReadFile("prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	alert := ""
	inExpr := false
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(trimmed, "- alert:"):
			alert, inExpr = strings.TrimSpace(strings.TrimPrefix(trimmed, "- alert:")), false
		case strings.HasPrefix(trimmed, "expr:"):
			inExpr = true
		case strings.HasPrefix(trimmed, "labels:"), strings.HasPrefix(trimmed, "for:"), strings.HasPrefix(trimmed, "annotations:"):
			inExpr = false
		}
		if inExpr {
			for _, m := range metricRE.FindAllString(line, -1) {
				out[m] = append(out[m], "alert "+alert)
			}
		}
	}
	var dash struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	raw, err = os.ReadFile("ksaga-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &dash); err != nil {
		t.Fatalf("ksaga-dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, m := range metricRE.FindAllString(tg.Expr, -1) {
				out[m] = append(out[m], "panel "+p.Title)
			}
		}
	}
	for _, v := range dash.Templating.List {
		q, _ := json.Marshal(v.Query)
		for _, m := range metricRE.FindAllString(string(q), -1) {
			out[m] = append(out[m], "variable "+v.Name)
		}
	}
	return out
}

// TestScrape starts sagad (the embedded demo, kept serving, relaying its
// Redis outbox, serving the HTTP API) with --metrics-addr on a free port,
// scrapes /metrics once the demo's orders went through, and fails when an
// alert or a dashboard query names a metric that sagad does not export, or
// promtool check metrics finds fault with the exposition. KSAGA_SAGAD_BIN
// names a sagad binary to test instead of building ./cmd/sagad.
func TestScrape(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sagad")
	}
	bin := sagad(t)
	addr := freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// --outbox-relay: the outbox metrics exist only where a relay runs;
	// --api-addr: the HTTP API's, only where the API runs.
	cmd := exec.CommandContext(ctx, bin, "--serve", "--demo-orders", "50", "--metrics-addr", addr,
		"--data-dir", t.TempDir(), "--log-format", "json", "--outbox-relay", "redis",
		"--api-addr", freeAddr(t), "--api-insecure-no-auth")
	// A tracing endpoint nobody listens on: tracing is on, and its exports,
	// tried every 100ms, fail; sagad runs on and logs that as JSON too.
	cmd.Env = append(os.Environ(), "OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:1", "OTEL_BSP_SCHEDULE_DELAY=100")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout = io.Discard
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			default:
			}
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
		// Every line sagad wrote is JSON (--log-format json).
		for l := range lines {
			if !json.Valid([]byte(l)) {
				t.Errorf("sagad wrote a line that is not JSON: %s", l)
			}
		}
	})

	// Wait until the demo's sagas finished, so that the histograms and the
	// Kafka clients' per-topic series exist.
	var exposition string
	deadline := time.Now().Add(2 * time.Minute)
	for {
		exposition, err = scrape("http://" + addr + "/metrics")
		if err == nil && strings.Contains(exposition, "ksaga_step_duration_seconds_bucket") &&
			finished(exposition) >= 50 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("sagad did not finish its demo orders within 2m (last scrape error %v)", err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Give the exporter time to fail at least once.
	time.Sleep(time.Second)

	exported := make(map[string]bool)
	for _, line := range strings.Split(exposition, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		exported[name] = true
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				exported[base] = true
			}
		}
	}
	q := queried(t)
	names := make([]string, 0, len(q))
	for m := range q {
		names = append(names, m)
	}
	slices.Sort(names)
	for _, m := range names {
		if !exported[m] {
			t.Errorf("%s is named by %s but sagad does not export it", m, strings.Join(slices.Compact(q[m]), ", "))
		}
	}
	if len(names) < 15 {
		t.Errorf("the rules and the dashboard name %d metrics, want more: is the parsing broken?", len(names))
	}

	check := exec.Command(promtool(t), "check", "metrics")
	check.Stdin = strings.NewReader(exposition)
	if out, err := check.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, out)
	}
}

var (
	sagadOnce sync.Once
	sagadBin  string
	sagadErr  error
)

// sagad returns $KSAGA_SAGAD_BIN, or a sagad built from ./cmd/sagad once
// per test run.
func sagad(t *testing.T) string {
	t.Helper()
	sagadOnce.Do(func() {
		if sagadBin = os.Getenv("KSAGA_SAGAD_BIN"); sagadBin != "" {
			return
		}
		dir, err := os.MkdirTemp("", "ksaga-sagad-")
		if err != nil {
			sagadErr = err
			return
		}
		sagadBin = filepath.Join(dir, "sagad")
		if out, err := exec.Command("go", "build", "-o", sagadBin, "../../../cmd/sagad").CombinedOutput(); err != nil {
			sagadErr = fmt.Errorf("build sagad: %w\n%s", err, out)
		}
	})
	if sagadErr != nil {
		t.Fatal(sagadErr)
	}
	return sagadBin
}

// TestFatalErrorIsJSON checks that sagad's fatal error (Kafka unreachable)
// is a JSON line like the others under --log-format json, and exits 1.
func TestFatalErrorIsJSON(t *testing.T) {
	if testing.Short() {
		t.Skip("runs sagad")
	}
	cmd := exec.Command(sagad(t), "--kafka-brokers", "127.0.0.1:1", "--redis-addr", "127.0.0.1:1", "--log-format", "json", "--metrics-addr", "")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err := cmd.Run()
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit status %d (%v), want 1", code, err)
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	for _, l := range lines {
		if !json.Valid([]byte(l)) {
			t.Errorf("a line that is not JSON: %s", l)
		}
	}
	var last map[string]any
	_ = json.Unmarshal([]byte(lines[len(lines)-1]), &last)
	if last["level"] != "ERROR" || !strings.Contains(fmt.Sprint(last["msg"]), "Kafka") {
		t.Errorf("last line %s: want the fatal error, at level ERROR", lines[len(lines)-1])
	}
}

// finished sums ksaga_sagas_finished_total in an exposition.
func finished(exposition string) float64 {
	var sum float64
	for _, line := range strings.Split(exposition, "\n") {
		if strings.HasPrefix(line, "ksaga_sagas_finished_total{") {
			var v float64
			if _, err := fmt.Sscan(line[strings.LastIndex(line, " ")+1:], &v); err == nil {
				sum += v
			}
		}
	}
	return sum
}

func scrape(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s: %s", url, resp.Status)
	}
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
