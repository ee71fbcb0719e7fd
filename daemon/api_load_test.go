package daemon_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"runtime"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/ksaga/ksaga/internal/redistest"
)

// gatedBody is a request body that gives its first open bytes at once and
// the rest once gate is closed.
type gatedBody struct {
	r    *bytes.Reader
	open int
	gate <-chan struct{}
	read int
}

func (g *gatedBody) Read(p []byte) (int, error) {
	if g.read >= g.open {
		<-g.gate
	} else if len(p) > g.open-g.read {
		p = p[:g.open-g.read]
	}
	n, err := g.r.Read(p)
	g.read += n
	return n, err
}

// heapInUse is runtime.MemStats.HeapInuse, read without stopping the world.
func heapInUse() uint64 {
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	metrics.Read(s)
	return s[0].Value.Uint64() + s[1].Value.Uint64()
}

// The bound TestAPIBoundedMemory holds the API to: a request with a body of
// the 256 KiB limit holds it once as read, once canonicalized, once in the
// decoder's buffer (which grows by doubling: up to 512 KiB) and once
// decoded into the data type: 1.25 MiB, garbage the collector has not
// taken yet included; rounded up to 2 MiB. A connection costs the server
// its bufio buffers (4 KiB each way), the request and response structures
// and, for a request answered before its body was read, the buffer that
// drains the body.
const (
	boundPerRequest = 2 << 20
	boundPerConn    = 32 << 10
)

// loadAnswer is one answer the load client got.
type loadAnswer struct {
	Code       int    `json:"code"`
	RetryAfter string `json:"retry_after"`
	Body       []byte `json:"body"`
	Err        string `json:"err"`
}

// TestAPIBoundedMemory is the load of issue 20: 400 requests at once, each
// with a start body of the largest size the API accepts (256 KiB), against
// an API with --api-max-in-flight 16. The data is refused by the saga's
// Validate, last of the checks, so that every request goes through them
// all (read, canonicalized, field names checked, decoded into the data
// type) and nothing grows kfake's log. The requests come from another
// process (this test binary, as TestAPILoadClient), so that the heap
// measured here is the server's. Each body is held back after its first
// 64 KiB until all 400 requests have been answered or admitted: exactly 16
// are admitted (ksaga_api_in_flight says so) and the 384 others must have
// been answered 429 at once, with Retry-After and a JSON body, without
// their bodies being read. Then the 16 go on together. The peak of the heap
// in use (runtime.MemStats.HeapInuse), sampled every millisecond from
// before the first request to after the last answer, must stay below 16 ×
// boundPerRequest + 400 × boundPerConn (44.5 MiB) above the heap before
// them; without the cap the 400 requests would hold about 500 MiB.
func TestAPIBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("400 concurrent requests of 256 KiB")
	}
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cluster.Close)
	const (
		n     = 400
		limit = 16
		size  = 256 << 10
	)
	d := startAPIDaemon(t, cluster.ListenAddrs(), redistest.Start(t), nil, "--api-insecure-no-auth", "--api-max-in-flight", fmt.Sprint(limit))

	runtime.GC()
	runtime.GC()
	base := heapInUse()
	var peak atomic.Uint64
	peak.Store(base)
	stopSampling, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stopSampling:
				return
			case <-tick.C:
				if h := heapInUse(); h > peak.Load() {
					peak.Store(h)
				}
			}
		}
	}()

	cmd := exec.Command(os.Args[0], "-test.run=^TestAPILoadClient$", "-test.v")
	cmd.Env = append(os.Environ(), "KSAGA_LOAD_URL="+d.base+"/v1/sagas/parcel/", fmt.Sprintf("KSAGA_LOAD_N=%d", n), fmt.Sprintf("KSAGA_LOAD_SIZE=%d", size))
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	lines := make(chan string)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 64<<20)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	var answers []loadAnswer
	answered, gateOpen := 0, false
	var atGate uint64
	timeout := time.After(2 * time.Minute)
	for answers == nil {
		var line string
		var ok bool
		select {
		case line, ok = <-lines:
		case <-time.After(300 * time.Millisecond):
			// The answers have stopped coming: every request not
			// admitted is answered. Send the rest of the bodies.
			if answered == n-limit && !gateOpen {
				if got := scrapeValue(t, d, "ksaga_api_in_flight"); got != limit {
					t.Errorf("ksaga_api_in_flight: got %v, want %d", got, limit)
				}
				atGate, gateOpen = peak.Load(), true
				if _, err := io.WriteString(stdin, "go\n"); err != nil {
					t.Fatal(err)
				}
			}
			continue
		case <-timeout:
			t.Fatalf("the load client did not finish in 2 minutes; %d answered\n%s", answered, stderr.String())
		}
		switch {
		case !ok:
			t.Fatalf("the load client ended without a result (%v):\n%s", cmd.Wait(), stderr.String())
		case line == "answered":
			answered++
			if gateOpen && answered <= n-limit {
				t.Errorf("an answer came after the gate opened and before the admitted ones")
			}
		case strings.HasPrefix(line, "result "):
			if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "result ")), &answers); err != nil {
				t.Fatal(err)
			}
		}
	}
	close(stopSampling)
	<-sampled
	if !gateOpen {
		t.Errorf("the bodies were sent before %d requests were answered", n-limit)
	}

	codes := map[int]int{}
	for i, a := range answers {
		codes[a.Code]++
		if a.Err != "" {
			t.Errorf("request %d: %s", i, a.Err)
			continue
		}
		var e struct {
			Error string `json:"error"`
		}
		if err := json.Unmarshal(a.Body, &e); err != nil || e.Error == "" {
			t.Errorf("request %d: %d with body %q, want {\"error\": ...}", i, a.Code, a.Body)
		}
		switch a.Code {
		case http.StatusTooManyRequests:
			if a.RetryAfter != "1" {
				t.Errorf("request %d: 429 with Retry-After %q, want 1", i, a.RetryAfter)
			}
		case http.StatusBadRequest:
			if !strings.Contains(e.Error, "weight must be positive") {
				t.Errorf("request %d: 400 %q, want the Validate error", i, e.Error)
			}
		}
	}
	if codes[http.StatusTooManyRequests] != n-limit || codes[http.StatusBadRequest] != limit {
		t.Errorf("answers by status: %v, want %d × 429 and %d × 400", codes, n-limit, limit)
	}
	growth := int64(peak.Load()) - int64(base)
	bound := int64(limit*boundPerRequest + n*boundPerConn)
	t.Logf("heap in use: %.1f MiB before, %.1f MiB at most while the %d bodies were held back, peak %.1f MiB (+%.1f MiB) for %d concurrent requests of %d KiB; bound +%.1f MiB",
		mib(base), mib(atGate), limit, mib(peak.Load()), float64(growth)/(1<<20), n, size>>10, float64(bound)/(1<<20))
	if growth > bound {
		t.Errorf("the heap grew by %.1f MiB, over the bound of %.1f MiB (%d × %d MiB + %d × %d KiB)",
			float64(growth)/(1<<20), float64(bound)/(1<<20), limit, boundPerRequest>>20, n, boundPerConn>>10)
	}
}

