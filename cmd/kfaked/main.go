// Command kfaked runs kfake, the in-process Kafka of franz-go, as a process
// of its own, so that tests can kill and restart the broker. Its data lives
// in --data-dir and survives a restart; an HTTP endpoint injects faults.
//
//	kfaked --listen 127.0.0.1:19092 --data-dir /tmp/kfake --control 127.0.0.1:19093
//	curl -X POST '127.0.0.1:19093/fault?key=EndTxn&count=2&mode=drop'
//
// Faults (POST /fault):
//
//	key    the request to fault: Produce, EndTxn, TxnOffsetCommit, AddPartitionsToTxn, Fetch, …
//	       (kmsg request names)
//	count  how many requests to fault (default 1)
//	mode   drop: close the client's connection instead of answering (the
//	       client retries); error: answer with a retriable error code
//	       (NOT_LEADER_OR_FOLLOWER for Produce, COORDINATOR_LOAD_IN_PROGRESS
//	       for transaction requests) (default drop)
//
// GET /faults returns how many faults were injected per key. kfaked stops
// on SIGTERM or SIGINT, after syncing its data.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:19092", "`address` of the Kafka listener")
	dataDir := flag.String("data-dir", "", "`directory` that keeps the broker's data across restarts (empty: in memory)")
	control := flag.String("control", "127.0.0.1:19093", "`address` of the fault-injection HTTP endpoint; empty disables it")
	flag.Parse()
	if err := run(*listen, *dataDir, *control); err != nil {
		fmt.Fprintf(os.Stderr, "kfaked: %v\n", err)
		os.Exit(1)
	}
}

func run(listen, dataDir, control string) error {
	host, portStr, err := net.SplitHostPort(listen)
	if err != nil {
		return fmt.Errorf("--listen %q: want host:port: %w", listen, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil || port <= 0 {
		return fmt.Errorf("--listen %q: want a fixed port, so that clients find the broker after a restart", listen)
	}
	opts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.Ports(port),
		kfake.ListenFn(func(network, _ string) (net.Listener, error) {
			return net.Listen(network, net.JoinHostPort(host, portStr))
		}),
		kfake.BrokerConfigs(map[string]string{"transaction.max.timeout.ms": "900000"}),
	}
	if dataDir != "" {
		opts = append(opts, kfake.DataDir(dataDir))
	}
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		return fmt.Errorf("start kfake: %w", err)
	}
	defer c.Close()
	f := &faults{cluster: c, injected: make(map[string]int)}
	if control != "" {
		srv := &http.Server{Addr: control, Handler: f.mux(), ReadHeaderTimeout: 5 * time.Second}
		ln, err := net.Listen("tcp", control)
		if err != nil {
			return fmt.Errorf("--control %s: %w", control, err)
		}
		go func() { _ = srv.Serve(ln) }()
		defer func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_ = srv.Shutdown(ctx)
		}()
	}
	fmt.Printf("kfaked listening on %s (data %q, control %q)\n", strings.Join(c.ListenAddrs(), ","), dataDir, control)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	return nil
}

// faults installs kfake control functions on request.
type faults struct {
	cluster *kfake.Cluster
	mu      sync.Mutex
	// injected counts the faults injected per request key name.
	injected map[string]int
}

func (f *faults) mux() *http.ServeMux {
	m := http.NewServeMux()
	m.HandleFunc("POST /fault", func(w http.ResponseWriter, r *http.Request) {
		if err := f.add(r.URL.Query().Get("key"), r.URL.Query().Get("count"), r.URL.Query().Get("mode")); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	m.HandleFunc("GET /faults", func(w http.ResponseWriter, _ *http.Request) {
		f.mu.Lock()
		defer f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(f.injected)
	})
	return m
}

func (f *faults) add(keyName, countStr, mode string) error {
	key, ok := keyByName(keyName)
	if !ok {
		return fmt.Errorf("key %q is not a Kafka request name (e.g. Produce, EndTxn, TxnOffsetCommit)", keyName)
	}
	count := 1
	if countStr != "" {
		n, err := strconv.Atoi(countStr)
		if err != nil || n < 1 {
			return fmt.Errorf("count %q: want a positive integer", countStr)
		}
		count = n
	}
	if mode == "" {
		mode = "drop"
	}
	if mode != "drop" && mode != "error" {
		return fmt.Errorf("mode %q: want drop or error", mode)
	}
	left := count
	f.cluster.ControlKey(key, func(req kmsg.Request) (kmsg.Response, error, bool) {
		f.cluster.KeepControl()
		f.mu.Lock()
		defer f.mu.Unlock()
		if left == 0 {
			f.cluster.DropControl()
			return nil, nil, false
		}
		left--
		f.injected[keyName]++
		if mode == "drop" {
			return nil, errors.New("kfaked: injected connection drop"), true
		}
		resp, ok := errorResponse(req)
		if !ok {
			return nil, errors.New("kfaked: injected connection drop"), true
		}
		return resp, nil, true
	})
	return nil
}

// errorResponse answers req with a retriable error, where the request type
// has a simple error code.
func errorResponse(req kmsg.Request) (kmsg.Response, bool) {
	switch req := req.(type) {
	case *kmsg.ProduceRequest:
		resp := req.ResponseKind().(*kmsg.ProduceResponse)
		resp.SetVersion(req.GetVersion())
		for _, t := range req.Topics {
			rt := kmsg.NewProduceResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewProduceResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, kerr.NotLeaderForPartition.Code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, true
	case *kmsg.EndTxnRequest:
		resp := req.ResponseKind().(*kmsg.EndTxnResponse)
		resp.SetVersion(req.GetVersion())
		resp.ErrorCode = kerr.CoordinatorLoadInProgress.Code
		return resp, true
	case *kmsg.TxnOffsetCommitRequest:
		resp := req.ResponseKind().(*kmsg.TxnOffsetCommitResponse)
		resp.SetVersion(req.GetVersion())
		for _, t := range req.Topics {
			rt := kmsg.NewTxnOffsetCommitResponseTopic()
			rt.Topic = t.Topic
			for _, p := range t.Partitions {
				rp := kmsg.NewTxnOffsetCommitResponseTopicPartition()
				rp.Partition, rp.ErrorCode = p.Partition, kerr.CoordinatorLoadInProgress.Code
				rt.Partitions = append(rt.Partitions, rp)
			}
			resp.Topics = append(resp.Topics, rt)
		}
		return resp, true
	}
	return nil, false
}

func keyByName(name string) (int16, bool) {
	for k := int16(0); k <= kmsg.MaxKey; k++ {
		if strings.EqualFold(kmsg.NameForKey(k), name) {
			return k, true
		}
	}
	return 0, false
}
