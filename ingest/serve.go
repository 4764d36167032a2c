package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/usagepipe/usagepipe/schema"
)

// connProvider is what a Writer offers when the served rollups can be
// maintained through it (*store.Store does).
type connProvider interface {
	Topology() *schema.Topology
	Database() string
}

// server keeps the served rollups current (docs/design.md, "Served
// rollups"): every flush hands it the accounts it wrote facts for, and its
// loop recomputes them off the ingest path, batching whatever gathered
// while the previous recompute ran. A sweep at start, every SweepInterval,
// when the last quarter moves and before an --until-caught-up run exits
// recomputes every account whose marks its served rows do not satisfy,
// whoever wrote them. Its loop is owned by Consumer.Run.
type server struct {
	sv      *schema.Served
	conn    driver.Conn                        // the server of the reader tables (one server)
	scfg    schema.Config                      // database and calendar
	copy    *schema.Copy                       // reader tables (servers before 20.1); nil: views or not known yet
	lag     func() (records int64, known bool) // the consumer's lag (nil: never caught up)
	lv      *liveServe                         // the live path (nil: off)
	copyAt  time.Time                          // the last keepCopy (serve loop only)
	copyDue bool                               // served rows changed since the last successful keepCopy
	holder  bool                               // this process took the copy lease and did not see it taken
	uptime  uint64                             // the server's uptime at the last keepCopy (a drop: it restarted)
	beatAs  atomic.Value                       // string: the lease's holder name the heartbeat goroutine beats for
	cwarn   rateLimiter
	log     *slog.Logger
	every   time.Duration
	warn    rateLimiter
	lwarn   rateLimiter

	copyMu sync.Mutex // one keepCopy or syncCopy at a time (recompute and live loops)

	mu      sync.Mutex
	pending map[string]int32 // account → earliest quarter to recompute
	confirm map[string]int32 // live rows the sweep found: recomputed confirmChunk per round (recompute loop; endLive after it stopped)
	delays  map[int64]int    // record second → new records of the pending accounts
	lastQ   int32            // the greatest quarter this process has seen served or touched
	sweep   bool             // sweep at the next round (rollover, start)
	kick    chan struct{}

	recomputed prometheus.Counter
	sweeps     prometheus.Counter
	staleFound prometheus.Counter
	errs       prometheus.Counter
	installs   prometheus.Counter
	holds      prometheus.Gauge
	delay      *batchHistogram
}

func newServer(w Writer, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*server, error) {
	cp, ok := w.(connProvider)
	if !ok {
		return nil, nil
	}
	t := cp.Topology()
	scfg := schema.Config{Database: cp.Database(), FiscalStartMonth: cfg.FiscalStartMonth, Cluster: t.Cluster}
	sv, err := schema.NewServedOn(t, scfg)
	if err != nil {
		return nil, fmt.Errorf("served rollups: %w", err)
	}
	s := &server{sv: sv, conn: t.Global, scfg: scfg, log: log, every: cfg.SweepInterval, pending: map[string]int32{}, confirm: map[string]int32{}, delays: map[int64]int{}, sweep: true, kick: make(chan struct{}, 1)}
	if cfg.LiveCacheMemory > 0 && !cfg.UntilCaughtUp {
		// An --until-caught-up run recomputes every account it touched
		// before it exits: live rows would only be replaced.
		s.lv = newLiveServe(cfg.LiveCacheMemory, cfg.FiscalStartMonth, reg)
		sv.LiveWriter = schema.NewLiveWriter()
	}
	if cfg.SweepInterval > 0 {
		// Another process's live rows are its to confirm, for three
		// sweeps; after that any process recomputes them.
		sv.LiveConfirmAge = 3 * cfg.SweepInterval
	}
	f := promauto.With(reg)
	s.recomputed = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_accounts_recomputed_total", Help: "Accounts whose served rollup rows were recomputed (one per account and recompute)."})
	s.sweeps = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_sweeps_total", Help: "Sweeps: checks of every mark against the served rows."})
	s.staleFound = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_stale_accounts_total", Help: "Accounts a sweep found with marks their served rows did not satisfy (left by a crash, another instance, or a quarter rollover)."})
	s.errs = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_errors_total", Help: "Recomputes or sweeps that failed (retried)."})
	s.installs = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_serve_copy_installs_total", Help: "Quarters of the reader tables replaced with a new snapshot of the served rows (servers before 20.1, where readers are tables)."})
	s.holds = f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_serve_copy_lease", Help: "1 while this process holds the lease that keeps the reader tables (servers before 20.1), else 0."})
	s.delay = newBatchHistogram(prometheus.HistogramOpts{Name: "usagepipe_served_delay_seconds",
		Help:    "Kafka record timestamp to the moment the served rollup rows of its account were rewritten with it (where readers are tables and this process keeps them: installed in them); freshness of account_quarter_rollups.",
		Buckets: []float64{.25, .5, 1, 2, 3, 4, 5, 6, 7.5, 10, 12.5, 15, 20, 30, 60, 120, 300, 900, 3600}})
	if reg != nil {
		reg.MustRegister(s.delay)
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "usagepipe_serve_pending_accounts", Help: "Accounts waiting for their served rows to be recomputed."}, func() float64 {
		s.mu.Lock()
		defer s.mu.Unlock()
		return float64(len(s.pending))
	})
	return s, nil
}

