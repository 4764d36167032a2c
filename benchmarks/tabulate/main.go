// Command tabulate turns the outputs of benchmarks/run.sh into the
// markdown tables of benchmarks/README.md: the end-to-end results (one JSON
// object per line, written by benchmarks/e2e with -bench.out), the
// microbenchmark lines (`go test -bench` output, optionally prefixed by a
// version label), and the targets-vs-achieved table computed from them.
//
//	go run ./benchmarks/tabulate -results results.jsonl -micro micro.txt -history history.txt -state state.txt
//
// It prints nothing it did not read: a figure missing from the inputs is
// shown as "not measured".
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
)

// result mirrors benchmarks/e2e's JSON line.
type result struct {
	Test             string            `json:"test"`
	Broker           string            `json:"broker"`
	Events           int               `json:"events"`
	Partitions       int               `json:"partitions"`
	Instances        int               `json:"instances"`
	WallS            float64           `json:"wall_s"`
	EventsPerS       float64           `json:"events_per_s"`
	CPUNsEvent       float64           `json:"cpu_ns_per_event"`
	MaxRSSMiB        float64           `json:"max_rss_mib"`
	BrokerCPUNsEvent float64           `json:"broker_cpu_ns_per_event"`
	CHCPUNsEvent     float64           `json:"clickhouse_cpu_ns_per_event"`
	Exact            string            `json:"exact"`
	Extra            map[string]string `json:"extra"`
	Load             string            `json:"load"`
	Date             string            `json:"date"`
}

// bench is one benchmark line: name, label and its metrics by unit.
type bench struct {
	label, name string
	metrics     map[string]float64
}

func main() {
	resultsPath := flag.String("results", "", "JSON lines from benchmarks/e2e -bench.out")
	microPath := flag.String("micro", "", "go test -bench output of the current tree")
	historyPath := flag.String("history", "", "go test -bench output lines prefixed by a version label")
	statePath := flag.String("state", "", "BenchmarkStateSize output")
	flag.Parse()
	if err := run(os.Stdout, *resultsPath, *microPath, *historyPath, *statePath); err != nil {
		fmt.Fprintln(os.Stderr, "tabulate:", err)
		os.Exit(1)
	}
}

func run(w io.Writer, resultsPath, microPath, historyPath, statePath string) error {
	results, err := readResults(resultsPath)
	if err != nil {
		return err
	}
	micro, err := readBench(microPath, false)
	if err != nil {
		return err
	}
	history, err := readBench(historyPath, true)
	if err != nil {
		return err
	}
	state, err := readBench(statePath, false)
	if err != nil {
		return err
	}
	writeTargets(w, results, micro, state)
	writeMicro(w, micro, history, state)
	writeResults(w, results)
	return nil
}

func readResults(path string) ([]result, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []result
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.TrimSpace(sc.Text()) == "" {
			continue
		}
		var r result
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		out = append(out, r)
	}
	return out, sc.Err()
}

// readBench reads `BenchmarkX-2  N  v unit  v unit …` lines; with labelled,
// each line starts with a label word.
func readBench(path string, labelled bool) ([]bench, error) {
	if path == "" {
		return nil, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []bench
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Fields(sc.Text())
		var b bench
		if labelled && len(fs) > 0 {
			b.label, fs = fs[0], fs[1:]
		}
		if len(fs) < 2 || !strings.HasPrefix(fs[0], "Benchmark") {
			continue
		}
		b.name = fs[0]
		if i := strings.LastIndexByte(b.name, '-'); i > 0 {
			b.name = b.name[:i]
		}
		b.metrics = map[string]float64{}
		for i := 2; i+1 < len(fs); i += 2 {
			v, err := strconv.ParseFloat(fs[i], 64)
			if err != nil {
				continue
			}
			b.metrics[fs[i+1]] = v
		}
		out = append(out, b)
	}
	return out, sc.Err()
}

func find(bs []bench, name string) (bench, bool) {
	for _, b := range bs {
		if b.name == name {
			return b, true
		}
	}
	return bench{}, false
}

func pick(rs []result, test, broker string, match func(result) bool) []result {
	var out []result
	for _, r := range rs {
		if r.Test == test && (broker == "" || r.Broker == broker) && (match == nil || match(r)) {
			out = append(out, r)
		}
	}
	return out
}

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**not met**"
}

const notMeasured = "not measured"

