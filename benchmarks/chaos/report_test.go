package chaos

import (
	"fmt"
	"os"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/usagepipe/usagepipe/schema"
)

// figures are one broker run's results.
type figures struct {
	broker     string
	clickhouse string // "server" or "3-node cluster"

	records, chunks, resends       int
	accepted, duplicates, rejected int

	kills, killsInFlush, killsInFlushConfirmed, killsAfterFlush int
	starts, terms, zombies, incarnations                        int
	outages                                                     int
	outageKinds                                                 []string // "server", "replica", "shard"
	outageDown, outageReady                                     []time.Duration
	outageFlushes                                               [][2]float64 // flushes succeeded, failed while down
	outage503                                                   [][2]int     // instances that answered 503 while down, of those alive
	faultWindows                                                int
	faultFetch, faultCommit, faultProduce, joinRewrites         int64
	zombieFlushes, zombieRows                                   float64

	rollupDiffs                       int
	verifyDiffs                       int
	phys                              rowStats
	naiveDiff, naiveNowDiff, idemDiff int
	ncSumDiff, ncRepDiff              int
	ncReplayed                        uint64

	worstFlushRecovery, worstLagRecovery time.Duration
	recoveryUnmeasured                   int
	replayedTotal, replayedMax           float64
	rowsWritten                          float64

	maxStall    time.Duration // longest time a live owner went without a flush while data flowed (outside outages and zombie pauses)
	maxStallWho string
	slowestTerm time.Duration // slowest clean exit after SIGTERM

	dlqRecords, dlqDuplicates int
	catchUp, wall             time.Duration
}

// diff counts differences per column.
type diff struct {
	cols           map[string]int
	missing, extra int
	example        string
}

func (d diff) total() int {
	n := d.missing + d.extra
	for _, c := range d.cols {
		n += c
	}
	return n
}

func (d diff) String() string {
	if d.total() == 0 {
		return "none"
	}
	var cols []string
	for c, n := range d.cols {
		cols = append(cols, fmt.Sprintf("%s:%d", c, n))
	}
	sort.Strings(cols)
	return fmt.Sprintf("%d rows missing, %d extra, differing cells by column %v; e.g. %s", d.missing, d.extra, cols, d.example)
}

func diffRollups(got, want []schema.Rollup) diff {
	d := diff{cols: map[string]int{}}
	key := func(r schema.Rollup) string { return qkey(r.AccountID, r.QuarterStart) }
	g := map[string]schema.Rollup{}
	for _, r := range got {
		g[key(r)] = r
	}
	seen := map[string]bool{}
	for _, w := range want {
		k := key(w)
		seen[k] = true
		r, ok := g[k]
		if !ok {
			d.missing++
			if d.example == "" {
				d.example = fmt.Sprintf("missing %+v", w)
			}
			continue
		}
		cells := map[string]bool{
			"quarter_end":           r.QuarterEnd.Equal(w.QuarterEnd),
			"quarter":               r.Quarter == w.Quarter,
			"seats_purchased":       r.SeatsPurchased == w.SeatsPurchased,
			"seats_assigned":        r.SeatsAssigned == w.SeatsAssigned,
			"seat_utilization":      r.SeatUtilization == w.SeatUtilization,
			"active_users":          r.ActiveUsers == w.ActiveUsers,
			"active_assigned_users": r.ActiveAssignedUsers == w.ActiveAssignedUsers,
			"activation_rate":       r.ActivationRate == w.ActivationRate,
			"logins":                r.Logins == w.Logins,
			"feature_events":        r.FeatureEvents == w.FeatureEvents,
			"features_used":         r.FeaturesUsed == w.FeaturesUsed,
			"last_activity_at":      r.LastActivityAt.Equal(w.LastActivityAt),
		}
		for c, ok := range cells {
			if !ok {
				d.cols[c]++
				if d.example == "" {
					d.example = fmt.Sprintf("got %+v, want %+v", r, w)
				}
			}
		}
	}
	for k := range g {
		if !seen[k] {
			d.extra++
		}
	}
	return d
}