// touch queues the accounts of a flush that was just written (and, on the
// live path, its fact rows); delays counts its new records by record
// second and event month.
func (s *server) touch(f *schema.Facts, delays map[delayKey]int) {
	am := f.AccountMonths
	if len(am) == 0 {
		return
	}
	s.mu.Lock()
	for _, r := range am {
		s.sv.NoteMonth(r.Month)
		if q := s.sv.QuarterOf(r.Month); q > s.lastQ {
			// The stream entered a new quarter: every account needs its
			// row for it (contract section 4's grid).
			s.lastQ, s.sweep = q, true
		}
	}
	// The live loop answers for the marks from quarter from on (and
	// reports their records' delays); the recompute loop for the rest.
	from, gathered := s.lastQ, s.gather(f)
	if gathered {
		from = s.lv.from(s.lastQ)
	}
	for k, n := range delays {
		if gathered && (k.month < 0 || s.sv.QuarterOf(k.month) >= from) {
			s.lv.delays[k.sec] += n
		} else {
			s.delays[k.sec] += n
		}
	}
	for _, r := range am {
		q := s.sv.QuarterOf(r.Month)
		if gathered && q >= from {
			// The live loop writes this row, or gives the mark back.
			if old, ok := s.lv.owed[r.Account]; !ok || q < old {
				s.lv.owed[strings.Clone(r.Account)] = q
			}
			continue
		}
		if old, ok := s.pending[r.Account]; !ok || q < old {
			s.pending[strings.Clone(r.Account)] = q
		}
	}
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// caughtUp reports whether the consumer's lag is known and under
// liveLag.
func (s *server) caughtUp() bool {
	if s.lag == nil {
		return false
	}
	lag, known := s.lag()
	return known && lag < liveLag
}

// liveLag: a consumer whose lag (records, all its partitions) is under
// this is about caught up (about a second of a 100k records/s stream), so
// the serve loop runs its rounds back to back.
const liveLag = 100_000

// run recomputes until ctx is done.
func (s *server) run(ctx context.Context) {
	// The copy lease's heartbeat runs on its own ticker, so that a long
	// round is not taken for a dead holder.
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Go(func() { s.heartbeat(ctx) })
	if s.lv != nil {
		wg.Go(func() { s.liveLoop(ctx) })
	}
	next := time.Now()
	backoff := 100 * time.Millisecond
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var last time.Time // when the last round ended
	var took time.Duration
	for {
		// During a backlog the loop waits between rounds as long as the
		// last one took, so recomputes take at most about half of one
		// ClickHouse query slot and leave the rest to ingestion (back to
		// back, a 2M-record backfill drained 17% slower). Once the
		// consumer is about caught up, rounds run back to back: one
		// recompute query at a time, for freshness (at 100k records/s:
		// served delay p99 under 10 s instead of 10-20 s, ClickHouse
		// 1.0 core instead of 0.6; benchmarks/README.md). (Deferring
		// rounds during a backlog was measured worse: on a stream in
		// time order each round reads only the current quarter, while
		// one big round at the end reads everything.) During a backlog a
		// recompute also runs on one server thread, leaving the other
		// core to ingestion (2M-record drain +16% → +8% over the code
		// before served rows, and the exit sooner; benchmarks/README.md).
		// While the live path runs, freshness is its job: recomputes
		// (the sweep's confirmations, late events) pace themselves as
		// during a backlog, leaving ClickHouse to the live rows.
		pause, rctx := took, schema.OneThread(ctx)
		if s.caughtUp() && !s.liveOn() {
			pause, rctx = 0, ctx
		}
		if wait := pause - time.Since(last); !last.IsZero() && wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
			continue
		}
		began := time.Now()
		s.pace()
		err := s.round(rctx, time.Now().After(next), true)
		last, took = time.Now(), time.Since(began)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			s.errs.Inc()
			s.warn.Do(func(n int) {
				s.log.Warn("served rollups: recompute failed; retrying", "err", err, "backoff", backoff, "repeats", n)
			})
			if !backOff(ctx, &backoff) {
				return
			}
			continue
		}
		backoff = 100 * time.Millisecond
		if time.Now().After(next) {
			next = time.Now().Add(s.every)
		}
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		case <-tick.C:
		}
	}
}