// TestAPILoadClient is the client of TestAPIBoundedMemory, run by it in a
// process of its own: it sends KSAGA_LOAD_N requests at once to
// KSAGA_LOAD_URL<i>, each with a body of KSAGA_LOAD_SIZE bytes of which it
// holds all but the first 64 KiB back until a line comes on stdin. It
// prints "answered" for each answer, then "result <JSON>" with them all.
func TestAPILoadClient(t *testing.T) {
	base := os.Getenv("KSAGA_LOAD_URL")
	if base == "" {
		t.Skip("run by TestAPIBoundedMemory")
	}
	var n, size int
	fmt.Sscan(os.Getenv("KSAGA_LOAD_N"), &n)
	fmt.Sscan(os.Getenv("KSAGA_LOAD_SIZE"), &size)
	// {"id":"xxx…","weight":0}, exactly size bytes: weight 0 fails
	// parcel's Validate.
	head, tail := `{"id":"`, `","weight":0}`
	body := []byte(head + strings.Repeat("x", size-len(head)-len(tail)) + tail)
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DisableKeepAlives = true
	client := &http.Client{Transport: tr, Timeout: 2 * time.Minute}
	gate := make(chan struct{})
	go func() {
		_, _ = bufio.NewReader(os.Stdin).ReadString('\n')
		close(gate)
	}()
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	answers := make([]loadAnswer, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := &answers[i]
			defer func() {
				mu.Lock()
				out.WriteString("answered\n")
				out.Flush()
				mu.Unlock()
			}()
			req, err := http.NewRequest(http.MethodPost, fmt.Sprintf("%sm-%03d", base, i), &gatedBody{r: bytes.NewReader(body), open: 64 << 10, gate: gate})
			if err != nil {
				a.Err = err.Error()
				return
			}
			req.ContentLength = int64(len(body))
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				a.Err = err.Error()
				return
			}
			defer resp.Body.Close()
			a.Code, a.RetryAfter = resp.StatusCode, resp.Header.Get("Retry-After")
			if a.Body, err = io.ReadAll(resp.Body); err != nil {
				a.Err = err.Error()
			}
		}()
	}
	wg.Wait()
	b, _ := json.Marshal(answers)
	mu.Lock()
	defer mu.Unlock()
	fmt.Fprintf(out, "result %s\n", b)
	out.Flush()
}

func mib(b uint64) float64 { return float64(b) / (1 << 20) }

// scrapeValue returns the value of the series named name (no labels) on
// the daemon's /metrics, or -1.
func scrapeValue(t testing.TB, d *apiDaemon, name string) float64 {
	t.Helper()
	resp, err := http.Get("http://" + d.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			var f float64
			if _, err := fmt.Sscan(v, &f); err == nil {
				return f
			}
		}
	}
	return -1
}