func diffFeatures(got, want []schema.FeatureRow) diff {
	d := diff{cols: map[string]int{}}
	key := func(r schema.FeatureRow) string { return qkey(r.AccountID, r.QuarterStart) + "\x00" + r.Feature }
	g := map[string]schema.FeatureRow{}
	for _, r := range got {
		g[key(r)] = r
	}
	seen := map[string]bool{}
	for _, w := range want {
		k := key(w)
		seen[k] = true
		r, ok := g[k]
		switch {
		case !ok:
			d.missing++
		case r.ActiveUsers != w.ActiveUsers:
			d.cols["active_users"]++
		case r.Events != w.Events:
			d.cols["events"]++
		default:
			continue
		}
		if d.example == "" {
			d.example = fmt.Sprintf("got %+v, want %+v", r, w)
		}
	}
	for k := range g {
		if !seen[k] {
			d.extra++
		}
	}
	return d
}

// nodeOutages sums up the cluster outages of kind.
func (f *figures) nodeOutages(kind string) string {
	var down, ready []time.Duration
	var each []string
	for i, k := range f.outageKinds {
		if k != kind {
			continue
		}
		down, ready = append(down, f.outageDown[i]), append(ready, f.outageReady[i])
		each = append(each, fmt.Sprintf("%.0f / %.0f; %d / %d", f.outageFlushes[i][0], f.outageFlushes[i][1], f.outage503[i][0], f.outage503[i][1]))
	}
	return fmt.Sprintf("%d (%s; %s; %s)", len(down), durs(down), durs(ready), strings.Join(each, ", "))
}

func durs(ds []time.Duration) string {
	var s []string
	for _, d := range ds {
		s = append(s, d.Round(100*time.Millisecond).String())
	}
	return strings.Join(s, ", ")
}