// round recomputes the pending accounts, after a sweep if one is due,
// and refreshes the reader tables where this process keeps them (unless
// not refresh: the caller syncs them after). On error the accounts stay
// pending.
func (s *server) round(ctx context.Context, sweepDue, refresh bool) error {
	s.mu.Lock()
	sweep := s.sweep || sweepDue
	batch, delays := s.pending, s.delays
	s.pending, s.delays, s.sweep = map[string]int32{}, map[int64]int{}, false
	s.mu.Unlock()
	var sweepErr error // a sweep that could not read every shard (cluster)
	if sweep {
		stale, err := s.sv.Stale(ctx)
		if err != nil && stale == nil {
			s.requeue(batch, delays, true)
			return err
		}
		if err != nil {
			// The shards that answered are swept now; the sweep stays due
			// for the others, and the round reports the error after its
			// recompute.
			sweepErr = err
			s.mu.Lock()
			s.sweep = true
			s.mu.Unlock()
		}
		s.sweeps.Inc()
		s.staleFound.Add(float64(len(stale)))
		if len(stale) > 0 {
			s.log.Info("served rollups: sweep found stale accounts", "accounts", len(stale))
		}
		for a, q := range stale {
			if s.lv != nil && s.lv.cached(a) {
				// Its live row is the greatest (of the live quarter, or
				// of the one before a rollover): confirmed by a
				// recompute over the next rounds, not all in this one.
				s.confirm[a] = q
				continue
			}
			if old, ok := batch[a]; !ok || q < old {
				batch[a] = q
			}
		}
	}
	n := 0
	for a, q := range s.confirm {
		if n == confirmChunk {
			break
		}
		if old, ok := batch[a]; !ok || q < old {
			batch[a] = q
		}
		delete(s.confirm, a)
		n++
	}
	if len(batch) > 0 {
		err := s.sv.Recompute(ctx, batch, nil)
		// Accounts marked again (a chunk that landed late or failed)
		// may lie outside the batch (inside a range): a sweep finds them.
		remarked := s.sv.Remarked()
		if err != nil {
			s.requeue(batch, delays, remarked)
			return err
		}
		if remarked {
			s.mu.Lock()
			s.sweep = true
			s.mu.Unlock()
		}
		s.recomputed.Add(float64(len(batch)))
		s.copyDue = true
	}
	// Readers see the rows once the reader tables have them, where they
	// are tables and this process keeps them; else now.
	if refresh && (s.copyDue || sweep || time.Since(s.copyAt) > 5*time.Second) {
		// (Also every 5 s without news: other processes' changes, and
		// the lease of a holder that went away.) A failure here is not a
		// failed recompute: the next round tries again (also the round at
		// shutdown, after a refresh the stop interrupted).
		if err := s.keepCopy(ctx, sweep); err != nil {
			if ctx.Err() == nil {
				s.errs.Inc()
				s.cwarn.Do(func(n int) {
					s.log.Warn("reader tables: refresh failed; retrying", "err", err, "repeats", n)
				})
			}
		} else {
			s.copyDue = false
		}
		s.copyAt = time.Now()
	}
	s.observe(delays)
	return sweepErr
}

