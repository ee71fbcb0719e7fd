package test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/saga/order"
)

// TestForwardedCopyIsTimestampedAnew moves a start request that waited two
// days off its home partition. The copy is timestamped when it is moved, so
// a broker that bounds timestamps (message.timestamp.before.max.ms) takes
// it, and carries the original's time in a header.
func TestForwardedCopyIsTimestampedAnew(t *testing.T) {
	e := newEnv(t)
	eng := e.startEngine(nil)
	defer eng.stop(t)

	id := onPartition("old", 0, 1)[0]
	r := startRecord(newOrder(id))
	r.Partition = 1
	r.Timestamp = time.Now().Add(-48 * time.Hour).Truncate(time.Millisecond)
	// The test's client hashes keys; this record must land where it is put.
	manual, err := kgo.NewClient(kgo.SeedBrokers(e.brokers...), kgo.RecordPartitioner(kgo.ManualPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer manual.Close()
	if err := manual.ProduceSync(context.Background(), r).FirstErr(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; {
		for _, got := range e.readAll(message.Inbox(order.Name), 300*time.Millisecond) {
			if header(got, message.HeaderForwardedFrom) == "" {
				continue
			}
			if age := time.Since(got.Timestamp); age > time.Minute || age < -time.Minute {
				t.Errorf("the copy is timestamped %v, %v from now; want the time it was moved", got.Timestamp, age)
			}
			if h, want := header(got, message.HeaderOriginalTimestamp), strconv.FormatInt(r.Timestamp.UnixMilli(), 10); h != want {
				t.Errorf("%s = %q, want %q", message.HeaderOriginalTimestamp, h, want)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the misplaced record was not moved within 30s")
		}
	}
}
