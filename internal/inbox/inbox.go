// Package inbox builds the records that ask a saga to start, compensate or
// resume, as package message documents them, and reads an inbox's partition
// count. Package client, the daemon's HTTP API, the outbox relay and package
// audit build their records here, so that a request made through any of them
// is the same record.
//
//	n, err := inbox.Partitions(ctx, cl, message.Inbox("order"))
//	if err != nil {
//		return err
//	}
//	rec := inbox.Start("order", "o-1", n, canonicalJSON)
//
// Partitions sends a request of its own; Record and Start are pure.
package inbox

import (
	"context"
	"errors"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/ksaga/ksaga/message"
)

// Record returns a message of type typ (message.TypeStartSaga,
// TypeCompensate, TypeResume) with message id msgID for saga id of
// sagaType: on saga.<type>.inbox, keyed by the id, on its home partition
// when the inbox has n partitions (message.HomePartition), with the headers
// saga id, saga type, message type and message id in that order. Callers
// append the headers they add (a reason, a trace context). Produce it with
// kgo.ManualPartitioner.
func Record(sagaType, id, typ, msgID string, n int32, value []byte) *kgo.Record {
	return &kgo.Record{
		Topic: message.Inbox(sagaType), Partition: message.HomePartition(id, n), Key: []byte(id), Value: value,
		Headers: []kgo.RecordHeader{
			header(message.HeaderSagaID, id),
			header(message.HeaderSagaType, sagaType),
			header(message.HeaderMessageType, typ),
			header(message.HeaderMessageID, msgID),
		},
	}
}

// Start returns the start request of saga id: a Record of type
// message.TypeStartSaga whose message id is "start-"+id, so that the
// engine drops a start it has seen whoever sent it. value is sent as it
// is: callers write it in canonical form (message.Canonical).
func Start(sagaType, id string, n int32, value []byte) *kgo.Record {
	return Record(sagaType, id, message.TypeStartSaga, "start-"+id, n, value)
}

// header returns a record header of a string value.
func header(k, v string) kgo.RecordHeader { return kgo.RecordHeader{Key: k, Value: []byte(v)} }

// ErrNoPartitions is Partitions' error when the broker's answer does not
// list the topic, or lists it without partitions.
var ErrNoPartitions = errors.New("the broker reports no partitions")

// Partitions returns the partition count of topic (an inbox's never
// changes: see message.HomePartition), asking the broker with a metadata
// request of its own: kadm's ListTopics would answer from the client's
// metadata cache, which may still remember the topic as missing. Its error
// is the request's, the topic's error code as a kerr.Error
// (kerr.UnknownTopicOrPartition when it does not exist), or ErrNoPartitions.
func Partitions(ctx context.Context, cl *kgo.Client, topic string) (int32, error) {
	req := kmsg.NewPtrMetadataRequest()
	rt := kmsg.NewMetadataRequestTopic()
	rt.Topic = &topic
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		return 0, err
	}
	for _, t := range resp.Topics {
		if t.Topic == nil || *t.Topic != topic {
			continue
		}
		if err := kerr.ErrorForCode(t.ErrorCode); err != nil {
			return 0, err
		}
		if len(t.Partitions) == 0 {
			return 0, ErrNoPartitions
		}
		return int32(len(t.Partitions)), nil
	}
	return 0, ErrNoPartitions
}
