package main

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestWriteYAML(t *testing.T) {
	type inner struct {
		N    int      `json:"n"`
		Tags []string `json:"tags"`
	}
	v := []any{
		map[string]any{"only": true},
		struct {
			Name   string         `json:"name"`
			Pos    string         `json:"pos"`
			Empty  []int          `json:"empty"`
			None   map[string]int `json:"none"`
			Nested inner          `json:"nested"`
			List   []inner        `json:"list"`
			Odd    string         `json:"odd"`
			Word   string         `json:"word"`
			Null   *int           `json:"null"`
		}{"o-1", "0:4", []int{}, map[string]int{}, inner{1, []string{"a", "b c"}}, []inner{{2, nil}}, "line\nbreak: \"x\"", "yes", nil},
	}
	want := `- only: true
- name: o-1
  pos: "0:4"
  empty: []
  none: {}
  nested:
    "n": 1
    tags:
    - a
    - b c
  list:
  - "n": 2
    tags: null
  odd: "line\nbreak: \"x\""
  word: "yes"
  "null": null
`
	var buf bytes.Buffer
	if err := writeData(&buf, outYAML, v); err != nil {
		t.Fatal(err)
	}
	if buf.String() != want {
		t.Errorf("yaml:\ngot\n%s\nwant\n%s", buf.String(), want)
	}
	buf.Reset()
	if err := writeData(&buf, outJSON, []int{}); err != nil || buf.String() != "[]\n" {
		t.Errorf("json of an empty list: got %q, %v", buf.String(), err)
	}
}

func TestParseRate(t *testing.T) {
	tests := []struct {
		in   string
		want float64
		bad  bool
	}{
		{"50", 50, false}, {"50/s", 50, false}, {"0.5/s", 0.5, false}, {"600/m", 10, false}, {"3600/h", 1, false},
		{"0", 0, true}, {"-1", 0, true}, {"fast", 0, true}, {"5/d", 0, true}, {"Inf", 0, true},
	}
	for _, tt := range tests {
		got, err := parseRate(tt.in)
		if (err != nil) != tt.bad || got != tt.want {
			t.Errorf("parseRate(%q): got %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2025, 3, 10, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{"90m", now.Add(-90 * time.Minute), false},
		{"3d", now.Add(-72 * time.Hour), false},
		{"2025-03-01T10:00:00Z", failedAt, false},
		{"2025-03-01T12:00:00+02:00", failedAt, false},
		{"2025-03-01T10:00:00", failedAt, false},
		{"2025-03-01", failedAt.Add(-10 * time.Hour), false},
		{"-5m", time.Time{}, true},
		{"soon", time.Time{}, true},
	}
	for _, tt := range tests {
		got, err := parseWhen(tt.in, now)
		if (err != nil) != tt.bad || !got.Equal(tt.want) {
			t.Errorf("parseWhen(%q): got %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.bad)
		}
	}
}

// TestProgress draws the bar on a terminal only, from the first second on.
func TestProgress(t *testing.T) {
	var buf bytes.Buffer
	now := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	p := &progress{w: &buf, on: true, label: "redrive", total: 10, start: now, now: func() time.Time { return now }}
	p.add(2)
	if buf.Len() != 0 {
		t.Errorf("progress before a second: got %q, want nothing", buf.String())
	}
	now = now.Add(2 * time.Second)
	p.add(2)
	want := "\r\x1b[Kredrive [============>                 ] 4/10  40% 2.0/s ETA 3s"
	if buf.String() != want {
		t.Errorf("progress:\ngot  %q\nwant %q", buf.String(), want)
	}
	p.clear()
	if !strings.HasSuffix(buf.String(), "\r\x1b[K") {
		t.Errorf("clear: got %q", buf.String())
	}
	off := newProgress(streams{errw: &buf}, "redrive", 10)
	if off.on {
		t.Errorf("progress on a stderr that is not a terminal: on, want off")
	}
}

func TestAge(t *testing.T) {
	now := time.Date(2025, 3, 1, 0, 0, 0, 0, time.UTC)
	for d, want := range map[time.Duration]string{30 * time.Second: "30s", 5 * time.Minute: "5m", 3 * time.Hour: "3h", 50 * time.Hour: "2d"} {
		if got := age(now, now.Add(-d)); got != want {
			t.Errorf("age %s: got %q, want %q", d, got, want)
		}
	}
}
