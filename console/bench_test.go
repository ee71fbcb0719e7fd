package console_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/console"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// oneToken is a Tokens of one token of every scope.
type oneToken struct{ sum [sha256.Size]byte }

func (o oneToken) Lookup(sum [sha256.Size]byte) *console.Principal {
	if sum != o.sum {
		return nil
	}
	return &console.Principal{Name: "bench"}
}

// benchState returns the state of a completed parcel saga as the engine
// writes it, with its history of 6 events (two with reply data).
func benchState(id string, at time.Time) []byte {
	h := func(typ, step string, v int64, reply string) orchestrator.HistoryEntry {
		e := orchestrator.HistoryEntry{Type: typ, Step: step, Version: v, At: at.Add(time.Duration(v) * 7 * time.Millisecond)}
		if reply != "" {
			e.Attempt, e.Reply = 1, json.RawMessage(reply)
		}
		return e
	}
	s := orchestrator.State{ID: id, Type: "parcel", Version: 5, Status: message.StatusCompleted, Step: 4, StepName: "deliver", Undoing: -1,
		StartHash: "9f2c1a7b", Data: json.RawMessage(`{"id":"` + id + `","label":"L-` + id + `","weight":5}`), Created: at, Updated: at.Add(40 * time.Millisecond),
		Trace: &orchestrator.TraceContext{Parent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
		History: []orchestrator.HistoryEntry{h(message.EventSagaStarted, "", 1, ""), h(message.EventStepSucceeded, "weigh", 2, ""),
			h(message.EventStepSucceeded, "label", 3, `{"label":"L-`+id+`"}`), h(message.EventStepSucceeded, "deliver", 4, ""),
			h(message.EventSagaCompleted, "", 5, "")}}
	b, _ := json.Marshal(s)
	return b
}

// BenchmarkTimeline measures the page of one saga, HTTP handler end to end
// (session, Redis read, timeline, template), with KSAGA_BENCH_SAGAS sagas
// (default 1,000,000) in the Redis view of a real redis-server, written
// pipelined before the clock starts:
//
//	go test -run '^$' -bench Timeline -benchtime 2000x ./console/
//
// It also measures the in-flight list (a tenth of the sagas with a
// deadline), on its first page and its 20th.
func BenchmarkTimeline(b *testing.B) {
	n := 1_000_000
	if v := os.Getenv("KSAGA_BENCH_SAGAS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 {
			b.Fatalf("KSAGA_BENCH_SAGAS=%q: want a positive number", v)
		}
	}
	const parts = 6
	addr := redistest.Start(b)
	rdb := redis.NewClient(&redis.Options{Addr: addr})
	defer rdb.Close()
	ctx := context.Background()
	began := time.Now()
	at := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	const batch = 10_000
	for i := 0; i < n; i += batch {
		_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for j := i; j < min(n, i+batch); j++ {
				id := "p-" + strconv.Itoa(j)
				p.HSet(ctx, orchestrator.StateKey("parcel", message.HomePartition(id, parts), id), "version", 5, "state", benchState(id, at))
				if j%10 == 0 {
					// One saga in ten waits on a deadline.
					hp := message.HomePartition(id, parts)
					p.ZAdd(ctx, "ksaga:{parcel:"+strconv.Itoa(int(hp))+"}:deadlines", redis.Z{Score: float64(at.UnixMilli() + int64(j)), Member: id})
				}
			}
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	keys, _ := rdb.DBSize(ctx).Result()
	mem, _ := rdb.Info(ctx, "memory").Result()
	used := ""
	for _, line := range strings.Split(mem, "\n") {
		if v, ok := strings.CutPrefix(line, "used_memory_human:"); ok {
			used = strings.TrimSpace(v)
		}
	}
	b.Logf("%d sagas written to the Redis view in %v (%d keys, %s)", n, time.Since(began).Round(time.Millisecond), keys, used)

	const token = "bench-token-0123456789abcdefghijklmnopqrstuv"
	c, err := console.New(console.Config{
		Sagas: []console.Saga{{Def: parcelSaga, InboxPartitions: parts, AuditPartitions: parts}},
		Redis: rdb, Brokers: []string{"127.0.0.1:1"}, Tokens: oneToken{sha256.Sum256([]byte(token))},
	})
	if err != nil {
		b.Fatal(err)
	}
	h := c.Handler()
	login := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader("token="+token))
	login.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, login)
	var cookie *http.Cookie
	for _, ck := range rec.Result().Cookies() {
		cookie = ck
	}
	if cookie == nil {
		b.Fatalf("login answered %d without a cookie", rec.Code)
	}
	id := "p-" + strconv.Itoa(n/2)
	page := func() *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, "/sagas/parcel/"+url.PathEscape(id), nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	if rec := page(); rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "SagaCompleted") || !strings.Contains(rec.Body.String(), "L-"+id) {
		b.Fatalf("the page of %s: %d\n%s", id, rec.Code, rec.Body)
	}
	get := func(path string) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.AddCookie(cookie)
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	for _, bc := range []struct{ name, path string }{
		{"timeline", "/sagas/parcel/" + url.PathEscape(id)},
		// The in-flight list (one saga in ten has a deadline): its first
		// page, and its 20th (1,000 deadlines of each partition read).
		{"inflight-page-1", "/sagas/parcel?list=inflight"},
		{"inflight-page-20", "/sagas/parcel?list=inflight&page=20"},
	} {
		if rec := get(bc.path); rec.Code != http.StatusOK {
			b.Fatalf("%s answered %d", bc.path, rec.Code)
		}
		b.Run(fmt.Sprintf("%s/sagas=%d", bc.name, n), func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if rec := get(bc.path); rec.Code != http.StatusOK {
					b.Fatalf("answered %d", rec.Code)
				}
			}
		})
	}
}