// observe reports the served delay of records (record second → count)
// whose accounts' rows readers see now.
func (s *server) observe(delays map[int64]int) {
	now := time.Now()
	for sec, n := range delays {
		// As usagepipe_event_delay_seconds: from the middle of the second.
		s.delay.ObserveN(max(now.Sub(time.Unix(sec, 0)).Seconds()-0.5, 0), uint64(n))
	}
}

// heartbeat beats for the copy lease every 5 s while this process holds
// it, until ctx is done.
func (s *server) heartbeat(ctx context.Context) {
	tick := time.NewTicker(5 * time.Second)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		if h, _ := s.beatAs.Load().(string); h != "" {
			// A failed beat is retried at the next tick; the holder's
			// refreshes report ClickHouse trouble.
			_ = schema.BeatAs(ctx, s.conn, s.scfg.Database, h)
		}
	}
}

// held records whether this process holds the copy lease.
func (s *server) held(c *schema.Copy) {
	s.holder = c.Holds()
	s.beatAs.Store(c.Holder())
	if s.holder {
		s.holds.Set(1)
	} else {
		s.holds.Set(0)
	}
}

// keepCopy brings the reader tables up to date where they are tables
// (docs/design.md, "Reader tables where views cannot filter"): if this
// process holds the copy lease, or takes it because nobody keeps them, it
// replaces every quarter whose served rows changed since its last
// install; full also compares every quarter (what a crash between a
// recompute and its copy_dirty row leaves).
func (s *server) keepCopy(ctx context.Context, full bool) error {
	s.copyMu.Lock()
	defer s.copyMu.Unlock()
	if s.copy == nil {
		tables, err := s.sv.ReaderTablesOn()
		if err != nil || !tables {
			return err
		}
		s.copy = schema.NewCopy(s.conn, s.scfg)
	}
	c := s.copy
	var up uint64
	if err := s.conn.QueryRow(ctx, "SELECT toUInt64(uptime())").Scan(&up); err != nil {
		return fmt.Errorf("reader tables: server uptime: %w", err)
	}
	if up < s.uptime {
		// ClickHouse restarted: it may have loaded replaced parts again.
		full = true
	}
	s.uptime = up
	if !c.Holds() {
		// A holder whose refresh failed (ClickHouse restarting) takes it
		// again at once; others when nobody keeps the copy.
		take := s.holder
		if !take {
			var err error
			if take, err = c.ShouldTake(ctx); err != nil || !take {
				return err
			}
		}
		if err := c.Acquire(ctx); err != nil {
			// Try again at once next time, whatever this attempt left.
			s.holder = true
			return err
		}
		if !s.holder {
			s.log.Info("reader tables: took the copy lease")
		}
		s.held(c)
		full = true
	}
	if err := c.Beat(ctx); err != nil {
		return err
	}
	due, err := c.Due(ctx)
	if err != nil {
		return err
	}
	if full {
		differ, err := c.Differing(ctx)
		if err != nil {
			return err
		}
		due = slices.Compact(slices.Sorted(slices.Values(append(due, differ...))))
	}
	for i, q := range due {
		if i > 0 {
			if err := c.Beat(ctx); err != nil {
				return err
			}
		}
		switch err := c.Refresh(ctx, q); {
		case errors.Is(err, schema.ErrLeaseLost):
			s.held(c)
			s.log.Info("reader tables: another process took the copy lease")
			return nil
		case errors.Is(err, schema.ErrCalendar):
			// Not this process's to keep: let one of the right calendar.
			rerr := c.Release(ctx)
			s.held(c)
			return errors.Join(err, rerr)
		case err != nil:
			s.held(c) // a failed refresh took new stage tables
			// The lease was not lost: if taking new stages failed too
			// (ClickHouse restarting), take it again at once next round,
			// as after a failed Acquire above. Dropping the claim left
			// every process waiting for the 30 s takeover rule while a
			// replaced part that the restart loaded again showed every
			// key of its quarter twice.
			s.holder = true
			return err
		}
		s.installs.Inc()
	}
	return nil
}

