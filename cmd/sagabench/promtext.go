package main

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"
)

// sample is one series of a Prometheus text exposition.
type sample struct {
	name   string
	labels map[string]string
	value  float64
}

// metricSet is a scrape of /metrics.
type metricSet []sample

// parseMetrics reads the Prometheus text format: lines of
// name{label="value",…} value, and # comments. Label values with escaped
// quotes are not expected in sagad's metrics and are kept escaped.
func parseMetrics(r io.Reader) (metricSet, error) {
	var out metricSet
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' {
			continue
		}
		var s sample
		rest := line
		if i := strings.IndexByte(line, '{'); i >= 0 {
			j := strings.LastIndexByte(line, '}')
			if j < i {
				return nil, fmt.Errorf("metrics line %q: unbalanced braces", line)
			}
			s.name, s.labels = line[:i], parseLabels(line[i+1:j])
			rest = line[j+1:]
		} else {
			name, r, ok := strings.Cut(line, " ")
			if !ok {
				return nil, fmt.Errorf("metrics line %q: no value", line)
			}
			s.name, rest = name, r
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			return nil, fmt.Errorf("metrics line %q: no value", line)
		}
		v, err := strconv.ParseFloat(fields[0], 64)
		if err != nil {
			return nil, fmt.Errorf("metrics line %q: %w", line, err)
		}
		s.value = v
		out = append(out, s)
	}
	return out, sc.Err()
}

func parseLabels(s string) map[string]string {
	m := make(map[string]string)
	for s != "" {
		k, rest, ok := strings.Cut(s, "=\"")
		if !ok {
			break
		}
		end := 0
		for end < len(rest) && (rest[end] != '"' || (end > 0 && rest[end-1] == '\\')) {
			end++
		}
		m[strings.TrimSpace(k)] = rest[:end]
		s = strings.TrimPrefix(rest[min(end+1, len(rest)):], ",")
	}
	return m
}

// sum adds the values of the series named name whose labels include all of
// match ("key", "value", …).
func (ms metricSet) sum(name string, match ...string) float64 {
	var total float64
	for _, s := range ms {
		if s.name != name || !s.has(match) {
			continue
		}
		total += s.value
	}
	return total
}

// byLabel adds the values of the series named name by the value of label.
func (ms metricSet) byLabel(name, label string, match ...string) map[string]float64 {
	out := make(map[string]float64)
	for _, s := range ms {
		if s.name == name && s.has(match) {
			out[s.labels[label]] += s.value
		}
	}
	return out
}

func (s sample) has(match []string) bool {
	for i := 0; i+1 < len(match); i += 2 {
		if s.labels[match[i]] != match[i+1] {
			return false
		}
	}
	return true
}
