package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"
)

// What the faults that aim at a window count, for the summary (tally).
const (
	statRollbacks  = "rollbacks"
	statLanded     = "landed in window"
	statRebuilds   = "partition rebuilds"
	statDeleted    = "state keys deleted"
	statEvicted    = "keys evicted"
	statResumed    = "resumed"
	statResumedMs  = "slowest resume (ms)"
	statNotResumed = "did not resume"
	// What coupon-park counts: the sagas that parked, and how their
	// parkings were resolved.
	statParked          = "parked"
	statParkResumed     = "resumed by a Resume"
	statParkCompensated = "compensated while parked"
	statParkLateReply   = "resumed by a late reply"
	statParkUnresolved  = "never resolved"
)

// statOrder is the order of the stats in the summary.
var statOrder = []string{statRollbacks, statLanded, statRebuilds, statDeleted, statEvicted, statResumed, statResumedMs, statNotResumed,
	statParked, statParkResumed, statParkCompensated, statParkLateReply, statParkUnresolved}

// tally adds n to what faults of kind counted under stat. statResumedMs
// keeps the largest value instead, and counts it under statResumed.
func (h *harness) tally(kind, stat string, n int) {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	if h.stats == nil {
		h.stats = make(map[string]map[string]int)
	}
	if h.stats[kind] == nil {
		h.stats[kind] = make(map[string]int)
	}
	if stat == statResumedMs {
		h.stats[kind][stat] = max(h.stats[kind][stat], n)
		h.stats[kind][statResumed]++
		return
	}
	h.stats[kind][stat] += n
}

// statsOf returns what faults of kind counted, in statOrder, as
// "stat n, stat n"; "" when they counted nothing.
func (h *harness) statsOf(kind string) string {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	m := h.stats[kind]
	var parts []string
	for _, s := range statOrder {
		if n, ok := m[s]; ok {
			parts = append(parts, fmt.Sprintf("%s: %d", s, n))
		}
	}
	return strings.Join(parts, ", ")
}

// stat returns one count of faults of kind.
func (h *harness) stat(kind, stat string) int {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	return h.stats[kind][stat]
}

// anomalyf records an anomaly that the run itself found while it ran (the
// checker finds the others after the drain): it fails the run.
func (h *harness) anomalyf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	h.faultf("ANOMALY %s", msg)
	h.outMu.Lock()
	defer h.outMu.Unlock()
	h.runAnomalies = append(h.runAnomalies, msg)
}

// anomalies returns the anomalies the run found while it ran.
func (h *harness) anomalies() []string {
	h.outMu.Lock()
	defer h.outMu.Unlock()
	return slices.Clone(h.runAnomalies)
}

// engineProcs returns the processes that run engines: the two sagads and
// the local-first saga's daemons.
func (h *harness) engineProcs() []*proc {
	ps := []*proc{h.engines[0], h.engines[1]}
	for _, p := range h.locals {
		if p != nil {
			ps = append(ps, p)
		}
	}
	return ps
}

// logMark is where the engines' logs ended at some time: the size of each.
type logMark map[*proc]int64

// engineLogMark returns where the engines' logs end now.
func (h *harness) engineLogMark() logMark {
	m := make(logMark)
	for _, p := range h.engineProcs() {
		if fi, err := os.Stat(p.logPath); err == nil {
			m[p] = fi.Size()
		}
	}
	return m
}

// countSince counts the lines of the engines' logs written after mark that
// contain each of needles. A log is only ever appended to (each start of a
// process appends), so what follows the mark is what was written since.
func (h *harness) countSince(mark logMark, needles ...string) map[string]int {
	n := make(map[string]int)
	for _, p := range h.engineProcs() {
		f, err := os.Open(p.logPath)
		if err != nil {
			continue
		}
		if _, err := f.Seek(mark[p], io.SeekStart); err != nil {
			f.Close()
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			line := sc.Text()
			for _, s := range needles {
				if strings.Contains(line, s) {
					n[s]++
				}
			}
		}
		f.Close()
	}
	return n
}

// procExit is an exit of a process that the harness did not cause.
type procExit struct {
	name   string
	at     time.Time
	status string
}

// exitsBetween returns the exits of ps of their own between from and to.
func (h *harness) exitsBetween(ps []*proc, from, to time.Time) []procExit {
	var out []procExit
	for _, p := range ps {
		p.mu.Lock()
		for _, e := range p.exits {
			if !e.at.Before(from) && !e.at.After(to) {
				out = append(out, procExit{name: p.name, at: e.at, status: e.status})
			}
		}
		p.mu.Unlock()
	}
	return out
}
