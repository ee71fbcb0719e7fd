package committed

import (
	"context"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

func TestOnlyUnmarked(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "t"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	opts := []kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...)}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	plain, err := kgo.NewClient(append(opts, kgo.DefaultProduceTopic("t"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.ProduceSync(ctx, &kgo.Record{Value: []byte("0")}, &kgo.Record{Value: []byte("1")}).FirstErr(); err != nil {
		t.Fatal(err)
	}
	txn, err := kgo.NewClient(append(opts, kgo.DefaultProduceTopic("t"), kgo.TransactionalID("x"))...)
	if err != nil {
		t.Fatal(err)
	}
	defer txn.Close()
	for _, commit := range []kgo.TransactionEndTry{kgo.TryCommit, kgo.TryAbort} {
		if err := txn.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		if err := txn.ProduceSync(ctx, &kgo.Record{Value: []byte("t")}).FirstErr(); err != nil {
			t.Fatal(err)
		}
		if err := txn.EndTransaction(ctx, commit); err != nil {
			t.Fatal(err)
		}
	}
	// Offsets: 0 and 1 plain; 2 data, 3 commit marker; 4 data, 5 abort marker.
	for _, c := range []struct {
		from, end int64
		want      bool
	}{
		{0, 2, true},  // no transaction at all
		{2, 3, true},  // a transaction's data, its marker not in range
		{2, 4, false}, // a commit marker
		{4, 6, false}, // an abort marker
		{6, 6, true},  // empty range
	} {
		got, err := OnlyUnmarked(ctx, opts, "t", 0, c.from, c.end)
		if err != nil {
			t.Fatal(err)
		}
		if got != c.want {
			t.Errorf("OnlyUnmarked(%d, %d) = %v, want %v", c.from, c.end, got, c.want)
		}
	}
}
