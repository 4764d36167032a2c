package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chcluster"
)

// scenario is one broker's run.
type scenario struct {
	t       *testing.T
	s       *suite
	kind    string
	rng     *rand.Rand
	began   time.Time
	brokers []string
	topic   string
	dlq     string
	group   string
	db      string
	adb     string // audit database
	session time.Duration
	// planKills is how many SIGKILLs the plan has (fewer when the session
	// timeout cannot be shortened).
	planKills int

	l       *launcher
	faults  *faultInjector
	adm     *kadm.Client
	admCl   *kgo.Client
	conn    driver.Conn   // the test's own ClickHouse connection (on a cluster: to s1r1, conns[0])
	conns   []driver.Conn // one per suite.nodes(); nil while that node is down
	prod    *producer
	running map[int]*instance // slot → instance; only the plan's goroutine uses it

	recWG        sync.WaitGroup // recovery measurements
	recCtx       context.Context
	recCancel    context.CancelFunc
	mu           sync.Mutex // guards fig and kills
	fig          *figures
	kills        []*killRec
	inFlushKills int // in-flush kills so far
}

type killRec struct {
	at         time.Time
	victim     string
	mode       string
	queryID    string        // in-flush: the INSERT that was running
	port       int           // in-flush: its client port
	node       int           // in-flush: the server that ran it (index in suite.nodes())
	flushAfter time.Duration // to the replacement's first successful flush
	lagAfter   time.Duration // to committed offsets covering what existed at the kill
}

func (sc *scenario) logf(format string, a ...any) {
	sc.t.Helper()
	sc.t.Logf("[%6.1fs] %s", time.Since(sc.began).Seconds(), fmt.Sprintf(format, a...))
}

