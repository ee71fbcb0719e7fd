package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"
)

// machine describes the machine for the report.
func machine() machineInfo {
	m := machineInfo{cpus: runtime.NumCPU(), model: "unknown CPU", goVersion: runtime.Version()}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return m
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			m.model = strings.TrimSpace(v)
			break
		}
	}
	return m
}

// printTable prints the scenarios' table and the notes under it.
func (b *bench) printTable(rows []row) {
	header := []string{"scenario", "sagas", "sagas/s", "inbox rec/s", "ratio", "txn/s", "rec/txn", "p50", "p99", "max", "peak RSS", "redis rt/txn"}
	cells := [][]string{header}
	for _, r := range rows {
		c := []string{r.name, "-", "-", count(r.inboxPerSec), fmt.Sprintf("%.2f", r.ratio), count(r.txnPerSec), fmt.Sprintf("%.1f", r.recsPerTxn), "-", "-", "-", "-", fmt.Sprintf("%.2f", r.redisRT)}
		if r.engineOnly {
			c[1], c[10] = count(float64(r.sagas)), mib(r.peakRSS)
		} else if !r.bare {
			c[1], c[2] = count(float64(r.sagas)), count(r.sagasPerSec)
			c[7], c[8], c[9] = dur(r.p50), dur(r.p99), dur(r.max)
			c[10] = mib(r.peakRSS)
			if r.ordersRT > 0 {
				c[11] += fmt.Sprintf(" (+%.2f orders)", r.ordersRT)
			}
		}
		cells = append(cells, c)
	}
	writeTable(b.out, cells)

	fmt.Fprintf(b.out, "\nratio: inbox rec/s over the bare loop's; latency: start request produced (fixed rate: its scheduled time)\n")
	fmt.Fprintf(b.out, "to the terminal event read on %s (read_committed); peak RSS: the engine's VmHWM;\n", "saga.order.events")
	fmt.Fprintf(b.out, "redis rt/txn: the engine's Redis round trips per committed transaction (+ the orders store's, its local step).\n")
	if o := b.engineOutput; o.inbox > 0 && b.bareOut.inbox > 0 {
		var recs, byts float64
		for t, n := range o.records {
			recs += n
			byts += o.bytes[t]
		}
		fmt.Fprintf(b.out, "output per inbox record: engine %.2f records of %.0f B; bare loop %.2f records of %.0f B\n",
			recs/o.inbox, byts/recs, b.bareOut.records/b.bareOut.inbox, b.bareOut.bytes/b.bareOut.records)
	}
	fmt.Fprintln(b.out, "\nCPU used (cores; sagabench includes the in-process kfake):")
	cpu := [][]string{{"scenario", "engine", "participants", "redis", "sagabench", "total", "aborted txns"}}
	for _, r := range rows {
		if !r.cpu.ok {
			continue
		}
		c := r.cpu
		cpu = append(cpu, []string{r.name, fmt.Sprintf("%.2f", c.engine), fmt.Sprintf("%.2f", c.parts), fmt.Sprintf("%.2f", c.redis),
			fmt.Sprintf("%.2f", c.bench), fmt.Sprintf("%.2f", c.engine+c.parts+c.redis+c.bench), fmt.Sprint(r.aborted)})
	}
	writeTable(b.out, cpu)
	writeTable(b.out, cpuPerSaga(rows))
	if phases := txnPhases(rows); len(phases) > 1 {
		fmt.Fprintln(b.out, "\nEngine transactions (ms, mean per committed transaction; busy: the share of the time the loop spent in them):")
		writeTable(b.out, phases)
	}
	if hops := hopTable(rows); len(hops) > 1 {
		fmt.Fprintln(b.out, "\nWhere a saga's time goes (ms per saga, mean; an engine hop: an inbox record produced to the engine's first record")
		fmt.Fprintln(b.out, "produced for it; a participant hop: the engine's last record before a reply to the reply produced; record timestamps):")
		writeTable(b.out, hops)
	}
	for _, r := range rows {
		for _, w := range r.warnings {
			fmt.Fprintf(b.out, "WARNING: %s\n", w)
		}
	}
	fmt.Fprintln(b.out)
}

// txnPhases splits the engine's committed transactions into their phases.
// Rows without them (a sagad from before ksaga_transaction_phase_seconds)
// are left out.
func txnPhases(rows []row) [][]string {
	cells := [][]string{append(append([]string{"scenario"}, phaseNames[:]...), "total", "busy")}
	for _, r := range rows {
		if r.bare || r.txnPerSec == 0 || r.phases == [len(phaseNames)]float64{} {
			continue
		}
		line := []string{r.name}
		total := 0.0
		for _, p := range r.phases {
			line = append(line, fmt.Sprintf("%.2f", p*1e3))
			total += p
		}
		cells = append(cells, append(line, fmt.Sprintf("%.2f", total*1e3), fmt.Sprintf("%.0f%%", 100*total*r.txnPerSec)))
	}
	return cells
}

// writeTable writes cells as aligned columns: the first left-aligned, the
// others right-aligned.
func writeTable(w io.Writer, cells [][]string) {
	widths := make([]int, len(cells[0]))
	for _, row := range cells {
		for i, c := range row {
			widths[i] = max(widths[i], len(c))
		}
	}
	for _, row := range cells {
		var sb strings.Builder
		for i, c := range row {
			if i == 0 {
				fmt.Fprintf(&sb, "%-*s", widths[i], c)
				continue
			}
			fmt.Fprintf(&sb, "  %*s", widths[i], c)
		}
		fmt.Fprintln(w, strings.TrimRight(sb.String(), " "))
	}
}

// count formats a count or rate with thousands separators.
func count(v float64) string {
	n := int64(v + 0.5)
	s := fmt.Sprint(n)
	if n < 1000 {
		return s
	}
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

// dur formats a latency.
func dur(d time.Duration) string {
	switch {
	case d <= 0:
		return "-"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < time.Second:
		return fmt.Sprintf("%.0f ms", float64(d)/float64(time.Millisecond))
	}
	return fmt.Sprintf("%.2f s", d.Seconds())
}

// mib formats bytes in MiB.
func mib(n uint64) string {
	if n == 0 {
		return "-"
	}
	return fmt.Sprintf("%.0f MiB", float64(n)/(1<<20))
}

// cpuPerSaga is the CPU one saga costs, per process, in microseconds: cores
// divided by sagas per second. The engine-alone row counts a saga as its four
// inbox records (a start and three replies). sagabench holds the in-process
// broker (kfake) and the load generator.
func cpuPerSaga(rows []row) [][]string {
	cells := [][]string{{"CPU per saga (µs)", "engine", "participants", "redis", "broker+load", "total"}}
	for _, r := range rows {
		perSec := r.sagasPerSec
		if r.engineOnly {
			perSec = r.inboxPerSec / 4
		}
		if !r.cpu.ok || perSec <= 0 {
			continue
		}
		c := r.cpu
		us := func(cores float64) string { return fmt.Sprintf("%.0f", cores*1e6/perSec) }
		cells = append(cells, []string{r.name, us(c.engine), us(c.parts), us(c.redis), us(c.bench), us(c.engine + c.parts + c.redis + c.bench)})
	}
	return cells
}
