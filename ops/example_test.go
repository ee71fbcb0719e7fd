package ops_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/dlq"
	"github.com/ksaga/ksaga/ops"
)

// A console previews a redrive, shows it to an operator, and redrives
// exactly what it showed: Confirm refuses a selection that changed in
// between (a record redriven by someone else, a new dead letter).
func ExampleRedrive() {
	ctx := context.Background()
	k := ops.Kafka{Brokers: []string{"localhost:9092"}}
	sel := ops.Selection{Filter: ops.Filter{Reason: dlq.ReasonExhausted}, MaxRedrives: 3}
	preview, err := ops.PreviewRedrive(ctx, k, "order", sel)
	if err != nil {
		return
	}
	shown := fmt.Sprint(preview.Redriven) // what the operator approved
	res, err := ops.Redrive(ctx, k, ops.RedriveRequest{SagaType: "order", Selection: sel, By: "alice", Note: "orders db back, INC-7",
		Confirm: func(selected []audit.Entry) error {
			if fmt.Sprint(selected) != shown {
				return errors.New("the dead letters changed since the preview: preview again")
			}
			return nil
		}})
	fmt.Println(len(res.Redriven), res.Run, err)
}

// A program asks a saga to compensate, as sagactl saga compensate does:
// the saga is checked in the Redis view, and the Compensate message and
// its audit record commit together.
func ExampleCompensate() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	defer rdb.Close()
	res, err := ops.Compensate(ctx, ops.Kafka{Brokers: []string{"localhost:9092"}}, ops.Redis{Client: rdb},
		ops.Action{SagaType: "order", SagaID: "o-1", By: "alice", Note: "customer called", Tool: "my-tool"})
	switch {
	case errors.Is(err, ops.ErrSagaNotFound), errors.Is(err, ops.ErrSagaNotRunning):
		fmt.Println("nothing to compensate:", err)
	case err != nil:
		fmt.Println("not sent:", err)
	default:
		fmt.Println("audited as run", res.Compensation.Record.Run)
	}
}