// syncCopy makes the reader tables equal the served rows (taking the
// lease), for an --until-caught-up exit.
func (s *server) syncCopy(ctx context.Context) error {
	s.copyMu.Lock()
	defer s.copyMu.Unlock()
	if s.copy == nil {
		tables, err := s.sv.ReaderTablesOn()
		if err != nil || !tables {
			return err
		}
		s.copy = schema.NewCopy(s.conn, s.scfg)
	}
	err := s.copy.Sync(ctx)
	s.held(s.copy)
	return err
}

// close gives up the copy lease (a clean stop), so that the next process
// takes it at once instead of after copyTakeover.
func (s *server) close(ctx context.Context) {
	if s.copy == nil || !s.copy.Holds() {
		return
	}
	if err := s.copy.Release(ctx); err != nil {
		s.log.Warn("reader tables: could not drop this process's stage tables; the next holder will", "err", err)
	}
	s.held(s.copy)
}

func (s *server) requeue(batch map[string]int32, delays map[int64]int, sweep bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for a, q := range batch {
		if old, ok := s.pending[a]; !ok || q < old {
			s.pending[a] = q
		}
	}
	for sec, n := range delays {
		s.delays[sec] += n
	}
	s.sweep = s.sweep || sweep
}

// complete makes the served rows complete before an --until-caught-up run
// exits: the pending accounts, then sweeps until one finds nothing stale
// (other instances may still be writing: after maxRounds it stops and
// says so; their own runs complete their accounts).
func (s *server) complete(ctx context.Context) error {
	const maxRounds = 10
	// Strict: every live row is stale, also another writer's (a crashed
	// writer's last live row may miss its last flush, whose mark a young
	// live row would otherwise satisfy). Beside instances that write live
	// rows, that recomputes theirs every round, and the loop below ends
	// after maxRounds with a warning.
	s.sv.LiveConfirmAge = 0
	// The serve loop's heartbeat stopped with it: beat for the copy lease
	// here too, or long final sweeps would let another process take it.
	hctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() { s.heartbeat(hctx) })
	defer wg.Wait()
	defer stop()
	backoff := 200 * time.Millisecond
	copyFails := 0
	for round := 1; ; round++ {
		s.mu.Lock()
		s.sweep = true
		s.mu.Unlock()
		// The reader tables are synced once, after the last round (a
		// refresh here would be repeated there: its snapshot shares the
		// second of the round's copy_dirty row).
		err := s.round(ctx, true, false)
		if err == nil {
			stale, err2 := s.sv.Stale(ctx)
			err = err2
			if err == nil && len(stale) > 0 && round >= maxRounds {
				s.log.Warn("served rollups: accounts still stale after the final sweeps (other instances writing?)", "accounts", len(stale))
			}
			if err == nil && (len(stale) == 0 || round >= maxRounds) {
				// The reader tables (where they are tables) equal the
				// served rows before the exit.
				err = s.syncCopy(ctx)
				if err == nil {
					return nil
				}
				if copyFails++; copyFails == maxRounds || errors.Is(err, schema.ErrCalendar) {
					return fmt.Errorf("reader tables: %w", err)
				}
			}
		}
		if err != nil {
			s.errs.Inc()
			if ctx.Err() != nil {
				return fmt.Errorf("served rollups: %w", err)
			}
			s.warn.Do(func(n int) {
				s.log.Warn("served rollups: final recompute failed; retrying", "err", err, "backoff", backoff, "repeats", n)
			})
			if !backOff(ctx, &backoff) {
				return fmt.Errorf("served rollups: %w", err)
			}
		}
	}
}

// backOff waits *d after a failure and doubles it (up to 5 s) for the
// next; false when ctx ended first.
func backOff(ctx context.Context, d *time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(*d):
	}
	*d = min(2**d, 5*time.Second)
	return true
}
