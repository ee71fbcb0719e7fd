// Package kfaketest holds the kfake request doctoring that tests of
// several packages share.
package kfaketest

import "github.com/twmb/franz-go/pkg/kmsg"

// ProduceError returns the answer to req that fails each of its partitions
// with the error code: hand it back from a kfake control function to make
// the broker refuse a produce request.
func ProduceError(req *kmsg.ProduceRequest, code int16) *kmsg.ProduceResponse {
	resp := req.ResponseKind().(*kmsg.ProduceResponse)
	resp.Version = req.Version
	for _, rt := range req.Topics {
		st := kmsg.NewProduceResponseTopic()
		st.Topic, st.TopicID = rt.Topic, rt.TopicID
		for _, rp := range rt.Partitions {
			sp := kmsg.NewProduceResponseTopicPartition()
			sp.Partition = rp.Partition
			sp.ErrorCode = code
			st.Partitions = append(st.Partitions, sp)
		}
		resp.Topics = append(resp.Topics, st)
	}
	return resp
}
