package message

import (
	"fmt"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"
)

// TestHomePartitionMatchesKafka checks HomePartition against franz-go's
// key partitioner, which hashes as Kafka's Java client does.
func TestHomePartitionMatchesKafka(t *testing.T) {
	p := kgo.StickyKeyPartitioner(nil).ForTopic("t")
	for _, n := range []int32{1, 3, 6, 12, 100} {
		for i := range 2000 {
			id := fmt.Sprintf("o-%d-%x", i, i*7919)
			if i%50 == 0 {
				id = string(make([]byte, i%7))
			}
			want := int32(p.Partition(&kgo.Record{Key: []byte(id)}, int(n)))
			if got := HomePartition(id, n); got != want {
				t.Fatalf("HomePartition(%q, %d) = %d, want %d", id, n, got, want)
			}
		}
	}
}