func runBroker(t *testing.T, s *suite, kind string, brokers []string, cluster *kfake.Cluster) *figures {
	sz := s.sz
	suffix := fmt.Sprintf("%s_%d", kind, time.Now().UnixNano()%1_000_000_000)
	sc := &scenario{
		t: t, s: s, kind: kind, began: time.Now(), brokers: brokers,
		rng:     rand.New(rand.NewPCG(uint64(s.seed), uint64(len(kind)))),
		topic:   "chaos-events-" + suffix,
		dlq:     "chaos-dlq-" + suffix,
		group:   "chaos-" + suffix,
		db:      "chaos_" + suffix,
		adb:     "chaos_" + suffix + "_audit",
		running: map[int]*instance{},
		fig:     &figures{broker: kind},
	}
	ctx := context.Background()
	sc.recCtx, sc.recCancel = context.WithCancel(ctx)
	t.Cleanup(func() { sc.recCancel(); sc.recWG.Wait() })

	kafkatest.CreateTopic(t, brokers, sc.topic, 6)
	kafkatest.CreateTopic(t, brokers, sc.dlq, 1)
	var err error
	if sc.admCl, err = kgo.NewClient(kgo.SeedBrokers(brokers...)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.admCl.Close)
	sc.adm = kadm.NewClient(sc.admCl)

	// Session timeout: the binary's flag if it has one; on kfake without
	// it, the JoinGroup control rewrites it; on Apache without it, 45 s.
	// On kfake the rebalance timeout is also lowered (see kfakeRebalance):
	// by the flag if there is one, and the control caps it in any case.
	var args []string
	want := sz.session
	if cluster != nil {
		want = kfakeSession
		if s.rebalanceFlag {
			args = append(args, "--kafka-rebalance-timeout", kfakeRebalance.String())
		}
	}
	sc.session = 45 * time.Second
	rewrite := time.Duration(0)
	switch {
	case s.sessionFlag:
		args = append(args, "--kafka-session-timeout", want.String())
		sc.session = want
	case cluster != nil:
		rewrite, sc.session = want, want
	}
	if cluster != nil {
		sc.faults = installFaults(cluster, sc.group, rewrite, kfakeRebalance)
	}

	logDir := filepath.Join(s.dir, kind)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range s.nodes() {
		addrs = append(addrs, n.addr)
	}
	settings := map[string]string{
		"USAGEPIPE_KAFKA_BROKERS":       strings.Join(brokers, ","),
		"USAGEPIPE_KAFKA_TOPIC":         sc.topic,
		"USAGEPIPE_KAFKA_GROUP":         sc.group,
		"USAGEPIPE_DLQ_TOPIC":           sc.dlq,
		"USAGEPIPE_CLICKHOUSE_ADDR":     strings.Join(addrs, ","),
		"USAGEPIPE_CLICKHOUSE_DATABASE": sc.db,
	}
	if s.cl != nil {
		// Every process (run, migrate, the catch-up run, verify) gets
		// every node and the cluster.
		settings["USAGEPIPE_CLICKHOUSE_CLUSTER"] = s.cl.Name
	}
	sc.l = newLauncher(s.bin, logDir, settings, args)
	t.Cleanup(sc.l.cleanup)

	// The database (through the binary, as users do), then the audit views.
	mctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	out, err := sc.l.runOnce(mctx, "migrate", "migrate")
	cancel()
	if err != nil {
		t.Fatalf("usagepipe migrate: %v\n%s", err, out)
	}
	sc.conns = make([]driver.Conn, len(s.nodes()))
	for i := range sc.conns {
		if err := sc.reopen(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for i := range sc.conns {
			sc.closeConn(i)
		}
	})
	// On a cluster every node audits the INSERTs it receives.
	for i, c := range sc.conns {
		if err := setupAudit(ctx, c, sc.db, sc.adb); err != nil {
			t.Fatalf("%s: %v", s.nodes()[i].name, err)
		}
	}
	t.Cleanup(func() {
		// On each node by itself (not ON CLUSTER, which waits for a node
		// that is down): dropping a replicated table also removes its
		// replica from ZooKeeper.
		for _, n := range s.nodes() {
			c, err := openAddr(context.Background(), n.addr)
			if err != nil {
				continue
			}
			_ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+sc.adb)
			_ = c.Exec(context.Background(), "DROP DATABASE IF EXISTS "+sc.db)
			c.Close()
		}
	})
	t.Cleanup(sc.l.cleanup) // (again) so that no instance writes while the databases go

	// The first chunk (with the edge cases) before any instance runs: the
	// first instances start on a backlog.
	if sc.prod, err = newProducer(sc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.prod.cl.Close)
	t.Cleanup(sc.prod.stopAndWait) // runs first: after a failure in the plan
	if err := sc.prod.produceChunk(0); err != nil {
		t.Fatal(err)
	}
	sc.l.excused.Add(1) // no stalls counted before data flows
	for slot := 1; slot <= 2; slot++ {
		sc.startSlot(ctx, slot, true)
	}
	sc.prod.start()
	sc.l.excused.Add(-1)

	// The plan, bounded by the budget.
	pctx, cancelPlan := context.WithTimeout(ctx, sz.budget)
	psz := sz
	if sc.session > kfakeSession {
		// Every SIGKILL stalls the group for a whole session timeout:
		// a shorter plan keeps the run inside its budget.
		psz.kills, psz.outages, psz.zombies = 3, 1, 1
		sc.logf("NOTE: session timeout %s: the plan is cut to %d kills, %d outage, %d zombie", sc.session, psz.kills, psz.outages, psz.zombies)
	}
	if s.cl != nil && psz.outages < 2 {
		// On a cluster the outages alternate a replica and a shard:
		// at least one of each.
		psz.outages = 2
	}
	sc.planKills = psz.kills
	steps := plan(psz, sc.faults != nil)
	sc.logf("plan: %d steps, %d instances running, session timeout %s", len(steps), len(sc.running), sc.session)
	done := 0
	for _, st := range steps {
		if pctx.Err() != nil {
			break
		}
		sc.do(pctx, st)
		done++
		if bad := sc.l.unexpected(); len(bad) > 0 {
			t.Fatalf("instances exited on their own:\n%s", strings.Join(bad, "\n"))
		}
		sc.pause(pctx, sz.gap)
	}
	cancelPlan()
	if done < len(steps) {
		t.Errorf("budget %s spent after %d of %d steps", sz.budget, done, len(steps))
	}
	sc.l.excused.Add(1) // nor after
	sc.prod.stopAndWait()
	if sc.prod.err != nil {
		t.Fatalf("producer: %v", sc.prod.err)
	}
	sc.logf("plan done: %d steps; %d records in %d chunks (%d re-sent)", done, len(sc.prod.records), sc.prod.chunks, sc.prod.resends)

	sc.drain(ctx)
	sc.check(ctx)
	return sc.fig
}

