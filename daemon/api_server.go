package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/internal/inbox"
	"github.com/ksaga/ksaga/internal/sagadef"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/metrics"
	"github.com/ksaga/ksaga/saga"
	"github.com/ksaga/ksaga/topic"
)

// apiMaxBufferedBytes bounds the records the API's Kafka client holds while
// Kafka is slow or down; a request that finds it full waits (at most
// --api-produce-timeout) and then answers 503.
const apiMaxBufferedBytes = 64 << 20

// startAPI serves the HTTP API on --api-addr until the returned stop is
// called; stop waits for the requests in progress (at most shutdownTimeout)
// and closes the API's Kafka client. Without --api-addr it serves nothing.
// It fails when the inboxes cannot be described or the address cannot be
// bound.
func (a *app) startAPI(ctx context.Context, env *Env, defs []*saga.Definition) (stop func(), err error) {
	c := a.cfg.API
	if !c.Enabled() {
		return func() {}, nil
	}
	if len(defs) == 0 {
		return nil, errors.New("--api-addr: no saga type is registered, so the HTTP API has nothing to serve")
	}
	inFlight, waiting := make(chan struct{}, c.MaxInFlight), make(chan struct{}, c.MaxWaiters)
	requests, err := newAPIMetrics(env.Registry, inFlight, waiting)
	if err != nil {
		return nil, err
	}
	opts := append(env.KafkaOpts(),
		// The API picks each record's partition: the saga's home.
		kgo.RecordPartitioner(kgo.ManualPartitioner()),
		// Both are kgo's defaults; a 202 depends on them.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MaxBufferedBytes(apiMaxBufferedBytes),
		metrics.Kafka(env.Registry, defs[0].Name(), "api"),
	)
	kc, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("HTTP API Kafka client: %w", err)
	}
	sagas, err := apiSagas(ctx, kc, defs)
	if err != nil {
		kc.Close()
		return nil, err
	}
	// Compensations are written with their audit records in
	// transactions of their own client: the starts' producer is not
	// transactional (a transaction would serialize them).
	comp := newCompensator(env.KafkaOpts(), a.cfg.TransactionalID+".api", c.ProduceTimeout)
	// Waits read saga.<type>.events with a consumer per saga type, made
	// by the first wait for the type.
	waits := newWaiters(env.KafkaOpts(), c.MaxWait, waiting, c.ProduceTimeout, a.log)
	h := &api{sagas: sagas, rdb: env.rdb, kc: kc, comp: comp, waits: waits, tool: a.o.name + "-api", inFlight: inFlight,
		backoff: newAuthBackoff(time.Now, a.log), timeout: c.ProduceTimeout, now: time.Now, log: a.log, requests: requests}
	reloadCtx, stopReload := context.WithCancel(context.Background())
	var loads []func()
	if c.TokenFile != "" {
		h.tokens = newTokenSet(c.TokenFile, a.log)
		loads = append(loads, h.tokens.load)
	} else {
		a.log.Warn("HTTP API without authentication (--api-insecure-no-auth): anyone who reaches " + c.Addr + " can start and compensate sagas")
	}
	srv := &http.Server{
		// Once the drain begins, answers close their connections: a
		// caller on a keep-alive connection then reconnects to a pod
		// that stays (kube-proxy balances connections, not requests).
		Handler:           a.closeWhileDraining(h.handler()),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      c.ProduceTimeout + 30*time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
	}
	if c.TLSCert != "" {
		certs, err := newCertReloader(c.TLSCert, c.TLSKey, a.log)
		if err != nil {
			stopReload()
			kc.Close()
			comp.close()
			return nil, fmt.Errorf("--api-tls-cert %s, --api-tls-key %s: %w", c.TLSCert, c.TLSKey, err)
		}
		loads = append(loads, certs.load)
		srv.TLSConfig = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: certs.getCertificate}
	}
	ln, err := net.Listen("tcp", c.Addr)
	if err != nil {
		stopReload()
		kc.Close()
		comp.close()
		return nil, fmt.Errorf("cannot listen on --api-addr %s: %w; choose another address, or \"\" to disable the HTTP API", c.Addr, err)
	}
	useTLS := srv.TLSConfig != nil
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		reload(reloadCtx, reloadInterval, loads...)
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		serve := srv.Serve
		if useTLS {
			// The certificate comes from TLSConfig.GetCertificate.
			serve = func(ln net.Listener) error { return srv.ServeTLS(ln, "", "") }
		}
		if err := serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("HTTP API server", "err", err)
		}
	}()
	auth := "bearer tokens from " + c.TokenFile
	if h.tokens == nil {
		auth = "none"
	}
	scheme := "http"
	if useTLS {
		scheme = "https"
	}
	a.log.Info("serving the HTTP API", "addr", ln.Addr().String(), "scheme", scheme, "auth", auth, "max_in_flight", c.MaxInFlight,
		"max_wait", c.MaxWait.String(), "max_waiters", c.MaxWaiters)
	return func() {
		sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
		defer cancel()
		// The waiting requests answer at once (202): Shutdown waits for
		// them.
		waits.stop()
		if err := srv.Shutdown(sctx); err != nil {
			a.log.Warn("HTTP API shutdown", "err", err)
		}
		stopReload()
		<-done
		<-done
		kc.Close()
		comp.close()
		waits.close()
	}, nil
}

// apiSagas reads the partition counts of every saga type's inbox and audit
// topic, which the daemon has created or checked by now, and the type of
// its data. A topic created a moment ago may be unknown to the broker's
// metadata for a moment: it asks again until kafkaPingTimeout.
func apiSagas(ctx context.Context, cl *kgo.Client, defs []*saga.Definition) (map[string]apiSaga, error) {
	ctx, cancel := context.WithTimeout(ctx, kafkaPingTimeout)
	defer cancel()
	sagas := make(map[string]apiSaga, len(defs))
	for _, def := range defs {
		var parts [2]int32
		for i, name := range []string{message.Inbox(def.Name()), topic.Audit(def.Name())} {
			for {
				n, err := inbox.Partitions(ctx, cl, name)
				if err == nil {
					parts[i] = n
					break
				}
				if !errors.Is(err, kerr.UnknownTopicOrPartition) && !errors.Is(err, inbox.ErrNoPartitions) || ctx.Err() != nil {
					return nil, fmt.Errorf("HTTP API: read the partitions of %s: %w", name, err)
				}
				select {
				case <-ctx.Done():
				case <-time.After(100 * time.Millisecond):
				}
			}
		}
		sagas[def.Name()] = apiSaga{def: def, partitions: parts[0], auditPartitions: parts[1], data: dataType(def)}
	}
	return sagas, nil
}

// dataType returns the type of def's data (T of saga.New[T]): DecodeStored
// of null returns a new *T for any T whose decoding accepts null, as
// encoding/json's own do. nil when it cannot be told (a T that refuses
// null): the field-name check is then skipped.
func dataType(def *saga.Definition) reflect.Type {
	data, err := sagadef.Of(def).DecodeStored([]byte("null"))
	if err != nil || data == nil {
		return nil
	}
	return reflect.TypeOf(data)
}
