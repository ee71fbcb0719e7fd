package console_test

import (
	"context"
	"encoding/json"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ksaga/ksaga/audit"
	"github.com/ksaga/ksaga/message"
	"github.com/ksaga/ksaga/orchestrator"
)

// chromium returns the path of Debian's chromium. Without it the test
// skips, unless CI is set: then it fails (scripts/test-deps.sh installs
// it).
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not on PATH, and CI is set: install it (scripts/test-deps.sh, apt-get install chromium)")
	}
	t.Skip("chromium is not on PATH: install it (apt-get install chromium, or scripts/test-deps.sh) to run the console's browser tests")
	return ""
}

// browser starts a headless chromium for the test.
func browser(t *testing.T) context.Context {
	t.Helper()
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]),
		chromedp.ExecPath(chromium(t)), chromedp.NoSandbox, chromedp.WindowSize(1400, 1000),
		chromedp.Flag("disable-dev-shm-usage", true))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(cancel)
	ctx, cancel2 := chromedp.NewContext(actx)
	t.Cleanup(cancel2)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	return ctx
}

// screenshot saves the page as docs/images/<name>.png when
// KSAGA_SCREENSHOTS is set.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	if os.Getenv("KSAGA_SCREENSHOTS") == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot %s: %v", name, err)
	}
	if err := os.WriteFile(filepath.Join("..", "docs", "images", name+".png"), png, 0o644); err != nil {
		t.Fatal(err)
	}
}

func run(t *testing.T, ctx context.Context, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := chromedp.Do(sctx, steps...); err != nil {
		hctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		html, _ := chromedp.Run(hctx, chromedp.OuterHTML(chromedp.CSS("html")))
		t.Fatalf("%s: %v\npage:\n%s", what, err, html)
	}
}

// text returns the text of the element sel (by CSS selector).
func text(t *testing.T, ctx context.Context, sel string) string {
	t.Helper()
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	s, err := chromedp.Run(sctx, chromedp.Text(chromedp.CSS(sel)))
	if err != nil {
		t.Fatalf("read %s: %v", sel, err)
	}
	return s
}