func writeTargets(w io.Writer, rs []result, micro, state []bench) {
	fmt.Fprintln(w, "### Targets vs achieved")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| target | achieved (this run) | load (1-min, start→end) | verdict |")
	fmt.Fprintln(w, "|---|---|---|---|")
	if b, ok := find(micro, "BenchmarkDecodeValidateAggregate"); ok {
		ns, allocs := b.metrics["cpu-ns/event"], b.metrics["allocs/op"]
		fmt.Fprintf(w, "| decode+validate+aggregate ≤ 500 ns/event, 0 allocs | %.0f CPU-ns/event (%.0f wall-ns), %.0f allocs/op (%.3f allocs/event incl. Drain) | see micro.txt | %s |\n",
			ns, b.metrics["ns/event"], allocs, b.metrics["allocs/event"], verdict(ns <= 500 && allocs == 0))
	} else {
		fmt.Fprintf(w, "| decode+validate+aggregate ≤ 500 ns/event, 0 allocs | %s | | |\n", notMeasured)
	}
	if b, ok := find(micro, "BenchmarkDecode"); ok {
		fmt.Fprintf(w, "| (decode+validate alone, ingest/decode) | %.0f ns/event, %.0f allocs/op | | |\n", b.metrics["ns/event"], b.metrics["allocs/op"])
	}
	for _, r := range pick(rs, "e2e", "", nil) {
		fmt.Fprintf(w, "| e2e CPU ≤ 1000 ns/event (%s) | %.0f ns/event (usagepipe process; + ClickHouse %.0f, broker %.0f) | %s | %s |\n",
			r.Broker, r.CPUNsEvent, r.CHCPUNsEvent, r.BrokerCPUNsEvent, r.Load, verdict(r.CPUNsEvent <= 1000))
	}
	for _, r := range pick(rs, "peer", "", nil) {
		ratio, _ := strconv.ParseFloat(r.Extra["peer_over_usagepipe_wall"], 64)
		fmt.Fprintf(w, "| ≥ 5× the peer (%s, %s) | peer %.2f s / usagepipe %s s = %.2f× | %s | %s |\n",
			r.Broker, r.Extra["peer_config"], r.WallS, r.Extra["usagepipe_wall_s"], ratio, r.Load, verdict(ratio >= 5))
	}
	for _, r := range pick(rs, "e2e", "", nil) {
		fmt.Fprintf(w, "| ≤ 1 GiB RSS, %d events, defaults (%s) | %.0f MiB | %s | %s |\n", r.Events, r.Broker, r.MaxRSSMiB, r.Load, verdict(r.MaxRSSMiB <= 1024))
	}
	for _, r := range pick(rs, "memory", "", func(r result) bool { return strings.HasPrefix(r.Extra["variant"], "GOMEMLIMIT") }) {
		fmt.Fprintf(w, "| ≤ 1 GiB RSS, %d events, %s (%s) | %.0f MiB (CPU ×%s vs defaults) | %s | %s |\n",
			r.Events, r.Extra["variant"], r.Broker, r.MaxRSSMiB, r.Extra["cpu_vs_defaults"], r.Load, verdict(r.MaxRSSMiB <= 1024))
	}
	for _, r := range pick(rs, "latency", "", nil) {
		p99, _ := strconv.ParseFloat(r.Extra["p99_s"], 64)
		fmt.Fprintf(w, "| p99 event delay ≤ 5 s at %s/s (%s) | p50 %s s, p99 %s s (%.0f/s held for %.0f s; %s of events ≤ 5 s) | %s | %s |\n",
			r.Extra["target_rate"], r.Broker, r.Extra["p50_s"], r.Extra["p99_s"], r.EventsPerS, r.WallS, pct(r.Extra["share_le_5s"]), r.Load, verdict(p99 <= 5 && !math.IsNaN(p99)))
	}
	fmt.Fprintln(w)
}

func pct(s string) string {
	v, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return s
	}
	return fmt.Sprintf("%.2f%%", 100*v)
}

