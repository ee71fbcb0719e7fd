package main

import (
	"hash/crc32"
	"hash/fnv"
	"math/rand/v2"
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Partitioners of the load's producers. ksaga hashes a saga id to its home
// partition with murmur2, as Kafka's Java client and franz-go do; other
// clients do not, and the engine must move a record that lands elsewhere
// to its home partition (docs/RELIABILITY.md). The load sends through each
// of them, from a producer of its own.
const (
	// viaMurmur2 is franz-go's default: murmur2 of the key.
	viaMurmur2 = "murmur2"
	// viaCRC32 is librdkafka's default partitioner, consistent_random:
	// CRC32 (IEEE) of the key modulo the partitions; a record without a
	// key goes to a random partition.
	viaCRC32 = "crc32"
	// viaFNV1a is segmentio/kafka-go's Hash balancer (and sarama's hash
	// partitioner): FNV-1a of the key as a signed 32-bit number, modulo
	// the partitions, negated when negative.
	viaFNV1a = "fnv1a"
	// viaRandom picks a random partition for every record.
	viaRandom = "random"
	// viaRoundRobin takes the partitions in turn, kafka-go's default.
	viaRoundRobin = "round-robin"
)

// partitionerNames lists the partitioners in report order.
var partitionerNames = []string{viaMurmur2, viaCRC32, viaFNV1a, viaRandom, viaRoundRobin}

// foreignPartitioners are the partitioners that do not hash like ksaga.
var foreignPartitioners = []string{viaCRC32, viaFNV1a, viaRandom, viaRoundRobin}

// newPartitioner returns the kgo.Partitioner of a producer that partitions
// like name.
func newPartitioner(name string) kgo.Partitioner {
	switch name {
	case viaMurmur2:
		return kgo.StickyKeyPartitioner(nil)
	case viaCRC32:
		return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			return func(r *kgo.Record, n int) int {
				if len(r.Key) == 0 {
					return rand.IntN(n)
				}
				return crc32Partition(r.Key, n)
			}
		})
	case viaFNV1a:
		return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			var rr roundRobin // kafka-go sends a record without a key round-robin
			return func(r *kgo.Record, n int) int {
				if r.Key == nil {
					return rr.next(n)
				}
				return fnv1aPartition(r.Key, n)
			}
		})
	case viaRandom:
		return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			return func(_ *kgo.Record, n int) int { return rand.IntN(n) }
		})
	case viaRoundRobin:
		return kgo.BasicConsistentPartitioner(func(string) func(*kgo.Record, int) int {
			var rr roundRobin
			return func(_ *kgo.Record, n int) int { return rr.next(n) }
		})
	}
	panic("unknown partitioner " + name)
}

// crc32Partition is librdkafka's consistent partitioner for a non-empty
// key: rd_crc32(key) % partition_cnt.
func crc32Partition(key []byte, n int) int {
	return int(crc32.ChecksumIEEE(key) % uint32(n))
}

// fnv1aPartition is kafka-go's Hash balancer with its default hasher.
func fnv1aPartition(key []byte, n int) int {
	h := fnv.New32a()
	h.Write(key)
	p := int32(h.Sum32()) % int32(n)
	if p < 0 {
		p = -p
	}
	return int(p)
}

// roundRobin hands out partitions in turn. kgo calls a topic's partition
// function from one goroutine at a time, but the lock keeps it safe
// anyway.
type roundRobin struct {
	mu sync.Mutex
	i  int
}

func (r *roundRobin) next(n int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	p := r.i % n
	r.i++
	return p
}
