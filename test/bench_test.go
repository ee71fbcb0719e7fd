package test

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
	"github.com/ksaga/ksaga/saga/order"
)

// gate counts the inbox records the engine commits and can hold its loop
// after a commit.
type gate struct {
	records atomic.Int64
	mu      sync.Mutex
	closed  chan struct{}
}

func (g *gate) AfterCommit(_ context.Context, b *orchestrator.Batch) {
	g.records.Add(int64(b.Records))
	g.mu.Lock()
	c := g.closed
	g.mu.Unlock()
	if c != nil {
		<-c
	}
}

// BenchmarkEngineBacklog times the engine alone through a backlog of start
// requests (one op is one start), in process against kfake and a real
// redis-server: the in-process counterpart of sagabench's "engine alone"
// row, for profiling (-cpuprofile) without the participants.
func BenchmarkEngineBacklog(b *testing.B) {
	e := newEnv(b)
	g := &gate{}
	r := e.startEngine(nil, orchestrator.Hooks(g))
	defer r.stop(b)
	e.start(newOrder("warm-up"))
	waitRecords(b, g, 1)

	// Hold the loop while the backlog is written, so that the engine
	// meets it whole, as after a pause.
	hold := make(chan struct{})
	g.mu.Lock()
	g.closed = hold
	g.mu.Unlock()
	e.start(newOrder("hold"))
	waitRecords(b, g, 2)
	recs := make([]*kgo.Record, b.N)
	for i := range recs {
		o := newOrder(fmt.Sprintf("b-%07d", i))
		v, _ := json.Marshal(o)
		recs[i] = &kgo.Record{Topic: message.Inbox(order.Name), Key: []byte(o.OrderID), Value: v,
			Headers: []kgo.RecordHeader{
				{Key: message.HeaderMessageType, Value: []byte(message.TypeStartSaga)},
				{Key: message.HeaderMessageID, Value: []byte("start-" + o.OrderID)},
			}}
	}
	for i := 0; i < len(recs); i += 1000 {
		e.produce(recs[i:min(i+1000, len(recs))]...)
	}
	g.mu.Lock()
	g.closed = nil
	g.mu.Unlock()
	b.ReportAllocs()
	b.ResetTimer()
	close(hold)
	waitRecords(b, g, int64(b.N)+2)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "starts/s")
}

func waitRecords(b *testing.B, g *gate, n int64) {
	b.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for g.records.Load() < n {
		if time.Now().After(deadline) {
			b.Fatalf("the engine committed %d of %d inbox records in 2m", g.records.Load(), n)
		}
		time.Sleep(time.Millisecond)
	}
}
