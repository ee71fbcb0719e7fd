package main

import (
	"bytes"
	"encoding/json"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// runArgs runs sagactl with args and the environment kv, and returns its
// exit code, stdout and stderr.
func runArgs(t *testing.T, env func(string) string, args ...string) (int, string, string) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	code := run(testContext(t), args, env, &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

// TestCompletionScripts prints the completion script of every shell cobra
// knows.
func TestCompletionScripts(t *testing.T) {
	for _, tt := range []struct{ shell, want string }{
		{"bash", "__start_sagactl"},
		{"zsh", "#compdef sagactl"},
		{"fish", "complete -c sagactl"},
		{"powershell", "Register-ArgumentCompleter"},
	} {
		t.Run(tt.shell, func(t *testing.T) {
			code, stdout, stderr := runArgs(t, envOf(), "completion", tt.shell)
			if code != exitOK || !strings.Contains(stdout, tt.want) {
				t.Errorf("completion %s: exit code %d, stderr %q, stdout without %q:\n%.300s", tt.shell, code, stderr, tt.want, stdout)
			}
		})
	}
}

// complete asks sagactl's completion (what the shell scripts call) for
// the words that may follow args, and returns them.
func complete(t *testing.T, env func(string) string, args ...string) []string {
	t.Helper()
	code, stdout, stderr := runArgs(t, env, append([]string{"__complete"}, args...)...)
	if code != exitOK {
		t.Fatalf("__complete %q: exit code %d, stderr %q", args, code, stderr)
	}
	var out []string
	for _, line := range strings.Split(strings.TrimSpace(stdout), "\n") {
		if line != "" && !strings.HasPrefix(line, ":") {
			word, _, _ := strings.Cut(line, "\t")
			out = append(out, word)
		}
	}
	return out
}

func TestCompletion(t *testing.T) {
	brokers := newCluster(t)
	if got := complete(t, envOf(), "dlq", "re"); !slices.Equal(got, []string{"redrive"}) {
		t.Errorf("dlq re<TAB>: got %q, want [redrive]", got)
	}
	if got := complete(t, envOf(), "dlq", "list", "--reason", ""); !slices.Equal(got, orchestrator.DeadLetterReasons()) {
		t.Errorf("--reason <TAB>: got %q, want the engine's reasons %q", got, orchestrator.DeadLetterReasons())
	}
	if got := complete(t, envOf(), "saga", "list", "--status", "comp"); !slices.Equal(got, []string{message.StatusCompensating, message.StatusCompleted, message.StatusCompensated}) {
		t.Errorf("--status comp<TAB>: got %q", got)
	}
	// Saga types from the brokers' inbox topics, the brokers from a flag
	// or from the environment.
	if got := complete(t, envOf(), "dlq", "list", "--kafka-brokers", brokers[0], "--saga", ""); !slices.Equal(got, []string{"order"}) {
		t.Errorf("--saga <TAB> with --kafka-brokers: got %q, want [order]", got)
	}
	if got := complete(t, envOf("KSAGA_KAFKA_BROKERS", brokers[0]), "saga", "get", "--saga", "o"); !slices.Equal(got, []string{"order"}) {
		t.Errorf("--saga o<TAB> with KSAGA_KAFKA_BROKERS: got %q, want [order]", got)
	}
	// A broker that never answers: nothing, within the completion's timeout.
	start := time.Now()
	if got := complete(t, envOf(), "dlq", "list", "--kafka-brokers", silentAddr(t), "--saga", ""); len(got) != 0 {
		t.Errorf("--saga <TAB> with a silent broker: got %q, want nothing", got)
	}
	if took := time.Since(start); took > completionTimeout+3*time.Second {
		t.Errorf("--saga <TAB> with a silent broker took %s, want about %s", took, completionTimeout)
	}
	if got := complete(t, envOf(), "dlq", "list", "--saga", ""); len(got) != 0 {
		t.Errorf("--saga <TAB> without brokers: got %q, want nothing", got)
	}
}

func TestVersion(t *testing.T) {
	code, stdout, stderr := runArgs(t, envOf(), "version")
	if code != exitOK || !strings.HasPrefix(stdout, "sagactl ") || !strings.Contains(stdout, runtime.Version()) || !strings.Contains(stdout, "github.com/ksaga/ksaga") {
		t.Errorf("version: exit code %d, stdout %q, stderr %q; want sagactl's version, the module and %s", code, stdout, stderr, runtime.Version())
	}
	code, stdout, _ = runArgs(t, envOf(), "version", "-o", "json")
	var v versionInfo
	if err := json.Unmarshal([]byte(stdout), &v); code != exitOK || err != nil || v.Version == "" || v.Go != runtime.Version() {
		t.Errorf("version -o json: exit code %d, %v, got %+v", code, err, v)
	}
}

// TestBadFlag: a flag the command does not have exits 2 with one line that
// names it and where the flags are listed.
func TestBadFlag(t *testing.T) {
	for _, args := range [][]string{
		{"dlq", "list", "--saga", "order", "--nope"},
		{"saga", "get", "--saga", "order", "o-1", "--dry-run"},
		{"dlq", "redrive", "--saga", "order", "--limit", "many"},
	} {
		code, stdout, stderr := runArgs(t, envOf(), args...)
		cmd := "sagactl " + args[0] + " " + args[1]
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 || !strings.Contains(stderr, cmd+" -help lists the flags") {
			t.Errorf("%q: exit code %d, stdout %q, stderr %q; want %d and one line saying %q", args, code, stdout, stderr, exitUsage, cmd+" -help")
		}
	}
	code, _, stderr := runArgs(t, envOf(), "sagga", "list")
	if code != exitUsage || !strings.Contains(stderr, `unknown command "sagga"`) || !strings.Contains(stderr, "did you mean saga?") {
		t.Errorf("sagga list: exit code %d, stderr %q; want %d, a suggestion", code, stderr, exitUsage)
	}
}

// TestEnvTwins runs commands with their addresses from the environment: a
// flag wins over its twin, and flags given with one dash, as Go's flag
// package took them, still work.
func TestEnvTwins(t *testing.T) {
	brokers := newCluster(t)
	writeDeadLetters(t, brokers, testLetter)
	closed := closedAddr(t)
	for _, tt := range []struct {
		name string
		env  func(string) string
		args []string
	}{
		{"KSAGA_KAFKA_BROKERS", envOf("KSAGA_KAFKA_BROKERS", brokers[0]), nil},
		{"flag wins over KSAGA_KAFKA_BROKERS", envOf("KSAGA_KAFKA_BROKERS", closed), []string{"--kafka-brokers", brokers[0]}},
		{"global flag before the command", envOf(), []string{"--kafka-brokers", brokers[0]}},
		{"flags with one dash", envOf(), []string{"-kafka-brokers", brokers[0], "-timeout", "5s"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			args := []string{"dlq", "list", "--saga", "order", "-o", "json"}
			if strings.HasPrefix(tt.name, "global") {
				args = append(slices.Clone(tt.args), args...)
			} else {
				args = append(args, tt.args...)
			}
			code, stdout, stderr := runArgs(t, tt.env, args...)
			var got []listedRecord
			if err := json.Unmarshal([]byte(stdout), &got); code != exitOK || err != nil || len(got) != 3 {
				t.Errorf("%q: exit code %d, %d records (%v), stderr %q; want 0 and 3 records", args, code, len(got), err, stderr)
			}
		})
	}
	// A connection flag's twin: the TLS it asks for fails the plain
	// listener, which shows it was read.
	code, _, stderr := runArgs(t, envOf("KSAGA_KAFKA_BROKERS", brokers[0], "KSAGA_KAFKA_TLS", "true"), "dlq", "list", "--saga", "order", "--timeout", "2s")
	if code != exitError || !strings.Contains(stderr, brokers[0]) {
		t.Errorf("KSAGA_KAFKA_TLS=true against a plain listener: exit code %d, stderr %q; want %d", code, stderr, exitError)
	}
}

// TestSagaDefinitionVersion shows the version of a saga's definition and
// its step's name when the state names them, and neither column when no
// state does.
func TestSagaDefinitionVersion(t *testing.T) {
	addr := redistest.Start(t)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	t.Cleanup(func() { rdb.Close() })
	updated := time.Now().Add(-5 * time.Minute).UTC().Truncate(time.Millisecond)
	putState(t, rdb, orchestrator.State{ID: "o-old", Type: "order", Version: 4, Status: message.StatusRunning, Step: 1, Undoing: -1, Updated: updated})
	b, _ := json.Marshal(orchestrator.State{ID: "o-new", Type: "order", Version: 2, Status: message.StatusRunning, Step: 1, Undoing: -1, Updated: updated.Add(time.Second)})
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	m["definition_version"], m["step_name"] = 3, "authorize-payment"
	b, _ = json.Marshal(m)
	if err := rdb.HSet(testContext(t), orchestrator.StateKey("order", message.HomePartition("o-new", 6), "o-new"), "version", 2, "state", b).Err(); err != nil {
		t.Fatal(err)
	}
	env := envOf("KSAGA_REDIS_ADDR", addr)

	code, stdout, stderr := runArgs(t, env, "saga", "get", "--saga", "order", "--partitions", "6", "o-new")
	lines := strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if code != exitOK || len(lines) != 2 || !slices.Equal(strings.Fields(lines[0])[:5], []string{"SAGA-ID", "STATUS", "DEF-VERSION", "STEP", "STEP-NAME"}) ||
		!slices.Equal(strings.Fields(lines[1])[:5], []string{"o-new", "running", "3", "1", "authorize-payment"}) {
		t.Errorf("saga get o-new: exit code %d, stderr %q, table:\n%s", code, stderr, stdout)
	}
	code, stdout, _ = runArgs(t, env, "saga", "get", "--saga", "order", "--partitions", "6", "o-old")
	if code != exitOK || strings.Contains(stdout, "DEF-VERSION") || strings.Contains(stdout, "STEP-NAME") {
		t.Errorf("saga get o-old: exit code %d, want no definition columns:\n%s", code, stdout)
	}

	// A list shows the columns for every row; a state without a version
	// runs on version 1.
	code, stdout, _ = runArgs(t, env, "saga", "list", "--saga", "order")
	lines = strings.Split(strings.TrimRight(stdout, "\n"), "\n")
	if code != exitOK || len(lines) != 3 || !slices.Equal(strings.Fields(lines[1])[:5], []string{"o-old", "running", "1", "1", "-"}) {
		t.Errorf("saga list: exit code %d, table:\n%s", code, stdout)
	}
	code, stdout, _ = runArgs(t, env, "saga", "list", "--saga", "order", "-o", "json")
	var rows []sagaRow
	if err := json.Unmarshal([]byte(stdout), &rows); code != exitOK || err != nil || len(rows) != 2 ||
		rows[0].DefinitionVersion != 1 || rows[1].DefinitionVersion != 3 || rows[1].StepName != "authorize-payment" {
		t.Errorf("saga list -o json: exit code %d, %v, got %+v", code, err, rows)
	}
}