// TestConsoleInBrowser drives the console in a headless chromium against a
// daemon with sagas completed, compensated, running, and dead-lettered:
// log in, find a saga and read its timeline and its trace link, see a
// payload with <script> as text, redrive a dead letter with a note and
// find its audit record, compensate a running saga and see it end
// SagaCompensated with the operator's note. With KSAGA_SCREENSHOTS=1 it
// saves the overview, a compensated saga's timeline and the DLQ page in
// docs/images.
func TestConsoleInBrowser(t *testing.T) {
	ctx := browser(t)
	began := time.Now()
	d := startConsole(t)
	t.Logf("the daemon is ready after %v", time.Since(began))
	const xss = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`
	d.start(t,
		parcel{ID: "p-1", Weight: 5},
		parcel{ID: "p-2", Weight: 7},
		parcel{ID: "p-heavy", Weight: 5000},
		parcel{ID: "p-broken", Weight: 13},
		parcel{ID: "p-hold-1", Weight: 9, Hold: true},
		parcel{ID: "p-hold-2", Weight: 11, Hold: true},
		parcel{ID: "p-xss", Weight: 3, Note: xss},
		parcel{ID: "p-park", Weight: 4, Inspect: true},
		parcel{ID: "p-bad", Weight: 0},
	)
	d.reply(t, "p-ghost")
	for id, status := range map[string]string{"p-park": message.StatusParked, "p-1": message.StatusCompleted, "p-2": message.StatusCompleted, "p-xss": message.StatusCompleted,
		"p-heavy": message.StatusCompensated, "p-broken": message.StatusCompensated,
		"p-hold-1": message.StatusRunning, "p-hold-2": message.StatusRunning} {
		d.waitStatus(t, id, status, time.Minute)
	}
	t.Logf("the sagas are where the test wants them after %v", time.Since(began))

	// Log in: the login page, then the overview.
	run(t, ctx, "log in",
		chromedp.Navigate(d.base+"/"),
		chromedp.WaitVisible(chromedp.ID("token")),
		chromedp.SendKeys(chromedp.ID("token"), adminToken),
		chromedp.Click(chromedp.ID("login")),
		chromedp.WaitVisible(chromedp.ID("type-parcel")),
	)
	if got := text(t, ctx, "#who"); got != "admin" {
		t.Errorf("logged in as %q, want admin", got)
	}
	// The overview shows the dead letter and the ended sagas once the
	// console's consumers have read them.
	for _, reason := range []string{"retries-exhausted", "invalid", "unknown-saga"} {
		waitFor(t, ctx, d.base+"/", "#type-parcel", reason)
	}
	waitFor(t, ctx, d.base+"/", "#type-parcel", "p-heavy")

	// Find p-1 and read its timeline.
	run(t, ctx, "find p-1",
		chromedp.SendKeys(chromedp.ID("find-id"), "p-1"),
		chromedp.Click(chromedp.ID("find-go")),
		chromedp.WaitVisible(chromedp.ID("timeline")),
	)
	if got := text(t, ctx, "#status"); got != "completed" {
		t.Errorf("p-1's status on its page is %q, want completed", got)
	}
	tl := text(t, ctx, "#timeline")
	for _, want := range []string{"SagaStarted", "StepSucceeded", "weigh", "label", "deliver", "SagaCompleted"} {
		if !strings.Contains(tl, want) {
			t.Errorf("p-1's timeline has no %q:\n%s", want, tl)
		}
	}
	if strings.Contains(d.stateJSON(t, "p-1"), `"history"`) && !strings.Contains(tl, "L-p-1") {
		t.Errorf("p-1's timeline does not show the label's reply data L-p-1:\n%s", tl)
	}
	attr, err := chromedp.Run(ctx, chromedp.AttributeValue(chromedp.ID("trace"), "href"))
	if err != nil {
		t.Fatalf("trace link: %v", err)
	}
	if want := strings.ReplaceAll(traceURL, "{trace_id}", "000000000000000000000000c0ffee00"); attr.Value != want {
		t.Errorf("p-1's trace link is %q, want %q", attr.Value, want)
	}

	// A payload with <script> and an onerror handler is text.
	run(t, ctx, "p-xss", chromedp.Navigate(d.base+"/sagas/parcel/p-xss"), chromedp.WaitVisible(chromedp.ID("data")))
	if got := text(t, ctx, "#data"); !strings.Contains(got, "<script>window.__xss=1</script>") {
		t.Errorf("p-xss's data does not show the script as text:\n%s", got)
	}
	xssRan, err := chromedp.Run(ctx, chromedp.Evaluate[bool](`window.__xss !== undefined`))
	if err != nil {
		t.Fatal(err)
	}
	scripts, err := chromedp.Run(ctx, chromedp.Evaluate[int](`document.querySelectorAll("script, img").length`))
	if err != nil {
		t.Fatal(err)
	}
	if xssRan || scripts != 0 {
		t.Errorf("the saga's data ran as HTML: window.__xss set %v, %d script or img elements", xssRan, scripts)
	}

	// The DLQ page: p-broken's dead letter, then its page with the
	// preview of a redrive, then the redrive with a note.
	run(t, ctx, "DLQ page", chromedp.Navigate(d.base+"/dlq?type=parcel"), chromedp.WaitVisible(chromedp.ID("dlq")))
	if got := text(t, ctx, "#dlq"); !strings.Contains(got, "p-broken") || !strings.Contains(got, "retries-exhausted") {
		t.Fatalf("the DLQ page does not list p-broken's dead letter:\n%s", got)
	}
	screenshot(t, ctx, "console-dlq")
	run(t, ctx, "open the dead letter",
		chromedp.Click(chromedp.Search(`//table[@id="dlq"]//tr[td/a[text()="p-broken"]]/td[1]/a`)),
		chromedp.WaitVisible(chromedp.ID("preview")))
	screenshot(t, ctx, "console-dead-letter")
	if got := text(t, ctx, "#preview"); !strings.Contains(got, "compensated") || !strings.Contains(got, "ksaga-redrive-of") {
		t.Errorf("the redrive's preview does not say what it sends and that the saga is compensated:\n%s", got)
	}
	const redriveNote = "van scale replaced, INC-9"
	run(t, ctx, "redrive",
		chromedp.SendKeys(chromedp.ID("note"), redriveNote),
		chromedp.Click(chromedp.ID("redrive")),
		chromedp.WaitVisible(chromedp.ID("notice")))
	var redrive *audit.Record
	for _, r := range d.records(t, "saga.parcel.audit") {
		var a audit.Record
		if json.Unmarshal(r.Value, &a) == nil && a.Action == message.AuditRedrive {
			redrive = &a
		}
	}
	switch {
	case redrive == nil:
		t.Fatal("no redrive audit record on saga.parcel.audit")
	case redrive.By != "admin" || redrive.Note != redriveNote || redrive.Tool != "parceld-console" || len(redrive.Records) != 1 || redrive.Records[0].SagaID != "p-broken":
		t.Errorf("the redrive's audit record is %+v, want by admin, note %q, tool parceld-console, p-broken's one record", redrive, redriveNote)
	}
	waitFor(t, ctx, d.base+"/sagas/parcel/p-broken", "#timeline", redriveNote)

	// Compensate p-hold-1: the preview, a note, then SagaCompensated.
	run(t, ctx, "p-hold-1", chromedp.Navigate(d.base+"/sagas/parcel/p-hold-1"), chromedp.WaitVisible(chromedp.ID("act-compensate")),
		chromedp.Click(chromedp.ID("act-compensate")), chromedp.WaitVisible(chromedp.ID("preview")))
	if got := text(t, ctx, "#preview"); !strings.Contains(got, "label") || !strings.Contains(got, "weigh") {
		t.Errorf("the compensation's preview does not name the steps it undoes (label, weigh):\n%s", got)
	}
	const compNote = "customer cancelled by phone"
	run(t, ctx, "compensate",
		chromedp.SendKeys(chromedp.ID("note"), compNote),
		chromedp.Click(chromedp.ID("confirm")),
		chromedp.WaitVisible(chromedp.ID("notice")))
	d.waitStatus(t, "p-hold-1", message.StatusCompensated, time.Minute)
	waitFor(t, ctx, d.base+"/sagas/parcel/p-hold-1", "#timeline", "SagaCompensated")
	tl = text(t, ctx, "#timeline")
	for _, want := range []string{"saga-compensate", compNote, "admin", "StepCompensated"} {
		if !strings.Contains(tl, want) {
			t.Errorf("p-hold-1's timeline has no %q:\n%s", want, tl)
		}
	}
	screenshot(t, ctx, "console-compensated")
	var compensated bool
	for _, r := range d.records(t, "saga.parcel.events") {
		var e message.Event
		if json.Unmarshal(r.Value, &e) == nil && e.SagaID == "p-hold-1" && e.Type == message.EventSagaCompensated {
			compensated = true
		}
	}
	if !compensated {
		t.Error("no SagaCompensated event of p-hold-1 on saga.parcel.events")
	}
	var comp *audit.Record
	for _, r := range d.records(t, "saga.parcel.audit") {
		var a audit.Record
		if json.Unmarshal(r.Value, &a) == nil && a.Action == message.AuditCompensate && a.SagaID == "p-hold-1" {
			comp = &a
		}
	}
	if comp == nil || comp.By != "admin" || comp.Note != compNote {
		t.Errorf("p-hold-1's compensate audit record is %+v, want by admin, note %q", comp, compNote)
	}

	// Resume the parked p-park: it goes on, and parks again (the
	// inspector still does not answer).
	run(t, ctx, "p-park", chromedp.Navigate(d.base+"/sagas/parcel/p-park"), chromedp.WaitVisible(chromedp.ID("act-resume")),
		chromedp.Click(chromedp.ID("act-resume")), chromedp.WaitVisible(chromedp.ID("preview")),
		chromedp.SendKeys(chromedp.ID("note"), "inspector back, INC-11"),
		chromedp.Click(chromedp.ID("confirm")), chromedp.WaitVisible(chromedp.ID("notice")))
	waitFor(t, ctx, d.base+"/sagas/parcel/p-park", "#timeline", "SagaResumed")
	if tl := text(t, ctx, "#timeline"); !strings.Contains(tl, "saga-resume") || !strings.Contains(tl, "inspector back, INC-11") {
		t.Errorf("p-park's timeline has no saga-resume with its note:\n%s", tl)
	}

	// The parked list has p-park again (it parked after the resume).
	waitFor(t, ctx, d.base+"/sagas/parcel?list=parked", "#list", "p-park")

	// p-ghost is in no view: its page shows its dead letter.
	waitFor(t, ctx, d.base+"/sagas/parcel/p-ghost", "#timeline", "unknown-saga")
	// The in-flight list has p-hold-2, which waits on its deadline.
	waitFor(t, ctx, d.base+"/sagas/parcel?list=inflight", "#list", "p-hold-2")

	// The lists filtered by step and definition version, through the
	// filter form: p-hold-2 waits at hold, on version 1.
	run(t, ctx, "filter the in-flight list",
		chromedp.Navigate(d.base+"/sagas/parcel?list=inflight"), chromedp.WaitVisible(chromedp.ID("filter")),
		chromedp.SetValue(chromedp.ID("filter-step"), "hold"), chromedp.Click(chromedp.ID("filter-go")),
		chromedp.WaitVisible(chromedp.ID("examined")))
	if got := text(t, ctx, "#list"); !strings.Contains(got, "p-hold-2") {
		t.Errorf("the in-flight list at step hold has no p-hold-2:\n%s", got)
	}
	if got := text(t, ctx, "#examined"); !strings.Contains(got, "saga states from the Redis view") {
		t.Errorf("the filtered list does not say how many sagas it examined: %q", got)
	}
	for _, c := range []struct{ url, sel, id string }{
		{"/sagas/parcel?list=inflight&step=label", "#list", "p-hold-2"},
		{"/sagas/parcel?list=inflight&version=2", "#list", "p-hold-2"},
		{"/sagas/parcel?list=parked&version=2", "#list", "p-park"},
		{"/sagas/parcel?list=stuck", "#list", "p-hold-2"},
	} {
		run(t, ctx, "load "+c.url, chromedp.Navigate(d.base+c.url), chromedp.WaitVisible(chromedp.ID("examined")))
		if got := text(t, ctx, c.sel); strings.Contains(got, c.id) {
			t.Errorf("%s lists %s:\n%s", c.url, c.id, got)
		}
	}
	waitFor(t, ctx, d.base+"/sagas/parcel?list=parked&step=inspect&version=1", "#list", "p-park")
	// The ended list shows the definition version of the sagas the view
	// still has.
	waitFor(t, ctx, d.base+"/sagas/parcel?list=ended&status=completed", "#list", "v1")

	// p-hold-2 stuck: its step started two hours ago, past hold's budget
	// (its reply deadline of 10 minutes times its attempts), and its
	// deadline did not fire. The test rewrites StepStarted in the view,
	// as a saga whose timeout was lost would have it; the engine reads
	// p-hold-2 again only when its deadline comes.
	key := orchestrator.StateKey("parcel", message.HomePartition("p-hold-2", 3), "p-hold-2")
	var st map[string]any
	if err := json.Unmarshal([]byte(d.stateJSON(t, "p-hold-2")), &st); err != nil {
		t.Fatal(err)
	}
	st["step_started_ms"] = time.Now().Add(-2 * time.Hour).UnixMilli()
	raw, _ := json.Marshal(st)
	if err := d.rdb.HSet(context.Background(), key, "state", raw).Err(); err != nil {
		t.Fatal(err)
	}
	run(t, ctx, "the overview's stuck link", chromedp.Navigate(d.base+"/"), chromedp.WaitVisible(chromedp.ID("stuck-parcel")),
		chromedp.Click(chromedp.ID("stuck-parcel")), chromedp.WaitVisible(chromedp.ID("examined")))
	if got := text(t, ctx, "#list"); !strings.Contains(got, "p-hold-2") || !strings.Contains(got, "hold") {
		t.Errorf("the stuck list has no p-hold-2 at hold:\n%s", got)
	}
	screenshot(t, ctx, "console-stuck")
	for _, c := range []string{"/sagas/parcel?list=stuck&step=label", "/sagas/parcel?list=stuck&version=2"} {
		run(t, ctx, "load "+c, chromedp.Navigate(d.base+c), chromedp.WaitVisible(chromedp.ID("examined")))
		if got := text(t, ctx, "#list"); strings.Contains(got, "p-hold-2") {
			t.Errorf("%s lists p-hold-2:\n%s", c, got)
		}
	}
	waitFor(t, ctx, d.base+"/sagas/parcel?list=stuck&step=hold&version=1", "#list", "p-hold-2")

	// The overview, after all that.
	waitFor(t, ctx, d.base+"/", "#type-parcel", "saga-resume")
	screenshot(t, ctx, "console-overview")
}

