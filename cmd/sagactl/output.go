package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

// Output formats of -o.
const (
	outTable = "table"
	outJSON  = "json"
	outYAML  = "yaml"
)

// streams are a command's standard streams and what they are connected to.
// Data (tables, JSON, YAML) goes to out alone; progress, prompts, notes and
// errors go to errw, so that "sagactl ... -o json | jq" always parses.
type streams struct {
	in   io.Reader
	out  io.Writer
	errw io.Writer
	// inTerminal is set when in is a terminal: dlq redrive and saga
	// compensate may ask for confirmation there. errTerminal is set when
	// errw is one: the progress bar is drawn there only.
	inTerminal, errTerminal bool
}

// osStreams returns the process's standard streams.
func osStreams() streams {
	return streams{in: os.Stdin, out: os.Stdout, errw: os.Stderr,
		inTerminal: isTerminal(os.Stdin), errTerminal: isTerminal(os.Stderr)}
}

// isTerminal reports whether f is a terminal: a character device that is
// not the null device (which a cron job or "< /dev/null" gives as stdin).
// It needs no ioctl, and so no dependency beyond the standard library.
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	if err != nil || fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	null, err := os.Stat(os.DevNull)
	return err != nil || !os.SameFile(fi, null)
}

// writeData writes v to w as JSON (indented, one trailing newline) or
// YAML. v must marshal to JSON; YAML keeps the JSON's field order.
func writeData(w io.Writer, format string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode the output: %w", err)
	}
	var buf bytes.Buffer
	switch format {
	case outJSON:
		if err := json.Indent(&buf, b, "", "  "); err != nil {
			return fmt.Errorf("encode the output: %w", err)
		}
		buf.WriteByte('\n')
	case outYAML:
		node, err := decodeOrdered(b)
		if err != nil {
			return fmt.Errorf("encode the output: %w", err)
		}
		writeYAML(&buf, node, 0)
	default:
		return fmt.Errorf("output format %q has no data encoding", format)
	}
	_, err = w.Write(buf.Bytes())
	return err
}

// member is one field of a JSON object, in order.
type member struct {
	key   string
	value any
}

// decodeOrdered decodes JSON into nil, bool, json.Number, string, []any
// and []member (objects, their fields in order).
func decodeOrdered(b []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	return decodeValue(dec)
}

func decodeValue(dec *json.Decoder) (any, error) {
	tok, err := dec.Token()
	if err != nil {
		return nil, err
	}
	switch t := tok.(type) {
	case json.Delim:
		switch t {
		case '{':
			obj := []member{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return nil, err
				}
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				obj = append(obj, member{k.(string), v})
			}
			_, err := dec.Token() // '}'
			return obj, err
		case '[':
			arr := []any{}
			for dec.More() {
				v, err := decodeValue(dec)
				if err != nil {
					return nil, err
				}
				arr = append(arr, v)
			}
			_, err := dec.Token() // ']'
			return arr, err
		}
		return nil, errors.New("unexpected delimiter " + t.String())
	default:
		return tok, nil
	}
}

// writeYAML writes node (from decodeOrdered) as block YAML, indented by
// indent spaces.
func writeYAML(w *bytes.Buffer, node any, indent int) {
	pad := strings.Repeat(" ", indent)
	switch n := node.(type) {
	case []member:
		if len(n) == 0 {
			w.WriteString(pad + "{}\n")
			return
		}
		for _, m := range n {
			w.WriteString(pad + yamlScalar(m.key) + ":")
			writeYAMLValue(w, m.value, indent, indent+2)
		}
	case []any:
		if len(n) == 0 {
			w.WriteString(pad + "[]\n")
			return
		}
		for _, item := range n {
			w.WriteString(pad + "-")
			writeYAMLItem(w, item, indent+2)
		}
	default:
		w.WriteString(pad + yamlScalar(node) + "\n")
	}
}

// writeYAMLValue writes the value of a mapping key whose line is written up
// to the colon. A sequence is indented like its key (kubectl's style).
func writeYAMLValue(w *bytes.Buffer, v any, keyIndent, indent int) {
	switch n := v.(type) {
	case []member:
		if len(n) == 0 {
			w.WriteString(" {}\n")
			return
		}
		w.WriteByte('\n')
		writeYAML(w, n, indent)
	case []any:
		if len(n) == 0 {
			w.WriteString(" []\n")
			return
		}
		w.WriteByte('\n')
		writeYAML(w, n, keyIndent)
	default:
		w.WriteString(" " + yamlScalar(v) + "\n")
	}
}

// writeYAMLItem writes a sequence item whose line is written up to the dash.
func writeYAMLItem(w *bytes.Buffer, v any, indent int) {
	switch n := v.(type) {
	case []member:
		if len(n) == 0 {
			w.WriteString(" {}\n")
			return
		}
		// The first field goes on the dash's line, the others under it.
		var rest bytes.Buffer
		writeYAML(&rest, n, indent)
		w.WriteString(" " + strings.TrimPrefix(rest.String(), strings.Repeat(" ", indent)))
	case []any:
		if len(n) == 0 {
			w.WriteString(" []\n")
			return
		}
		w.WriteByte('\n')
		writeYAML(w, n, indent)
	default:
		w.WriteString(" " + yamlScalar(v) + "\n")
	}
}

