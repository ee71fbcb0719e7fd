// Package ops is what an operator does to a saga type, as a library: list,
// show, preview and redrive its dead letters, read its sagas from the Redis
// view, ask one to compensate or resume, and read the audit log of all
// that. sagactl is a command line over it; a web console or a user's own
// program acts exactly as sagactl does by calling it.
//
//	k := ops.Kafka{Brokers: []string{"localhost:9092"}}
//	sel := ops.Selection{Filter: ops.Filter{Reason: dlq.ReasonExhausted}, MaxRedrives: 3}
//	preview, err := ops.PreviewRedrive(ctx, k, "order", sel)
//	// ... show preview.Redriven to a human, then:
//	res, err := ops.Redrive(ctx, k, ops.RedriveRequest{SagaType: "order", Selection: sel,
//		By: "alice", Note: "orders db back, INC-7"})
//
//	r := ops.Redis{Client: rdb}
//	out, err := ops.Compensate(ctx, k, r, ops.Action{SagaType: "order", SagaID: "o-1",
//		By: "alice", Note: "customer called"})
//
// Every change is audited: the records it sends and an audit record on
// saga.<type>.audit (package audit: who, why, when) commit in one Kafka
// transaction, both or neither. Redrives of one saga type share a
// transactional id (RedriveGroup), so two runs, from sagactl or a console,
// never redrive one record twice.
//
// Reads are read_committed, from a topic's start up to the end offsets
// taken when they start. A function makes the Kafka clients it needs from
// a Kafka value and closes them before it returns; it is safe to call
// functions of ops concurrently. Cancelling ctx stops a function; a
// redrive then aborts its open transaction (what it committed stays
// committed and audited).
//
// Errors: a Kafka or Redis that does not answer, or refuses the login,
// on the first request is a *ConnError; a missing topic wraps ErrNoTopic,
// a missing saga ErrSagaNotFound, a saga in the wrong state
// ErrSagaNotRunning, a missing dead letter ErrNoRecord. Package ops exports
// no metrics.
package ops
