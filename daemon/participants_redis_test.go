package daemon_test

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/ksaga/ksaga/client"
	"github.com/ksaga/ksaga/daemon"
	"github.com/ksaga/ksaga/internal/redistest"
	"github.com/ksaga/ksaga/participant"
)

// scrape returns the value of the series of /metrics on addr whose name and
// labels are exactly series (as Prometheus's text format writes them), and
// whether there is one.
func scrape(t *testing.T, addr, series string) (float64, bool) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				t.Fatalf("/metrics: %s %q: %v", series, v, err)
			}
			return f, true
		}
	}
	return 0, false
}

// TestParticipantsRedisClient runs a participant whose handler writes to
// env.ParticipantsRedis() without --participants-redis-addr: its round trips
// are counted as client="participants", not as the engine's.
func TestParticipantsRedisClient(t *testing.T) {
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()
	metricsAddr := loopbackAddr(t)
	tally := echoSaga("tally")
	counted := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- daemon.Run(ctx, []string{
			"--kafka-brokers", brokers[0], "--redis-addr", redistest.Start(t), "--participants", "all",
			"--replication-factor", "1", "--partitions", "1", "--metrics-addr", metricsAddr,
			"--transactional-id", "tally-0", "--session-timeout", "6s", "--log-format", "json",
		}, daemon.Name("tallyd"), daemon.Saga(tally),
			daemon.BuildParticipant("tally-echo", func(_ context.Context, env *daemon.Env) (participant.Handler, error) {
				rdb := env.ParticipantsRedis()
				return participant.HandlerFunc(func(ctx context.Context, reqs []participant.Request) ([]participant.Reply, error) {
					replies := make([]participant.Reply, len(reqs))
					for i := range reqs {
						if err := rdb.Incr(ctx, "tally").Err(); err != nil {
							return nil, err
						}
						replies[i] = participant.Success()
					}
					select {
					case counted <- struct{}{}:
					default:
					}
					return replies, nil
				}), nil
			}),
			daemon.Output(io.Discard, &stderr), env(nil))
	}()

	c, err := client.New(kgo.SeedBrokers(brokers...))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	waitCtx, waitCancel := context.WithTimeout(ctx, time.Minute)
	defer waitCancel()
	for {
		err := c.Start(waitCtx, tally, "t-1", echo{ID: "t-1"})
		if err == nil {
			break
		}
		if !errors.Is(err, client.ErrNoInbox) || waitCtx.Err() != nil {
			t.Fatalf("start: %v\n%s", err, stderr.String())
		}
		time.Sleep(50 * time.Millisecond) // the daemon is creating the topics
	}
	select {
	case <-counted:
	case <-waitCtx.Done():
		t.Fatalf("the participant did not run within a minute\n%s", stderr.String())
	}
	parts, ok := scrape(t, metricsAddr, `ksaga_redis_round_trips_total{client="participants",saga="tally"}`)
	if !ok || parts < 1 {
		t.Errorf(`ksaga_redis_round_trips_total{client="participants"}: got %v (present: %v), want at least the participant's INCR`, parts, ok)
	}
	if eng, ok := scrape(t, metricsAddr, `ksaga_redis_round_trips_total{client="engine",saga="tally"}`); !ok || eng < 1 {
		t.Errorf(`ksaga_redis_round_trips_total{client="engine"}: got %v (present: %v), want the engine's round trips`, eng, ok)
	}
	cancel()
	if code := <-done; code != daemon.ExitOK {
		t.Errorf("exit %d, want 0\n%s", code, stderr.String())
	}
}

// loopbackAddr returns a loopback address whose port was free a moment ago.
func loopbackAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