// waitFor loads url until the text of sel contains want (the console's
// indexes and the engine catch up within seconds).
func waitFor(t *testing.T, ctx context.Context, url, sel, want string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		run(t, ctx, "load "+url, chromedp.Navigate(url), chromedp.WaitVisible(chromedp.CSS(sel)))
		got := text(t, ctx, sel)
		if strings.Contains(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s has no %q after 30s:\n%s", url, sel, want, got)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestConsoleRefuses checks over plain HTTP what a browser cannot be
// made to send: a token without the scope sees no action and is refused
// one (403), and a forged cross-site POST (no CSRF token, a wrong one, a
// foreign Origin, Sec-Fetch-Site cross-site) is refused and sends nothing.
func TestConsoleRefuses(t *testing.T) {
	d := startConsole(t)
	d.start(t, parcel{ID: "p-run", Weight: 9, Hold: true})
	d.waitStatus(t, "p-run", message.StatusRunning, time.Minute)

	// Pages need a session; the login page does not.
	if code, _ := d.do(t, "GET", "/sagas/parcel/p-run", "", "", nil); code != 303 {
		t.Errorf("a page without a session answered %d, want 303 to the login page", code)
	}
	code, body := d.do(t, "POST", "/login", "", "token=not-a-token-0123456789abcdefghijklmnop", map[string]string{"Origin": d.base})
	if code != 401 {
		t.Errorf("a login with a wrong token answered %d, want 401", code)
	}
	if !strings.Contains(body, "not a token") {
		t.Errorf("the login page does not say the token is wrong:\n%s", body)
	}
	if code, _ := d.do(t, "POST", "/login", "", "token="+adminToken, map[string]string{"Origin": "https://evil.example"}); code != 403 {
		t.Errorf("a cross-site login answered %d, want 403", code)
	}

	// Headers of every answer.
	resp, err := noRedirect.Get(d.base + "/login")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || strings.Contains(csp, "unsafe-inline") || !strings.Contains(csp, "frame-ancestors 'none'") {
		t.Errorf("Content-Security-Policy %q", csp)
	}
	if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
		t.Errorf("X-Content-Type-Options %q, want nosniff", got)
	}

	// The viewer may read but not act.
	viewer := d.session(t, viewerToken)
	code, page := d.do(t, "GET", "/sagas/parcel/p-run", viewer, "", nil)
	if code != 200 || strings.Contains(page, "act-compensate") {
		t.Errorf("the viewer's saga page: %d, with a compensate button %v; want 200 without", code, strings.Contains(page, "act-compensate"))
	}
	form := "csrf=" + url.QueryEscape(csrf(t, page)) + "&note=nope&version=1"
	if code, _ := d.do(t, "GET", "/sagas/parcel/p-run/compensate", viewer, "", nil); code != 403 {
		t.Errorf("the viewer's compensate page answered %d, want 403", code)
	}
	if code, _ := d.do(t, "POST", "/sagas/parcel/p-run/compensate", viewer, form, map[string]string{"Origin": d.base}); code != 403 {
		t.Errorf("the viewer's compensate answered %d, want 403", code)
	}

	// Forged POSTs of the admin's session.
	admin := d.session(t, adminToken)
	_, page = d.do(t, "GET", "/sagas/parcel/p-run/compensate", admin, "", nil)
	good := csrf(t, page)
	version := d.state(t, "p-run").Version
	for _, c := range []struct {
		name string
		form string
		hdr  map[string]string
	}{
		{"no CSRF token", "note=forged&version=" + itoa(version), map[string]string{"Origin": d.base}},
		{"a wrong CSRF token", "csrf=" + url.QueryEscape(good[:len(good)-2]+"xx") + "&note=forged&version=" + itoa(version), map[string]string{"Origin": d.base}},
		{"another CSRF token", "csrf=" + url.QueryEscape(csrf(t, mustGet(t, d, viewer))) + "&note=forged&version=" + itoa(version), nil},
		{"a foreign Origin", "csrf=" + url.QueryEscape(good) + "&note=forged&version=" + itoa(version), map[string]string{"Origin": "https://evil.example"}},
		{"Sec-Fetch-Site cross-site", "csrf=" + url.QueryEscape(good) + "&note=forged&version=" + itoa(version), map[string]string{"Sec-Fetch-Site": "cross-site"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if code, body := d.do(t, "POST", "/sagas/parcel/p-run/compensate", admin, c.form, c.hdr); code != 403 {
				t.Errorf("answered %d, want 403:\n%s", code, body)
			}
		})
	}
	time.Sleep(time.Second)
	if s := d.state(t, "p-run"); s.Status != message.StatusRunning {
		t.Errorf("p-run is %s after the forged requests, want running", s.Status)
	}
	for _, r := range d.records(t, "saga.parcel.audit") {
		t.Errorf("an audit record after forged requests only: %s", r.Value)
	}
	// The same request with the session's token and origin is taken.
	if code, body := d.do(t, "POST", "/sagas/parcel/p-run/compensate", admin, "csrf="+url.QueryEscape(good)+"&note=real&version="+itoa(version),
		map[string]string{"Origin": d.base, "Sec-Fetch-Site": "same-origin"}); code != 303 {
		t.Errorf("the admin's compensate answered %d, want 303:\n%s", code, body)
	}
	d.waitStatus(t, "p-run", message.StatusCompensated, time.Minute)

	// Guessing tokens: after ten wrong ones from an address, 429, even
	// for the right one, until a failure's worth of time has passed.
	codes := make([]int, 0, 11)
	for range 11 {
		code, _ := d.do(t, "POST", "/login", "", "token=wrong-token-0123456789abcdefghijklmnopq", map[string]string{"Origin": d.base})
		codes = append(codes, code)
	}
	if codes[len(codes)-1] != 429 {
		t.Errorf("wrong logins answered %v, want 429 at last", codes)
	}
	if code, _ := d.do(t, "POST", "/login", "", "token="+adminToken, map[string]string{"Origin": d.base}); code != 429 {
		t.Errorf("a right token after ten wrong ones answered %d, want 429", code)
	}
}

func itoa(v int64) string { b, _ := json.Marshal(v); return string(b) }

func mustGet(t *testing.T, d *consoleDaemon, cookie string) string {
	t.Helper()
	code, page := d.do(t, "GET", "/", cookie, "", nil)
	if code != 200 {
		t.Fatalf("GET / answered %d", code)
	}
	return page
}