// table renders figures as a Markdown table, one column per broker.
func (f *figures) table(all []*figures) string {
	type row struct {
		name string
		val  func(f *figures) string
	}
	rows := []row{
		{"ClickHouse", func(f *figures) string {
			if f.clickhouse == "3-node cluster" {
				return "3-node cluster (2 shards: s1r1 + s1r2, s2r1)"
			}
			return "one server"
		}},
		{"records produced (chunks, re-sent chunks)", func(f *figures) string {
			return fmt.Sprintf("%d (%d, %d)", f.records, f.chunks, f.resends)
		}},
		{"accepted / duplicates / rejected (reference)", func(f *figures) string {
			return fmt.Sprintf("%d / %d / %d", f.accepted, f.duplicates, f.rejected)
		}},
		{"SIGKILLs (inside an INSERT; of which ClickHouse logged the broken INSERT; right after a flush ack)", func(f *figures) string {
			return fmt.Sprintf("%d (%d; %d; %d)", f.kills, f.killsInFlush, f.killsInFlushConfirmed, f.killsAfterFlush)
		}},
		{"membership changes: starts (incl. restarts) / SIGTERM leaves / zombie pauses", func(f *figures) string {
			return fmt.Sprintf("%d / %d / %d", f.starts, f.terms, f.zombies)
		}},
		{"ClickHouse outages (down for; all ready again after)", func(f *figures) string {
			return fmt.Sprintf("%d (%s; %s)", f.outages, durs(f.outageDown), durs(f.outageReady))
		}},
		{"replica outages, SIGKILL s1r1 (down for; all ready again after; flushes ok / failed while down; instances that answered 503 / alive)", func(f *figures) string {
			return f.nodeOutages("replica")
		}},
		{"shard outages, SIGTERM s2r1 (down for; all ready again after; flushes ok / failed while down; instances that answered 503 / alive)", func(f *figures) string {
			return f.nodeOutages("shard")
		}},
		{"kfake faults: windows / fetches delayed or dropped / commits failed / produces failed", func(f *figures) string {
			if f.broker != "kfake" {
				return "n/a"
			}
			return fmt.Sprintf("%d / %d / %d / %d", f.faultWindows, f.faultFetch, f.faultCommit, f.faultProduce)
		}},
		{"zombie writes after SIGCONT: flushes (rows)", func(f *figures) string {
			return fmt.Sprintf("%.0f (%.0f)", f.zombieFlushes, f.zombieRows)
		}},
		{"differences from the reference (rollups + features, every column)", func(f *figures) string { return fmt.Sprint(f.rollupDiffs) }},
		{"differences `usagepipe verify` found (served rows vs a recompute from the facts)", func(f *figures) string { return fmt.Sprint(f.verifyDiffs) }},
		{"fact rows written (all INSERTs, via audit views)", func(f *figures) string { return fmt.Sprint(f.phys.written) }},
		{"physical duplicate rows written (beyond one per key)", func(f *figures) string { return fmt.Sprint(f.phys.beyondKey) }},
		{"count rows re-written by replays (same key and count as an earlier row)", func(f *figures) string { return fmt.Sprint(f.phys.replayRows) }},
		{"rows beyond one per key left before OPTIMIZE (count keys with >1 row)", func(f *figures) string {
			return fmt.Sprintf("%d (%d)", f.phys.unmerged, f.phys.dupKeys)
		}},
		{"negative control 1: account-quarters wrong when summing all rows (current table)", func(f *figures) string {
			return fmt.Sprintf("%d (%d)", f.naiveDiff, f.naiveNowDiff)
		}},
		{"negative control 2: re-delivered flush, SummingMergeTree vs ReplacingMergeTree wrong account-quarters", func(f *figures) string {
			return fmt.Sprintf("%d vs %d", f.ncSumDiff, f.ncRepDiff)
		}},
		{"worst recovery after a kill: to first flush / to lag 0 (unmeasured)", func(f *figures) string {
			return fmt.Sprintf("%s / %s (%d)", f.worstFlushRecovery.Round(100*time.Millisecond), f.worstLagRecovery.Round(100*time.Millisecond), f.recoveryUnmeasured)
		}},
		{"records replayed: all incarnations / most by one", func(f *figures) string {
			return fmt.Sprintf("%.0f / %.0f", f.replayedTotal, f.replayedMax)
		}},
		{"longest stall: a live owner of partitions without a flush while data flowed (outside outages/zombie)", func(f *figures) string {
			return fmt.Sprintf("%s (%s)", f.maxStall.Round(100*time.Millisecond), f.maxStallWho)
		}},
		{"slowest clean exit after SIGTERM", func(f *figures) string { return f.slowestTerm.Round(100 * time.Millisecond).String() }},
		{"dead letters (crash-time duplicates)", func(f *figures) string {
			return fmt.Sprintf("%d (%d)", f.dlqRecords, f.dlqDuplicates)
		}},
		{"final --until-caught-up run; whole broker run", func(f *figures) string {
			return fmt.Sprintf("%s; %s", f.catchUp.Round(100*time.Millisecond), f.wall.Round(time.Second))
		}},
	}
	var b strings.Builder
	b.WriteString("| figure |")
	for _, f := range all {
		b.WriteString(" " + f.broker + " |")
	}
	b.WriteString("\n|---|")
	for range all {
		b.WriteString("---|")
	}
	b.WriteString("\n")
	// The outage rows of the ClickHouse that ran (one server, or the cluster).
	onCluster := len(all) > 0 && all[0].clickhouse == "3-node cluster"
	for _, r := range rows {
		serverRow := strings.HasPrefix(r.name, "ClickHouse outages")
		clusterRow := strings.HasPrefix(r.name, "replica outages") || strings.HasPrefix(r.name, "shard outages")
		if (onCluster && serverRow) || (!onCluster && clusterRow) {
			continue
		}
		b.WriteString("| " + r.name + " |")
		for _, f := range all {
			b.WriteString(" " + r.val(f) + " |")
		}
		b.WriteString("\n")
	}
	return b.String()
}

func writeResults(path string, s *suite, all []*figures, failed bool, took time.Duration) error {
	status := "PASS"
	if failed {
		status = "FAIL"
	}
	session := "45 s (binary default; no --kafka-session-timeout)"
	if s.sessionFlag {
		session = fmt.Sprintf("%s on Apache Kafka, %s on kfake (rebalance timeout %s on kfake)", s.sz.session, kfakeSession, kfakeRebalance)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# Chaos suite results (`-chaos.size=%s`)\n\n", s.sz.name)
	fmt.Fprintf(&b, "Written by `make chaos` (`go test ./benchmarks/chaos -run TestChaos -chaos.size=full`). See README.md for what each figure proves.\n\n")
	fmt.Fprintf(&b, "- result: **%s**, %s in all, seed %d, %s/%s, %d CPUs, %s\n", status, took.Round(time.Second), s.seed, runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "- binary: %s\n", s.binDesc)
	fmt.Fprintf(&b, "- ClickHouse 18.16.1 (%s), consumer session timeout %s, flush interval 200ms\n\n", s.chModeLong(), session)
	b.WriteString(all[0].table(all))
	return os.WriteFile(path, []byte(b.String()), 0o644)
}
