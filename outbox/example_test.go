package outbox_test

import (
	"context"
	"log"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"

	"github.com/ksaga/ksaga/outbox"
	"github.com/ksaga/ksaga/saga"
)

type Order struct {
	OrderID     string `json:"order_id"`
	AmountCents int64  `json:"amount_cents"`
}

var orderSaga = saga.New("order", saga.Step[Order]{Name: "complete", Local: func(context.Context, *Order) error { return nil }})

// A shop saves an order in Redis and starts its saga in one MULTI/EXEC:
// both or neither, whether Kafka is up or not.
func ExampleStream_Start() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	orders := outbox.Redis(rdb, "order", outbox.Check(orderSaga))
	o := Order{OrderID: "o-1", AmountCents: 4599}
	err := orders.Start(ctx, o.OrderID, o, func(pipe redis.Pipeliner) error {
		// The stream is ksaga:outbox:{order}: on Redis Cluster, keys written
		// with it carry the same hash tag.
		pipe.HSet(ctx, "shop:{order}:"+o.OrderID, "status", "placed", "amount_cents", o.AmountCents)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// A shop saves an order in PostgreSQL and starts its saga in one
// transaction.
func ExampleTable_Add() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://shop@localhost:5432/shop")
	if err != nil {
		log.Fatal(err)
	}
	table := outbox.Postgres(outbox.Check(orderSaga))
	o := Order{OrderID: "o-1", AmountCents: 4599}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO orders (id, amount_cents) VALUES ($1, $2)`, o.OrderID, o.AmountCents); err != nil {
			return err
		}
		return table.Add(ctx, tx, "order", o.OrderID, o)
	})
	if err != nil {
		log.Fatal(err)
	}
}

// sagad --outbox-relay redis,postgres runs the relays; a program of one's
// own runs them like this.
func ExampleStream_Relay() {
	ctx := context.Background()
	rdb := redis.NewClient(&redis.Options{Addr: "localhost:6379"})
	relay, err := outbox.Redis(rdb, "order").Relay(
		outbox.Brokers("localhost:9092"),
		outbox.TransactionalID("shop-0-outbox"), // stable per instance
	)
	if err != nil {
		log.Fatal(err)
	}
	defer relay.Close()
	if err := relay.Run(ctx); err != nil { // until ctx is cancelled
		log.Fatal(err)
	}
}
