package chaos

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/schema/store"
)

// check is steps 7 and 8 of README.md after the catch-up: the rollups and
// features against the reference, the dead-letter topic, the physical rows
// and the negative controls, the same comparison after OPTIMIZE FINAL; and
// it fills in the figures.
func (sc *scenario) check(ctx context.Context) {
	t := sc.t
	recs := sc.prod.records
	want := reference.Compute(recs, reference.Options{})
	f := sc.fig
	f.clickhouse = sc.s.chMode()
	f.records, f.chunks, f.resends = len(recs), sc.prod.chunks, sc.prod.resends
	f.accepted, f.duplicates, f.rejected = want.Accepted, want.Duplicates, len(want.Rejected)
	if want.Duplicates == 0 || len(want.Rejected) == 0 {
		t.Errorf("test data has %d duplicates and %d rejects; want both", want.Duplicates, len(want.Rejected))
	}

	// The readers' tables, read on every node (one on a single server).
	// On a cluster they read Distributed tables; with 18.16's default
	// prefer_localhost_replica = 1 a read on s1r2 reads shard 1 on s1r2
	// itself, so reading on every node reads every replica. Replication is
	// asynchronous: each node gets up to 90 s (in all) to agree.
	compare := func(when string) int {
		deadline := time.Now().Add(90 * time.Second)
		total := 0
		for _, n := range sc.s.nodes() {
			st, err := store.Open(ctx, store.Config{Addr: []string{n.addr}, Database: sc.db}, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			t0 := time.Now()
			for {
				got, err := st.ReadRollups(ctx)
				if err != nil {
					t.Fatalf("%s: read on %s: %v", when, n.name, err)
				}
				gotF, err := st.ReadFeatures(ctx)
				if err != nil {
					t.Fatalf("%s: read on %s: %v", when, n.name, err)
				}
				d := diffRollups(got, want.Rollups)
				df := diffFeatures(gotF, want.Features)
				if d.total()+df.total() > 0 && sc.s.cl != nil && time.Now().Before(deadline) {
					time.Sleep(500 * time.Millisecond)
					continue
				}
				switch {
				case d.total()+df.total() > 0 && sc.s.cl == nil:
					t.Errorf("%s: rollups differ from the reference: %s; features: %s", when, d, df)
				case d.total()+df.total() > 0:
					t.Errorf("%s: read on %s, rollups differ from the reference (after waiting %s): %s; features: %s", when, n.name, time.Since(t0).Round(100*time.Millisecond), d, df)
				case sc.s.cl == nil:
					sc.logf("%s: %d rollup rows and %d feature rows equal the reference in every column", when, len(got), len(gotF))
				default:
					sc.logf("%s: read on %s, %d rollup rows and %d feature rows equal the reference in every column (after %s)", when, n.name, len(got), len(gotF), time.Since(t0).Round(100*time.Millisecond))
				}
				total += d.total() + df.total()
				break
			}
			st.Close()
		}
		return total
	}
	f.rollupDiffs = compare("rollups")

	// usagepipe verify: the served rows against a recompute from the facts.
	vctx, vcancel := context.WithTimeout(ctx, 5*time.Minute)
	out, err := sc.l.runOnce(vctx, "verify", "verify")
	vcancel()
	f.verifyDiffs = -1
	if _, serr := fmt.Sscanf(lastLine(out), "verify: %d accounts checked, %d differences", new(int), &f.verifyDiffs); serr != nil || err != nil || f.verifyDiffs != 0 {
		t.Errorf("usagepipe verify: %v, %d differences:\n%s", err, f.verifyDiffs, tail(out, 3000))
	} else {
		sc.logf("usagepipe verify: %s", lastLine(out))
	}

	// Dead letters: every rejected record at least once, with its reason.
	dctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	dl, err := readDLQ(dctx, sc.brokers, sc.dlq, sc.topic)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	rejected := map[string]string{}
	missing := 0
	for _, r := range want.Rejected {
		k := fmt.Sprintf("%d@%d", r.Partition, r.Offset)
		rejected[k] = r.Reason
		if dl.reasons[k] != r.Reason {
			if missing < 5 {
				t.Errorf("dead letter for %s: reason %q, want %q", k, dl.reasons[k], r.Reason)
			}
			missing++
		}
	}
	for k := range dl.copies {
		if _, ok := rejected[k]; !ok {
			t.Errorf("dead letter for %s, which is not a rejected record", k)
		}
	}
	if len(dl.bad) > 0 {
		t.Errorf("%d dead letters with wrong headers, e.g. %s", len(dl.bad), dl.bad[0])
	}
	if missing > 0 {
		t.Errorf("%d of %d rejected records missing from the dead-letter topic", missing, len(want.Rejected))
	}
	f.dlqRecords, f.dlqDuplicates = dl.total, dl.total-len(dl.copies)
	sc.logf("dead letters: %d for %d rejected records (%d crash-time duplicates)", dl.total, len(want.Rejected), f.dlqDuplicates)

	// Physical rows, replays, and the negative controls.
	ps, err := sc.physicalRows(ctx, sc.conn)
	if err != nil {
		t.Fatal(err)
	}
	f.phys = ps
	if ps.impure > 0 {
		t.Errorf("%d (key, covered_end) pairs of fact_event_counts were written with different counts: a count is not a pure function of its offsets", ps.impure)
	}
	if ps.replayRows == 0 && f.zombieRows == 0 {
		// Identical count rows need a replay that flushes exactly the
		// range of an earlier flush: by chance (0 in one full Apache
		// Kafka run). A zombie's flush after SIGCONT writes facts the
		// new owner writes too: either shows facts written twice.
		t.Errorf("no fact_event_counts row repeats an earlier (key, events) and the zombie wrote nothing: no fact was written twice, so this run proves nothing")
	}
	wantCounts := quarterCounts{}
	for _, r := range want.Rollups {
		if r.Logins+r.FeatureEvents > 0 {
			wantCounts[qkey(r.AccountID, r.QuarterStart)] = [2]uint64{r.Logins, r.FeatureEvents}
		}
	}
	naive, err := readCounts(ctx, sc.conn, naiveCountsSQL(sc.auditFrom("fact_event_counts")))
	if err != nil {
		t.Fatal(err)
	}
	idem, err := readCounts(ctx, sc.conn, idempotentCountsSQL(sc.auditFrom("fact_event_counts")))
	if err != nil {
		t.Fatal(err)
	}
	naiveNow, err := readCounts(ctx, sc.conn, naiveCountsSQL(sc.factsFrom("fact_event_counts")))
	if err != nil {
		t.Fatal(err)
	}
	f.naiveDiff, f.idemDiff, f.naiveNowDiff = countsDiffer(naive, wantCounts), countsDiffer(idem, wantCounts), countsDiffer(naiveNow, wantCounts)
	if f.naiveDiff == 0 {
		t.Errorf("negative control 1: summing every physical count row equals the reference: the comparison cannot fail, or nothing was written twice")
	}
	if f.idemDiff != 0 {
		t.Errorf("the views' reading rule over every row ever written differs from the reference in %d account-quarters", f.idemDiff)
	}
	f.ncSumDiff, f.ncRepDiff, f.ncReplayed, err = negativeControl2(ctx, sc.conn, sc.adb, sc.auditFrom("fact_event_counts"), wantCounts)
	if err != nil {
		t.Fatal(err)
	}
	if f.ncSumDiff == 0 {
		t.Errorf("negative control 2: a re-delivered flush into SummingMergeTree left the counts equal to the reference")
	}
	if f.ncRepDiff != 0 {
		t.Errorf("a re-delivered flush into ReplacingMergeTree(covered_end) changed %d account-quarters", f.ncRepDiff)
	}
	sc.logf("physical rows: %d written, %d beyond one per key (%v); %d count rows repeat an earlier (key, events) [replays]; before OPTIMIZE %d rows beyond one per key, %d count keys with >1 row",
		ps.written, ps.beyondKey, ps.perTable, ps.replayRows, ps.unmerged, ps.dupKeys)
	sc.logf("negative control 1: summing all %d physical count rows differs from the reference in %d account-quarters (%d over the current unmerged table); argMax per key: %d",
		ps.countRows, f.naiveDiff, f.naiveNowDiff, f.idemDiff)
	sc.logf("negative control 2: re-inserting one partition's %d final count rows: SummingMergeTree differs in %d account-quarters, ReplacingMergeTree(covered_end) in %d",
		f.ncReplayed, f.ncSumDiff, f.ncRepDiff)

	// Merging everything changes nothing. On a cluster: on one replica of
	// each shard (s1r1, s2r1); the others merge through replication.
	for i, n := range sc.s.nodes() {
		if sc.s.cl != nil && n.shard == 1 && i != 0 {
			continue
		}
		if err := optimizeAll(ctx, sc.conns[i], sc.db); err != nil {
			t.Fatalf("%s: %v", n.name, err)
		}
	}
	f.rollupDiffs += compare("after OPTIMIZE FINAL")

	// Kills, recoveries, replays.
	sc.mu.Lock()
	defer sc.mu.Unlock()
	nodes := sc.s.nodes()
	errLogs := make([]string, len(nodes))
	for i, n := range nodes {
		errLogs[i] = n.errLog()
	}
	for _, k := range sc.kills {
		f.kills++
		switch k.mode {
		case killInFlush.String():
			f.killsInFlush++
			if brokenQuery(errLogs[k.node], k.queryID, k.port) {
				f.killsInFlushConfirmed++
			}
		case killAfterFlush.String():
			f.killsAfterFlush++
		}
		if k.flushAfter == 0 || k.lagAfter == 0 {
			f.recoveryUnmeasured++
		}
		f.worstFlushRecovery = max(f.worstFlushRecovery, k.flushAfter)
		f.worstLagRecovery = max(f.worstLagRecovery, k.lagAfter)
	}
	f.replayedTotal, f.replayedMax, f.rowsWritten, f.incarnations, f.maxStall, f.maxStallWho = sc.l.totals()
	if sc.faults != nil {
		f.faultFetch = sc.faults.fetchDelays.Load() + sc.faults.fetchDrops.Load()
		f.faultCommit, f.faultProduce, f.joinRewrites = sc.faults.commitFails.Load(), sc.faults.produceFails.Load(), sc.faults.joinRewrites.Load()
	}
	f.wall = time.Since(sc.began)
	if f.kills < sc.planKills {
		t.Errorf("%d kills, want at least %d", f.kills, sc.planKills)
	}
	if f.zombies > 0 && f.zombieRows == 0 {
		sc.logf("note: the zombie wrote nothing after SIGCONT (it had no write pending when paused)")
	}
}

// lastLine is the last line of out that starts with "verify:".
func lastLine(out string) string {
	last := ""
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, "verify:") {
			last = l
		}
	}
	return last
}