func writeMicro(w io.Writer, micro, history, state []bench) {
	fmt.Fprintln(w, "### Microbenchmarks")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| benchmark | version | wall ns/event | CPU ns/event | B/event | allocs/event |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, b := range micro {
		fmt.Fprintf(w, "| %s | this run's code | %s | %s | %s | %s |\n", b.name, num(b.metrics, "ns/event", "ns/op"), num(b.metrics, "cpu-ns/event"), num(b.metrics, "B/event", "B/op"), num(b.metrics, "allocs/event", "allocs/op"))
	}
	// History: the median of each (label, benchmark) over its repeats.
	type key struct{ label, name string }
	groups := map[key][]bench{}
	var order []key
	for _, b := range history {
		k := key{b.label, b.name}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], b)
	}
	for _, k := range order {
		bs := groups[k]
		med := func(units ...string) string {
			var vs []float64
			for _, b := range bs {
				for _, u := range units {
					if v, ok := b.metrics[u]; ok {
						vs = append(vs, v)
						break
					}
				}
			}
			if len(vs) == 0 {
				return "–"
			}
			sort.Float64s(vs)
			return format(vs[len(vs)/2])
		}
		fmt.Fprintf(w, "| %s | %s (median of %d) | %s | %s | %s | %s |\n", k.name, k.label, len(bs), med("ns/event", "ns/op"), med("cpu-ns/event"), med("B/event", "B/op"), med("allocs/event", "allocs/op"))
	}
	if b, ok := find(state, "BenchmarkStateSize"); ok {
		fmt.Fprintln(w)
		fmt.Fprintf(w, "State kept between flushes (BenchmarkStateSize, every allocation sampled): **%.0f B per active user**, **%.0f B per active account**, **%.1f B per event ID** in the dedup window; %.0f MiB in all after %s.\n",
			b.metrics["B/user"], b.metrics["B/account"], b.metrics["B/event-id"], b.metrics["MiB-total"], "the -state.events records")
	}
	fmt.Fprintln(w)
}

func num(m map[string]float64, units ...string) string {
	for _, u := range units {
		if v, ok := m[u]; ok {
			return format(v)
		}
	}
	return "–"
}

func format(v float64) string {
	switch {
	case v == 0:
		return "0"
	case math.Abs(v) < 1:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case math.Abs(v) < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func writeResults(w io.Writer, rs []result) {
	fmt.Fprintln(w, "### End to end")
	fmt.Fprintln(w)
	fmt.Fprintln(w, "| test | broker | events | partitions × instances | variant | wall s | events/s | CPU ns/event | peak RSS MiB | broker CPU ns/event | ClickHouse CPU ns/event | load | notes |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range rs {
		variant, notes := "", []string{}
		switch r.Test {
		case "peer":
			variant = r.Extra["peer_config"]
			notes = append(notes, "peer/usagepipe wall "+r.Extra["peer_over_usagepipe_wall"]+"×", "first rows after "+r.Extra["first_rows_s"]+" s", r.Exact)
		case "e2e":
			notes = append(notes, "exact: "+r.Exact)
			if v := r.Extra["rss_timeline"]; v != "" {
				notes = append(notes, "RSS "+v)
			}
		case "memory":
			variant = r.Extra["variant"]
			if v := r.Extra["peak_rss_mib_first_half"]; v != "" {
				notes = append(notes, fmt.Sprintf("peak RSS while ≤ half consumed %s MiB, whole %s MiB; Go heap in use %s → %s MiB; the added event IDs at ~50 B: %s MiB",
					v, r.Extra["peak_rss_mib_whole"], r.Extra["peak_heap_inuse_mib_first"], r.Extra["peak_heap_inuse_mib_whole"], r.Extra["dedup_growth_mib_at_50B_id"]))
			}
			if v := r.Extra["cpu_vs_defaults"]; v != "" {
				notes = append(notes, "CPU ×"+v+", RSS ×"+r.Extra["rss_vs_defaults"]+" vs defaults")
			}
		case "latency":
			variant = r.Extra["target_rate"] + "/s paced"
			notes = append(notes, fmt.Sprintf("delay p50 %s s, p99 %s s, p99.9 %s s (steady %s s); whole run p50 %s, p99 %s; usagepipe %s cores, ClickHouse %s cores; max lag %s",
				r.Extra["p50_s"], r.Extra["p99_s"], r.Extra["p999_s"], r.Extra["steady_window_s"], r.Extra["p50_s_whole_run"], r.Extra["p99_s_whole_run"], r.Extra["steady_cpu_cores"], r.Extra["steady_clickhouse_cores"], r.Extra["max_lag_records"]))
		case "scale":
			notes = append(notes, r.Extra["processes"])
			if r.Exact != "not checked" {
				notes = append(notes, "exact: "+r.Exact)
			}
		}
		pi := fmt.Sprintf("%d × %d", r.Partitions, max(r.Instances, 1))
		if r.Test == "peer" {
			pi = fmt.Sprintf("%d × peer", r.Partitions)
		}
		fmt.Fprintf(w, "| %s | %s | %d | %s | %s | %.2f | %.0f | %.0f | %.0f | %s | %s | %s | %s |\n",
			r.Test, r.Broker, r.Events, pi, variant, r.WallS, r.EventsPerS, r.CPUNsEvent, r.MaxRSSMiB,
			orDash(r.BrokerCPUNsEvent), orDash(r.CHCPUNsEvent), r.Load, strings.Join(notes, "; "))
	}
	fmt.Fprintln(w)
}

func orDash(v float64) string {
	if v == 0 {
		return "–"
	}
	return fmt.Sprintf("%.0f", v)
}