// plainYAML is what a string may look like to be written unquoted: no
// character YAML gives a meaning, not starting like a number.
var plainYAML = regexp.MustCompile(`^[A-Za-z_/][A-Za-z0-9_./@+-]*( [A-Za-z0-9_./@+-]+)*$`)

// yamlScalar formats a scalar of decodeOrdered. Strings that YAML could
// read as something else are double-quoted, with JSON's escapes (which
// YAML's double-quoted style shares).
func yamlScalar(v any) string {
	switch s := v.(type) {
	case nil:
		return "null"
	case bool:
		if s {
			return "true"
		}
		return "false"
	case json.Number:
		return s.String()
	case string:
		switch strings.ToLower(s) {
		case "y", "n", "yes", "no", "on", "off", "true", "false", "null":
			return quoteJSON(s)
		}
		if plainYAML.MatchString(s) {
			return s
		}
		return quoteJSON(s)
	}
	return quoteJSON(fmt.Sprint(v))
}

func quoteJSON(s string) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(s) // a string always encodes
	return strings.TrimSuffix(buf.String(), "\n")
}

// table writes aligned columns: the header, then the rows. Cells go
// through printable, so a value cannot break the layout.
type table struct {
	tw   *tabwriter.Writer
	rows int
}

func newTable(w io.Writer, header ...string) *table {
	t := &table{tw: tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)}
	fmt.Fprintln(t.tw, strings.Join(header, "\t"))
	return t
}

func (t *table) row(cells ...string) {
	for i, c := range cells {
		cells[i] = printable(c)
	}
	fmt.Fprintln(t.tw, strings.Join(cells, "\t"))
	t.rows++
	if t.rows%1000 == 0 {
		t.tw.Flush() // bound the memory of a long listing; columns may shift
	}
}

func (t *table) flush() error { return t.tw.Flush() }

// plural returns "1 record", "2 records": n and noun, with an s unless n is 1.
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// age formats how long ago t was, as kubectl does: 45s, 12m, 5h, 3d.
func age(now, t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	d := now.Sub(t)
	switch {
	case d < 0:
		return "0s"
	case d < 2*time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < 2*time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// confirm asks question on errw and reads the answer from in: only "y" or
// "yes" (any case) is a yes; an empty line or the end of in is a no.
// Cancelling ctx (Ctrl-C) is a no too: the read is left behind, blocked on
// the terminal, and ends with the process.
func confirm(ctx context.Context, st streams, question string) bool {
	fmt.Fprintf(st.errw, "%s [y/N] ", question)
	answer := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(st.in).ReadString('\n')
		answer <- line
	}()
	var line string
	select {
	case <-ctx.Done():
		fmt.Fprintln(st.errw)
		return false
	case line = <-answer:
	}
	if !strings.HasSuffix(line, "\n") {
		fmt.Fprintln(st.errw) // the end of in: end the prompt's line
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return true
	}
	return false
}

// progress draws a progress bar on a terminal's stderr, once a run has
// lasted a second (a short run shows none), at most ten times a second.
type progress struct {
	w     io.Writer
	on    bool
	label string
	total int
	done  int
	start time.Time
	last  time.Time
	shown bool
	now   func() time.Time
}

func newProgress(st streams, label string, total int) *progress {
	return &progress{w: st.errw, on: st.errTerminal && total > 1, label: label, total: total, start: time.Now(), now: time.Now}
}

// add counts n more done and redraws.
func (p *progress) add(n int) {
	p.done += n
	if !p.on {
		return
	}
	now := p.now()
	if now.Sub(p.start) < time.Second || (p.shown && now.Sub(p.last) < 100*time.Millisecond && p.done < p.total) {
		return
	}
	p.last, p.shown = now, true
	fmt.Fprint(p.w, "\r\x1b[K"+p.line(now))
}

// line renders the bar: label [=====>    ] done/total pct rate ETA.
func (p *progress) line(now time.Time) string {
	const width = 30
	frac := float64(p.done) / float64(max(p.total, 1))
	filled := min(int(frac*width), width)
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	elapsed := now.Sub(p.start).Seconds()
	rate := float64(p.done) / max(elapsed, 0.001)
	eta := "-"
	if rate > 0 && p.done < p.total {
		eta = (time.Duration(float64(p.total-p.done)/rate) * time.Second).Round(time.Second).String()
	}
	return fmt.Sprintf("%s [%s] %d/%d %3.0f%% %.1f/s ETA %s", p.label, bar, p.done, p.total, frac*100, rate, eta)
}

// clear removes the bar, so that other output can be written; the next add
// draws it again.
func (p *progress) clear() {
	if p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
		p.shown = false
	}
}