func (sc *scenario) pause(ctx context.Context, r [2]time.Duration) {
	d := r[0] + time.Duration(sc.rng.Int64N(int64(r[1]-r[0])+1))
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// startSlot starts an instance in slot; with wait, until it serves HTTP.
func (sc *scenario) startSlot(ctx context.Context, slot int, wait bool) *instance {
	sc.t.Helper()
	in, err := sc.l.start(slot)
	if err != nil {
		sc.t.Fatal(err)
	}
	if wait {
		// Not the plan's context: a start begun inside the budget finishes.
		if err := in.waitUp(context.Background(), 60*time.Second); err != nil {
			sc.t.Fatal(err)
		}
	}
	sc.running[slot] = in
	sc.mu.Lock()
	sc.fig.starts++
	sc.mu.Unlock()
	return in
}

func (sc *scenario) list() []*instance {
	var out []*instance
	for _, slot := range sortedSlots(sc.running) {
		out = append(out, sc.running[slot])
	}
	return out
}

func sortedSlots(m map[int]*instance) []int {
	var s []int
	for k := range m {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

func (sc *scenario) pick() *instance {
	l := sc.list()
	return l[sc.rng.IntN(len(l))]
}

// pickOwner picks an instance that owns partitions (waiting up to 10 s for
// one), or any.
func (sc *scenario) pickOwner(ctx context.Context) *instance {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		var owners []*instance
		for _, in := range sc.list() {
			if s, _ := in.snapshot(); s.assigned > 0 {
				owners = append(owners, in)
			}
		}
		if len(owners) > 0 {
			return owners[sc.rng.IntN(len(owners))]
		}
		time.Sleep(100 * time.Millisecond)
	}
	return sc.pick()
}

func (sc *scenario) do(ctx context.Context, st step) {
	switch st.kind {
	case stepKill:
		sc.kill(ctx, st.mode, true)
	case stepJoin:
		for slot := 1; slot <= 3; slot++ {
			if sc.running[slot] == nil {
				in := sc.startSlot(ctx, slot, true)
				sc.logf("join: started %s (pid %d); %d running", in.name, in.pid, len(sc.running))
				return
			}
		}
	case stepLeave:
		if len(sc.running) < 2 {
			return
		}
		sc.waitSettled(ctx)
		in := sc.pick()
		t0 := time.Now()
		if err := in.term(termTimeout); err != nil {
			sc.t.Errorf("leave: %v", err)
		}
		delete(sc.running, in.slot)
		sc.mu.Lock()
		sc.fig.terms++
		sc.fig.slowestTerm = max(sc.fig.slowestTerm, time.Since(t0))
		sc.mu.Unlock()
		sc.logf("leave: SIGTERM %s: clean exit 0 after %s; %d running", in.name, time.Since(t0).Round(time.Millisecond), len(sc.running))
	case stepOutage:
		sc.outage(ctx, st.n)
	case stepFaults:
		sc.faultWindow(ctx)
	case stepZombie:
		sc.zombie(ctx)
	}
}

// kill SIGKILLs an instance at a moment chosen by mode and restarts its
// slot; recovery is measured in the background.
func (sc *scenario) kill(ctx context.Context, mode killMode, settle bool) {
	if settle {
		sc.waitSettled(ctx)
	}
	var victim *instance
	rec := &killRec{mode: mode.String()}
	detail := ""
	switch mode {
	case killInFlush:
		// Every other in-flush kill waits for a flush's own INSERT: most
		// INSERT time is recomputes and reader-table copies, and a kill
		// inside them makes no replay write facts twice (which the
		// checks need to see).
		var only func(string) bool
		if sc.inFlushKills++; sc.inFlushKills%2 == 1 {
			only = flushTable
		}
		if f := findInsert(ctx, sc.watch(), sc.db, sc.list(), 8*time.Second, only); f != nil {
			sigkill(f.in)
			victim, rec.queryID, rec.port, rec.node = f.in, f.queryID, f.port, f.node
			detail = fmt.Sprintf("INSERT INTO %s running %.0f ms%s, killed %s after seeing it", f.table, f.elapsed*1000, sc.onNode(f.node), time.Since(f.seen).Round(time.Microsecond))
		} else {
			rec.mode = killRandom.String()
			detail = "no INSERT seen in 8 s: killed after a chunk instead"
			mode = killRandom
		}
	case killAfterFlush:
		in := sc.pickOwner(ctx)
		base, err := in.scrape(time.Second)
		deadline := time.Now().Add(8 * time.Second)
		for err == nil && time.Now().Before(deadline) {
			s, e := in.scrape(300 * time.Millisecond)
			if e == nil && s.flushOK > base.flushOK {
				sigkill(in)
				victim = in
				detail = fmt.Sprintf("flush #%.0f acknowledged; killed %s after seeing it", s.flushOK, time.Since(s.at).Round(time.Microsecond))
				break
			}
			time.Sleep(5 * time.Millisecond)
		}
		if victim == nil {
			rec.mode = killRandom.String()
			detail = "no flush seen in 8 s: killed after a chunk instead"
			mode = killRandom
		}
	}
	if mode == killRandom {
		select {
		case <-sc.prod.next():
		case <-time.After(10 * time.Second):
		case <-ctx.Done():
		}
		time.Sleep(time.Duration(sc.rng.IntN(400)) * time.Millisecond)
		victim = sc.pick()
		sigkill(victim)
		if detail == "" {
			detail = "at a random delay after a chunk"
		}
	}
	rec.at = time.Now()
	<-victim.done
	rec.victim = victim.name
	before, _ := victim.snapshot()
	ends := sc.endOffsets(ctx)
	delete(sc.running, victim.slot)
	sc.mu.Lock()
	sc.kills = append(sc.kills, rec)
	sc.mu.Unlock()
	sc.logf("kill #%d (%s): SIGKILL %s (%.0f partitions, %.0f flushes): %s", len(sc.kills), rec.mode, victim.name, before.assigned, before.flushOK, detail)

	time.Sleep(time.Duration(sc.rng.IntN(1500)) * time.Millisecond)
	repl := sc.startSlot(ctx, victim.slot, true)
	sc.recWG.Add(1)
	go sc.measureRecovery(rec, ends, repl)
}

// On kfake, members get a 15 s session and a 6 s rebalance timeout. kfake
// expires a member that waits in JoinGroup when its session runs out and
// drops its pending reply, and every join restarts its rebalance deadline;
// with a rebalance timeout longer than the session, a group under
// repeated kills can stay unsettled for minutes (see README.md). A
// rebalance timeout well below the session timeout makes kfake complete
// each rebalance before a waiting member can expire.
const (
	kfakeSession   = 15 * time.Second
	kfakeRebalance = 6 * time.Second
)

// termTimeout bounds a clean exit after SIGTERM. It is long because a
// Kafka client stuck in a JoinGroup leaves the group only when the request
// times out (rebalance timeout 60 s + 10 s); see README.md.
const termTimeout = 120 * time.Second

// waitSettled waits (at most the session timeout + 20 s) until the running
// instances own all six partitions between them: the group has settled
// after the last disruption (a killed member is gone only once its session
// timed out). Disrupting a group that never settles would test little
// more than rebalancing; see also "Known limits" in README.md.
func (sc *scenario) waitSettled(ctx context.Context) {
	t0 := time.Now()
	for time.Since(t0) < sc.session+20*time.Second && ctx.Err() == nil {
		sum := 0.0
		for _, in := range sc.list() {
			if s, err := in.scrape(time.Second); err == nil {
				sum += s.assigned
			}
		}
		if sum == 6 {
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
	sc.logf("the group did not settle within %s; going on", time.Since(t0).Round(time.Second))
}

// sigkill sends SIGKILL without waiting.
func sigkill(in *instance) {
	in.ended.Store(endKilled)
	in.signal(syscall.SIGKILL)
}

// endOffsets lists the topic's end offsets.
func (sc *scenario) endOffsets(ctx context.Context) map[int32]int64 {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out := map[int32]int64{}
	ends, err := sc.adm.ListEndOffsets(cctx, sc.topic)
	if err != nil {
		return out
	}
	ends.Each(func(o kadm.ListedOffset) { out[o.Partition] = o.Offset })
	return out
}

// committedCover reports whether the group's committed offsets reach ends.
func (sc *scenario) committedCover(ctx context.Context, ends map[int32]int64) bool {
	if len(ends) == 0 {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	resp, err := sc.adm.FetchOffsets(cctx, sc.group)
	if err != nil {
		return false
	}
	for p, end := range ends {
		if end == 0 {
			continue
		}
		o, ok := resp.Lookup(sc.topic, p)
		if !ok || o.Err != nil || o.At < end {
			return false
		}
	}
	return true
}

// measureRecovery waits (at most 4 minutes) for the replacement's first
// flush and for the group's commits to cover what existed at the kill.
func (sc *scenario) measureRecovery(rec *killRec, ends map[int32]int64, repl *instance) {
	defer sc.recWG.Done()
	deadline := time.Now().Add(4 * time.Minute)
	var flushed, caught bool
	for time.Now().Before(deadline) && !(flushed && caught) && sc.recCtx.Err() == nil {
		if !flushed {
			if _, ff := repl.snapshot(); !ff.IsZero() {
				flushed = true
				sc.mu.Lock()
				rec.flushAfter = ff.Sub(rec.at)
				sc.mu.Unlock()
			} else if !repl.alive() {
				flushed = true // killed before its first flush: not measured
			}
		}
		if !caught && sc.committedCover(sc.recCtx, ends) {
			caught = true
			sc.mu.Lock()
			rec.lagAfter = time.Since(rec.at)
			sc.mu.Unlock()
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// outageSpec is one outage: what goes down and how it comes back.
type outageSpec struct {
	kind string // "server", "replica" or "shard"
	what string // for the log: "ClickHouse", "replica s1r1 (shard 1 keeps s1r2)", …
	how  string // SIGKILL, SIGTERM
	node int    // the node that goes down (index in suite.nodes())
	down func()
	up   func(ctx context.Context) error
}

// outageOf is the n-th outage (0-based). On one server: ClickHouse,
// SIGKILL in even outages and SIGTERM in odd ones. On a cluster: even
// outages are a replica outage (SIGKILL of s1r1, node 0: shard 1 still
// has s1r2), odd ones a shard outage (a clean stop of s2r1, node 2, the
// only replica of shard 2).
func (sc *scenario) outageOf(n int) outageSpec {
	if sc.s.cl == nil {
		kill := n%2 == 0
		return outageSpec{
			kind: "server", what: "ClickHouse", how: map[bool]string{true: "SIGKILL", false: "SIGTERM"}[kill],
			down: func() { sc.s.ch.down(kill) },
			up:   sc.s.ch.up,
		}
	}
	if n%2 == 0 {
		node := sc.s.cl.Node(0)
		var killed time.Time
		return outageSpec{
			kind: "replica", what: "replica s1r1 (shard 1 keeps s1r2)", how: "SIGKILL", node: 0,
			down: func() { node.Kill(); killed = time.Now() },
			up: func(ctx context.Context) error {
				// Its ZooKeeper session (and its replicas' is_active) must
				// have expired, or its tables stay read-only ~10 s more
				// (chcluster.Node.Restart).
				time.Sleep(time.Until(killed.Add(chcluster.SessionTimeoutMS*time.Millisecond + time.Second)))
				return restartNode(ctx, node)
			},
		}
	}
	node := sc.s.cl.Node(2)
	return outageSpec{
		kind: "shard", what: "shard 2 (s2r1, its only replica)", how: "SIGTERM", node: 2,
		down: func() { _ = node.Stop() },
		up:   func(ctx context.Context) error { return restartNode(ctx, node) },
	}
}

// restartNode starts a node again on its ports and data (a few tries: a
// port may linger a moment after a kill).
func restartNode(ctx context.Context, n *chcluster.Node) error {
	var err error
	for try := 0; try < 3; try++ {
		rctx, cancel := context.WithTimeout(ctx, 90*time.Second)
		err = n.Restart(rctx)
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(time.Second)
	}
	return fmt.Errorf("restart %s: %w", n.Replica, err)
}

// outage takes ClickHouse — on a cluster one node (outageOf) — down for
// outageFor while the instances run and data flows, then starts it again
// on the same ports and data directory. Every instance must stay up and
// be ready (/readyz 200) again at most 60 s after. On one server every
// instance must answer 503 while ClickHouse is down. On a cluster, during
// a replica outage the instances must go on flushing (the other replica
// takes the writes); during a shard outage their flushes must fail and be
// retried, and an instance whose flush failed must answer 503 at least
// once. In the second outage one instance is also killed and restarted
// while ClickHouse (the node) is down.
func (sc *scenario) outage(ctx context.Context, n int) {
	o := sc.outageOf(n)
	live := sc.list()
	if o.kind != "replica" {
		// Stalls are expected; during a replica outage they are not.
		sc.l.excused.Add(1)
		defer sc.l.excused.Add(-1)
	}
	// A SIGKILL lands inside a flush, after its fact_event_counts INSERT
	// (seen running, so the flush has count rows): the instance writing is
	// paused (SIGSTOP) inside a later INSERT of the flush, so that the
	// flush cannot finish before the node is down, and resumed right
	// after. The flush fails and its retry writes those
	// count rows again: the (key, events) repeats the final check requires
	// (replays after a pipeline kill resume past what was written and
	// repeat nothing).
	inFlush := ""
	var frozen *instance
	var frozenBefore snap
	if o.how == "SIGKILL" {
		var w []insertWatch
		for _, x := range sc.watch() {
			if x.node == o.node {
				w = append(w, x)
			}
		}
		if f := findInsertAfterCounts(ctx, w, sc.db, live, 15*time.Second); f != nil {
			frozen = f.in
			frozenBefore, _ = frozen.scrape(time.Second)
			frozen.paused.Store(true)
			frozen.signal(syscall.SIGSTOP)
			inFlush = fmt.Sprintf(" inside %s's INSERT INTO %s (seen running %.0f ms; %s paused over the kill)", f.in.name, f.table, f.elapsed*1000, f.in.name)
		} else {
			inFlush = " (no flush seen between its fact_event_counts INSERT and its end in 15 s)"
		}
	}
	if sc.s.cl != nil {
		// The test's own connection to the node, closed first: a clean
		// stop waits for open connections.
		sc.closeConn(o.node)
	}
	t0 := time.Now()
	o.down()
	down := time.Now() // a SIGTERM takes ClickHouse a few seconds
	if frozen != nil {
		frozen.signal(syscall.SIGCONT)
		frozen.paused.Store(false)
	}
	before := map[string]snap{}
	for _, in := range live {
		before[in.name], _ = in.snapshot()
	}
	if o.kind == "server" {
		sc.logf("outage #%d: ClickHouse stopped with %s%s in %s; %d instances running", n+1, o.how, inFlush, down.Sub(t0).Round(100*time.Millisecond), len(live))
	} else {
		sc.logf("outage #%d (%s): %s stopped with %s%s in %s at %s; %d instances running", n+1, o.kind, o.what, o.how, inFlush, down.Sub(t0).Round(100*time.Millisecond), down.Format("15:04:05.0"), len(live))
	}
	saw503 := map[string]bool{}
	var restarted *instance
	deadline := down.Add(sc.s.sz.outageFor)
	for time.Now().Before(deadline) {
		for _, in := range sc.list() {
			if in.ready() == 0 {
				saw503[in.name] = true
			}
		}
		if n == 1 && restarted == nil && time.Since(down) > sc.s.sz.outageFor/2 {
			victim := sc.pick()
			victim.kill()
			rec := &killRec{at: time.Now(), victim: victim.name, mode: "during-outage"}
			ends := sc.endOffsets(ctx)
			delete(sc.running, victim.slot)
			restarted = sc.startSlot(ctx, victim.slot, false)
			sc.mu.Lock()
			sc.kills = append(sc.kills, rec)
			sc.mu.Unlock()
			sc.recWG.Add(1)
			go sc.measureRecovery(rec, ends, restarted)
			sc.logf("kill #%d (during-outage): SIGKILL %s, restarted as %s while %s is down", len(sc.kills), victim.name, restarted.name, o.what)
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Flushes of the instances that lived through the outage, while down.
	var flushes, flushErrs float64
	failed := map[string]bool{}
	for _, in := range live {
		if in.alive() && in.ended.Load() == endNone {
			s, _ := in.snapshot()
			flushes += s.flushOK - before[in.name].flushOK
			flushErrs += s.flushErr - before[in.name].flushErr
			failed[in.name] = s.flushErr > before[in.name].flushErr
		}
	}
	if frozen != nil && frozen.alive() {
		if s, err := frozen.scrape(time.Second); err == nil {
			sc.logf("outage #%d: %s, paused inside a flush over the kill: %.0f failed flush attempts while down", n+1, frozen.name, s.flushErr-frozenBefore.flushErr)
		}
	}
	if err := o.up(ctx); err != nil {
		sc.t.Fatalf("outage #%d: %v", n+1, err)
	}
	downFor, upAt := time.Since(down), time.Now()
	if restarted != nil {
		if err := restarted.waitUp(ctx, 90*time.Second); err != nil {
			sc.t.Fatalf("outage #%d: instance started during the outage: %v", n+1, err)
		}
	}
	// Ready again, everywhere.
	readyBy := time.Now().Add(60 * time.Second)
	for {
		notReady := 0
		for _, in := range sc.list() {
			if in.ready() != 1 {
				notReady++
			}
		}
		if notReady == 0 {
			break
		}
		if time.Now().After(readyBy) {
			sc.t.Errorf("outage #%d: %d instances not ready 60 s after %s came back", n+1, notReady, o.what)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if frozen != nil && frozen.alive() && frozen.ended.Load() == endNone {
		// Its retried flush repeats the count rows whose repeat the final
		// check requires: let it land before a later step of the plan can
		// kill the instance (CI seed 967096 killed it 3 s after the
		// outage, before its retry, and the check found no repeat).
		by := time.Now().Add(60 * time.Second)
		for {
			if s, err := frozen.scrape(time.Second); err == nil && s.flushOK > frozenBefore.flushOK {
				break
			}
			if time.Now().After(by) {
				sc.t.Errorf("outage #%d: %s, paused inside a flush over the kill, completed no flush within 60 s after ClickHouse came back", n+1, frozen.name)
				break
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	n503, nLive := 0, 0
	for _, in := range live {
		if !in.alive() && in.ended.Load() == endNone {
			sc.t.Errorf("outage #%d: %s exited while %s was down: %v\n%s", n+1, in.name, o.what, in.exitErr, in.logTail(2000))
		}
		if in.ended.Load() != endNone {
			continue
		}
		nLive++
		if saw503[in.name] {
			n503++
		}
		switch {
		case o.kind == "server" && !saw503[in.name]:
			sc.t.Errorf("outage #%d: %s never answered 503 on /readyz while ClickHouse was down", n+1, in.name)
		case o.kind == "shard" && failed[in.name] && !saw503[in.name]:
			sc.t.Errorf("outage #%d: %s failed to flush while %s was down but never answered 503 on /readyz", n+1, in.name, o.what)
		}
	}
	switch {
	case o.kind == "replica" && flushes == 0:
		sc.t.Errorf("outage #%d: no flush succeeded while %s was down: the writes did not fail over to the other replica", n+1, o.what)
	case o.kind == "shard" && flushErrs == 0:
		sc.t.Errorf("outage #%d: no flush failed while %s was down: the run did not meet the shard outage", n+1, o.what)
	}
	if sc.s.cl == nil {
		if sc.conn != nil {
			sc.conn.Close()
		}
		var err error
		if sc.conn, err = sc.s.ch.open(ctx); err != nil {
			sc.t.Fatal(err)
		}
		sc.conns[0] = sc.conn
	} else {
		sc.closeConn(o.node)
		if err := sc.reopen(ctx, o.node); err != nil {
			sc.t.Fatal(err)
		}
	}
	sc.mu.Lock()
	sc.fig.outages++
	sc.fig.outageKinds = append(sc.fig.outageKinds, o.kind)
	sc.fig.outageDown = append(sc.fig.outageDown, downFor)
	sc.fig.outageReady = append(sc.fig.outageReady, time.Since(down))
	sc.fig.outageFlushes = append(sc.fig.outageFlushes, [2]float64{flushes, flushErrs})
	sc.fig.outage503 = append(sc.fig.outage503, [2]int{n503, nLive})
	sc.mu.Unlock()
	if o.kind == "server" {
		sc.logf("outage #%d: ClickHouse back after %s (%s); all %d instances alive, /readyz 503 during, 200 again %s after the stop",
			n+1, downFor.Round(100*time.Millisecond), o.how, len(sc.running), time.Since(down).Round(100*time.Millisecond))
		return
	}
	sc.logf("outage #%d (%s): %s back at %s after %s (%s); all %d instances alive; while it was down %.0f flushes succeeded and %.0f failed, /readyz answered 503 on %d of %d instances; 200 everywhere %s after the stop",
		n+1, o.kind, o.what, upAt.Format("15:04:05.0"), downFor.Round(100*time.Millisecond), o.how, len(sc.running), flushes, flushErrs, n503, nLive, time.Since(down).Round(100*time.Millisecond))
}

// reopen connects the test to node i (sc.conn is node 0's connection).
func (sc *scenario) reopen(ctx context.Context, i int) error {
	n := sc.s.nodes()[i]
	c, err := openAddr(ctx, n.addr)
	if err != nil {
		return fmt.Errorf("connect to %s: %w", n.name, err)
	}
	sc.conns[i] = c
	if i == 0 {
		sc.conn = c
	}
	return nil
}

// closeConn closes the test's connection to node i, if open.
func (sc *scenario) closeConn(i int) {
	if sc.conns[i] != nil {
		sc.conns[i].Close()
		sc.conns[i] = nil
	}
	if i == 0 {
		sc.conn = nil
	}
}

// watch is what findInsert polls: every node the test is connected to.
func (sc *scenario) watch() []insertWatch {
	var w []insertWatch
	for i, n := range sc.s.nodes() {
		if sc.conns[i] != nil {
			w = append(w, insertWatch{node: i, port: n.port, conn: sc.conns[i]})
		}
	}
	return w
}

// onNode names the node an INSERT ran on, on a cluster.
func (sc *scenario) onNode(i int) string {
	if sc.s.cl == nil {
		return ""
	}
	return " on " + sc.s.nodes()[i].name
}

// faultWindow turns on the kfake faults for faultFor, with a kill inside.
func (sc *scenario) faultWindow(ctx context.Context) {
	f := sc.faults
	d0, x0, c0, p0 := f.fetchDelays.Load(), f.fetchDrops.Load(), f.commitFails.Load(), f.produceFails.Load()
	f.active.Store(true)
	sc.logf("faults: on for %s (30%% of fetches slowed 0.2–1.5 s, 10%% dropped; 50%% of offset commits fail; 33%% of produce requests fail)", sc.s.sz.faultFor)
	end := time.Now().Add(sc.s.sz.faultFor)
	time.Sleep(sc.s.sz.faultFor / 3)
	sc.kill(ctx, killAfterFlush, false) // whatever state the faults left
	time.Sleep(time.Until(end))
	f.active.Store(false)
	sc.mu.Lock()
	sc.fig.faultWindows++
	sc.mu.Unlock()
	sc.logf("faults: off; injected %d fetch delays, %d fetch drops, %d commit failures, %d produce failures",
		f.fetchDelays.Load()-d0, f.fetchDrops.Load()-x0, f.commitFails.Load()-c0, f.produceFails.Load()-p0)
}

// zombie SIGSTOPs an instance (preferably inside a flush) past the session
// timeout, waits for its partitions to move, SIGCONTs it and counts the
// flushes it completes before it notices it lost them.
func (sc *scenario) zombie(ctx context.Context) {
	if len(sc.running) < 2 {
		in := sc.startSlot(ctx, freeSlot(sc.running), true)
		sc.logf("zombie: started %s so that the partitions have somewhere to go", in.name)
	}
	sc.waitSettled(ctx)
	sc.l.excused.Add(1)
	defer sc.l.excused.Add(-1)
	var z *instance
	how := ""
	// Inside a flush's INSERT (facts, marks or progress), not a serve
	// loop's: after SIGCONT the zombie then finishes that flush, writing
	// facts the new owner writes too, which the check needs when no
	// replay happened to repeat a count row (a CI run paused one inside
	// an INSERT INTO served_rollups, wrote nothing, and failed the check).
	if f := findInsert(ctx, sc.watch(), sc.db, sc.list(), 8*time.Second, flushTable); f != nil {
		z = f.in
		z.paused.Store(true)
		z.signal(syscall.SIGSTOP)
		how = fmt.Sprintf("inside an INSERT INTO %s%s", f.table, sc.onNode(f.node))
	} else {
		z = sc.pickOwner(ctx)
		z.paused.Store(true)
		z.signal(syscall.SIGSTOP)
		how = "outside a flush"
	}
	before, _ := z.snapshot()
	stopped := time.Now()
	sc.logf("zombie: SIGSTOP %s %s (%.0f partitions, %.0f flushes)", z.name, how, before.assigned, before.flushOK)

	// Wait past the session timeout until the others own all 6 partitions.
	moved := time.Duration(0)
	deadline := stopped.Add(sc.session + 90*time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		sum := 0.0
		for _, in := range sc.list() {
			if in != z {
				s, _ := in.snapshot()
				sum += s.assigned
			}
		}
		if sum == 6 && time.Since(stopped) > sc.session+2*time.Second {
			moved = time.Since(stopped)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if moved == 0 {
		sc.t.Errorf("zombie: partitions of %s did not move within %s", z.name, time.Since(stopped).Round(time.Second))
	}
	time.Sleep(time.Second)
	z.signal(syscall.SIGCONT)
	resumed := time.Now()
	var flushes, rows float64
	var noticed time.Duration
	for time.Since(resumed) < 15*time.Second {
		s, err := z.scrape(300 * time.Millisecond)
		if err == nil {
			flushes, rows = s.flushOK-before.flushOK, s.rows-before.rows
			if s.assigned == 0 {
				noticed = time.Since(resumed)
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	z.paused.Store(false)
	sc.mu.Lock()
	sc.fig.zombies++
	sc.fig.zombieFlushes += flushes
	sc.fig.zombieRows += rows
	sc.mu.Unlock()
	sc.logf("zombie: paused %s, partitions moved after %s; after SIGCONT it completed %.0f flushes (%.0f rows) before dropping its partitions (noticed after %s)",
		resumed.Sub(stopped).Round(100*time.Millisecond), moved.Round(100*time.Millisecond), flushes, rows, noticed.Round(time.Millisecond))
}

func freeSlot(m map[int]*instance) int {
	for slot := 1; ; slot++ {
		if m[slot] == nil {
			return slot
		}
	}
}

// drain stops the instances (SIGTERM: each flushes, commits and leaves)
// and runs `usagepipe run --until-caught-up`, which must exit 0.
func (sc *scenario) drain(ctx context.Context) {
	var wg sync.WaitGroup
	t0 := time.Now()
	errs := make([]error, 4)
	for _, in := range sc.list() {
		wg.Go(func() { errs[in.slot] = in.term(termTimeout) })
		delete(sc.running, in.slot)
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			sc.t.Errorf("final stop: %v", err)
		}
	}
	sc.fig.slowestTerm = max(sc.fig.slowestTerm, time.Since(t0))
	sc.logf("final stop: SIGTERM to every instance; all exited within %s", time.Since(t0).Round(100*time.Millisecond))
	if bad := sc.l.unexpected(); len(bad) > 0 {
		sc.t.Fatalf("instances exited on their own:\n%s", strings.Join(bad, "\n"))
	}
	port, err := freePort()
	if err != nil {
		sc.t.Fatal(err)
	}
	args := append([]string{"run", "--until-caught-up", "--metrics-addr", fmt.Sprintf("127.0.0.1:%d", port), "--flush-interval", "200ms"}, sc.l.args...)
	t0 = time.Now()
	dctx, cancel := context.WithTimeout(ctx, sc.s.sz.drain)
	out, err := sc.l.runOnce(dctx, "catch-up", args...)
	cancel()
	sc.fig.catchUp = time.Since(t0)
	if err != nil {
		// Go on: the comparison and the figures say how far it got.
		sc.t.Errorf("usagepipe run --until-caught-up: %v after %s\n%s", err, sc.fig.catchUp.Round(time.Second), tail(out, 4000))
	} else {
		sc.logf("catch-up: usagepipe run --until-caught-up exited 0 after %s", sc.fig.catchUp.Round(100*time.Millisecond))
	}

	// The recoveries still open end now that everything is committed.
	waited := make(chan struct{})
	go func() { sc.recWG.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
	}
	sc.recCancel()
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
