package schema

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// Served computes the served rollup and feature rows from the facts and
// stores them (docs/design.md, "Served rollups"). Its methods are safe for
// concurrent use; it holds no state besides its settings.
type Served struct {
	topo *Topology
	cfg  Config
	// ChunkAccounts and ChunkBytes bound the accounts of one recompute
	// INSERT that names them in a list (its account list is a literal, and
	// max_query_size is 256 KiB).
	ChunkAccounts int
	ChunkBytes    int
	// RangeMin and RangeAccountQuarters: a group of at least RangeMin
	// accounts that holds at least half of the accounts between its first
	// and last (by fact_account_months) is recomputed by key ranges
	// instead of lists, each range covering up to RangeAccountQuarters
	// account-quarters of the group (see recomputeOn).
	RangeMin             int
	RangeAccountQuarters int

	// lastMonth is the greatest month index known to hold an accepted
	// event (cluster only: each shard holds its own accounts' months).
	lastMonth atomic.Int32
	// readAll: lastMonth includes every shard's greatest month as of a
	// read (done once, by the first recompute or verify of the process).
	readAll atomic.Bool
	// readers: 0 not known yet, 1 views, 2 tables kept by Copy (every
	// recompute then writes a copy_dirty row after its rows landed).
	readers atomic.Int32
	// remarked: a recompute marked accounts again (Remarked).
	remarked atomic.Bool

	// LiveWriter is this process's ID in the live rows it writes, and
	// LiveConfirmAge how long Stale leaves another writer's live rows to
	// that writer (0: every live row is stale). See docs/design.md,
	// "Live quarter".
	LiveWriter     uint16
	LiveConfirmAge time.Duration
}

// Remarked reports whether a recompute marked accounts again since the last
// call (a chunk that landed late or whose rollup INSERT failed): accounts
// outside its batch may be among them, which only a sweep finds.
func (s *Served) Remarked() bool { return s.remarked.Swap(false) }

// ReaderTablesOn reports whether the reader objects are tables kept by
// Copy on this database's server (ReaderTables), asking it once.
func (s *Served) ReaderTablesOn() (bool, error) {
	switch s.readers.Load() {
	case 1:
		return false, nil
	case 2:
		return true, nil
	}
	if s.topo.Clustered() {
		s.readers.Store(1)
		return false, nil
	}
	sv, err := s.topo.Global.ServerVersion()
	if err != nil {
		return false, fmt.Errorf("served rollups: server version: %w", err)
	}
	if ReaderTables(sv.Version.Major, false) {
		s.readers.Store(2)
		return true, nil
	}
	s.readers.Store(1)
	return false, nil
}

// quarterDate is the first day of quarter (month index) q, YYYY-MM-DD.
func quarterDate(q int32) string { return fmt.Sprintf("%04d-%02d-01", q/12, q%12+1) }

// NewServed returns a Served for the database and fiscal calendar of cfg
// on the single server conn reaches.
func NewServed(conn driver.Conn, cfg Config) (*Served, error) {
	return NewServedOn(SingleServer(conn), cfg)
}

// NewServedOn returns a Served for the database and fiscal calendar of cfg
// on topology t (cfg.Cluster must be t's): each shard's rows are computed
// and read on a caught-up replica of that shard.
func NewServedOn(t *Topology, cfg Config) (*Served, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Cluster != t.Cluster {
		return nil, fmt.Errorf("%w: served rollups: clickhouse cluster %q, but connected to %q", ErrConfig, cfg.Cluster, t.Cluster)
	}
	return &Served{topo: t, cfg: cfg.withDefaults(), ChunkAccounts: 1000, ChunkBytes: 96 << 10, RangeMin: 256, RangeAccountQuarters: 8000}, nil
}

// The tables each kind of read needs caught up on a cluster replica.
var (
	computeTables = []string{"fact_account_months", "fact_user_activity", "fact_feature_users", "fact_event_counts", "fact_seat_events", "fact_seat_purchases"}
	staleTables   = []string{"served_rollups", "rollup_marks", "fact_account_months"}
	verifyTables  = append(slices.Clone(computeTables), "served_rollups", "served_feature_sets")
)

// skew is K of docs/design.md ("ClickHouse clusters"): how far apart two
// nodes' clocks may be, in seconds; 0 on one server.
func (s *Served) skew() uint32 {
	if s.topo.Clustered() {
		return clusterSkew
	}
	return 0
}

// NoteMonth tells s that month index m holds an accepted event (the serve
// loop passes every flush's months): on a cluster the global last quarter
// is the greatest month s knows of or reads on a shard. It only grows.
func (s *Served) NoteMonth(m int32) {
	if !s.topo.Clustered() {
		return
	}
	for {
		old := s.lastMonth.Load()
		if m <= old || s.lastMonth.CompareAndSwap(old, m) {
			return
		}
	}
}

// lastQLiteral is the last quarter index as SQL for a recompute on conn's
// server: "" on one server (the query reads it), else the greatest of the
// months known and the ones this shard holds; the first call of a process
// reads every shard's (a fresh process, e.g. migrate's backfill or verify,
// knew only the shard it began with: the accounts of shard 0 got no row
// for a quarter only shard 1's events had reached). Later, the months of
// this process's flushes and every sweep's reads of all shards keep it
// current. A value too low only leaves the newest quarter's rows missing,
// which the sweep (reading every shard) finds; it never makes a row wrong.
func (s *Served) lastQLiteral(ctx context.Context, conn driver.Conn) (string, error) {
	if !s.topo.Clustered() {
		return "", nil
	}
	if !s.readAll.Load() {
		// Best effort, once: a shard that does not answer now must not
		// keep the others' recomputes waiting (its months come with the
		// next sweep that reads it; too low only leaves rows missing).
		for _, sh := range s.topo.Shards {
			_ = sh.Use(ctx, func(r *Replica) error { return s.noteMaxMonth(ctx, r.Conn) })
		}
		s.readAll.Store(true)
	}
	if err := s.noteMaxMonth(ctx, conn); err != nil {
		return "", err
	}
	if s.lastMonth.Load() == 0 {
		return "toInt32(0)", nil
	}
	return fmt.Sprintf("toInt32(%d)", s.QuarterOf(s.lastMonth.Load())), nil
}

// noteMaxMonth notes the greatest month of the facts on conn's server.
func (s *Served) noteMaxMonth(ctx context.Context, conn driver.Conn) error {
	var (
		m int32
		n uint64
	)
	if err := conn.QueryRow(ctx, "SELECT toInt32(toYear(max(month)) * 12 + toMonth(max(month)) - 1), count() FROM "+s.cfg.Database+".fact_account_months").Scan(&m, &n); err != nil {
		return fmt.Errorf("last quarter: %w", err)
	}
	if n > 0 {
		s.NoteMonth(m)
	}
	return nil
}

// byShard splits accounts by the shard that holds them.
func (s *Served) byShard(accounts map[string]int32) []map[string]int32 {
	if len(s.topo.Shards) == 1 {
		return []map[string]int32{accounts}
	}
	out := make([]map[string]int32, len(s.topo.Shards))
	for a, q := range accounts {
		i := s.topo.ShardIndex(a)
		if out[i] == nil {
			out[i] = map[string]int32{}
		}
		out[i][a] = q
	}
	return out
}

// recomputeTimeout is the server-side limit of one recompute INSERT
// (max_execution_time), and versionMaxAge how old a version may be when a
// chunk starts: with landLimit they keep every row landing within ~41 s of
// its updated_at, which the contract's "updated_at >= U - 60 s" poll needs.
const (
	recomputeTimeout = 20
	versionMaxAge    = 10 * time.Second
	// startLimit: an INSERT that starts more than this after its S fails
	// (throwIf in the statement; now() is the query's start time).
	startLimit = 10
	// landLimit: a chunk whose INSERTs landed more than this after S is
	// recomputed with a new S.
	landLimit = 40
)

// maxQuerySize is the max_query_size of recompute and verify queries: the
// account list of a chunk appears in each fact scan (7 times in the
// rollups query), and a chunk's list is up to ChunkBytes.
const maxQuerySize = 16 << 20

// QuarterOf is the quarter index (the month index of the quarter's first
// month) of month index m under the fiscal start month of s.
func (s *Served) QuarterOf(m int32) int32 { return quarterOf(m, s.cfg.FiscalStartMonth) }

func quarterOf(m int32, fiscalStart int) int32 {
	f := int32(fiscalStart - 1)
	return m - ((m-f)%3+3)%3
}

// serverSecond is the clock of conn's server, in Unix seconds.
func serverSecond(ctx context.Context, conn driver.Conn) (uint32, error) {
	var t uint32
	if err := conn.QueryRow(ctx, "SELECT toUInt32(now())").Scan(&t); err != nil {
		return 0, fmt.Errorf("server clock: %w", err)
	}
	return t, nil
}

// waitPast returns the clock of conn's server once it is past second t.
func waitPast(ctx context.Context, conn driver.Conn, t uint32) (uint32, error) {
	for {
		now, err := serverSecond(ctx, conn)
		if err != nil || now > t {
			return now, err
		}
		select {
		case <-ctx.Done():
			return 0, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Recompute stores new served rows for accounts: account → the earliest
// quarter index to recompute (through the last quarter). Every fact
// acknowledged before Recompute was called is in the rows it writes (it
// waits until the server clock has passed the second it was called in,
// at most one second). Feature rows are written before rollup rows, so a
// rollup row of version S vouches for the feature rows of S. progress, if
// not nil, is called after each chunk with the accounts done so far.
//
// On a cluster each shard's accounts are recomputed on a replica of that
// shard that has caught up (Topology.CaughtUp, checked before each chunk),
// and the clock must pass one more second (the skew allowance). A shard
// that fails does not keep the others from being recomputed; the error
// names every shard that failed.
func (s *Served) Recompute(ctx context.Context, accounts map[string]int32, progress func(done, total int)) (err error) {
	if len(accounts) == 0 {
		return nil
	}
	copyTables, err := s.ReaderTablesOn()
	if err != nil {
		return err
	}
	if copyTables {
		// After the rows landed (or some chunks did, before an error):
		// the copy holder refreshes the quarters from the earliest one.
		from := int32(1 << 30)
		for _, q := range accounts {
			from = min(from, q)
		}
		defer func() {
			mctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
			defer cancel()
			if e := MarkDirty(mctx, s.topo.Global, s.cfg.Database, quarterDate(from)); e != nil && err == nil {
				err = e
			}
		}()
	}
	var errs []error
	done := 0
	for i, part := range s.byShard(accounts) {
		if len(part) == 0 {
			continue
		}
		base := done
		err := s.topo.Shards[i].Use(ctx, func(r *Replica) error {
			return s.recomputeOn(ctx, r, part, func(d int) {
				if progress != nil {
					progress(base+d, len(accounts))
				}
			})
		})
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			errs = append(errs, err)
			continue
		}
		done += len(part)
	}
	return errors.Join(errs...)
}

// recomputeOn recomputes accounts, all of one shard, on replica r.
func (s *Served) recomputeOn(ctx context.Context, r *Replica, accounts map[string]int32, progress func(done int)) error {
	conn := r.Conn
	t0, err := serverSecond(ctx, conn)
	if err != nil {
		return err
	}
	// On a cluster the mark may carry another node's clock: 2K more
	// (docs/design.md, "Clocks").
	sec, err := waitPast(ctx, conn, t0+2*s.skew())
	if err != nil {
		return err
	}
	taken := time.Now()
	// Group by first quarter (usually one or two groups: the current
	// quarter, and late events), then chunk.
	byQ := map[int32][]string{}
	for a, q := range accounts {
		byQ[q] = append(byQ[q], a)
	}
	qs := make([]int32, 0, len(byQ))
	for q := range byQ {
		qs = append(qs, q)
	}
	slices.Sort(qs)
	done := 0
	size := s.ChunkAccounts
	// Key ranges recomputed so far, all from a quarter no later than the
	// current group's: an account of a later group inside one is done
	// (its rows from that earlier quarter on were computed after S).
	var covered spans
	late := 0     // late landings in a row of a one-account list
	grow := true  // chunks grow back after a success (not once one landed late: it would again)
	restarts := 0 // late starts in a row of a chunk's first statement
	for _, q := range qs {
		list := byQ[q]
		slices.Sort(list)
		if len(covered) > 0 {
			rest := list[:0]
			for _, a := range list {
				if !covered.contain(a) {
					rest = append(rest, a)
				}
			}
			if skipped := len(list) - len(rest); skipped > 0 {
				done += skipped
				progress(done)
			}
			list = rest
		}
		// A dense group (most accounts of its key range: a busy stream
		// touches most accounts each round) is cheaper by ranges: a
		// list's literal is parsed and turned into a set once per fact
		// scan, which cost as much as the scans themselves (measured:
		// docs/design.md, "Recompute by key ranges").
		budget, err := s.rangeChunk(ctx, conn, list)
		if err != nil {
			return err
		}
		rsize := budget
		for len(list) > 0 {
			var (
				n    int
				expr string
				span spanOf
			)
			if rsize > 0 {
				// Ranges tile the group's key range without gaps: a
				// chunk runs from its first account up to (not
				// including) the next chunk's, so that halving a chunk
				// never leaves an account between two ranges with a
				// row of a chunk that landed late.
				n = min(len(list), rsize)
				span = spanOf{lo: list[0], hi: list[n-1], incl: true}
				if n < len(list) {
					span.hi, span.incl = list[n], false
				}
				expr = span.expr()
			} else {
				n, expr = s.chunk(list[:min(len(list), size)])
			}
			if time.Since(taken) > versionMaxAge {
				if sec, err = serverSecond(ctx, conn); err != nil {
					return err
				}
				taken = time.Now()
			}
			var lastQ string
			if s.topo.Clustered() {
				// After S, before the read: every fact acknowledged
				// before S is on this replica. A slow check takes a new
				// S (and checks again), so that the rows' snapshot is
				// not much newer than their version.
				for {
					if err := s.topo.CaughtUp(ctx, r, s.cfg.Database, computeTables...); err != nil {
						return err
					}
					if time.Since(taken) < 2*time.Second {
						break
					}
					if sec, err = serverSecond(ctx, conn); err != nil {
						return err
					}
					taken = time.Now()
				}
				if lastQ, err = s.lastQLiteral(ctx, conn); err != nil {
					return err
				}
			}
			landed, stmt, err := s.recomputeChunk(ctx, conn, expr, q, sec, lastQ)
			if err != nil {
				// (After the rows landed, stmt 2, nothing is about size.)
				sized := stmt < 2 && ctx.Err() == nil && sizeError(err)
				switch {
				case stmt >= 1:
					// The rollup INSERT failed (or the clock read after
					// it): some or all of its rows may have landed, at
					// any time on 18.16. Marked again (if the server
					// still answers), so that the next round writes them
					// anew whatever this call does.
					m, merr := s.remark(context.WithoutCancel(ctx), conn, expr, q)
					if merr != nil || !sized {
						return errors.Join(err, merr)
					}
					now, werr := waitPast(ctx, conn, m+2*s.skew())
					if werr != nil {
						return errors.Join(err, werr)
					}
					sec, taken = now, time.Now()
				case !sized:
					// Not about the chunk's size (the connection, a
					// restart): the round fails, and the accounts stay
					// stale for the next one.
					return err
				case lateStart(err):
					// The first statement started too long after S: a
					// pause before it, not the chunk's size. The same
					// chunk with a new S, a few times at most.
					now, cerr := serverSecond(ctx, conn)
					if cerr != nil {
						return errors.Join(err, cerr)
					}
					sec, taken = now, time.Now()
					if restarts++; restarts <= maxRestarts {
						continue
					}
					return fmt.Errorf("recompute: a chunk started more than %d s after its version %d times in a row: %w", startLimit, restarts, err)
				}
				switch {
				case n == 1 && len(list) == 1:
					// The group's last account alone fails (as a range
					// it is the same one account).
					return err
				case rsize > 1:
					// Too slow or too big (max_execution_time, memory):
					// halve the range and go on.
					rsize = max(1, n/2)
				case rsize == 1:
					// Even one account's range fails: the accounts
					// between it and the next (not in the batch) are
					// too much here; the rest of the group by lists.
					rsize = 0
				case n == 1:
					// A list of one account that fails is an error.
					return err
				default:
					size = max(1, n/2)
				}
				continue
			}
			restarts = 0
			if landed > sec+landLimit {
				// Landed too late for the updated_at poll (18.16 does
				// not bound a query's whole run by max_execution_time):
				// again, with a new S, so the newest row is on time
				// (a range again from the same first account: the
				// accounts of the late range stay covered). First the
				// chunk's accounts are marked again, so that if this
				// call ends before they are all redone (an error, a
				// give-up, shutdown) the next round redoes them; the
				// new S is past the new marks.
				m, err := s.remark(context.WithoutCancel(ctx), conn, expr, q)
				if err != nil {
					return err
				}
				if sec, err = waitPast(ctx, conn, m+2*s.skew()); err != nil {
					return err
				}
				taken = time.Now()
				grow = false
				switch {
				case rsize > 1:
					rsize = max(1, n/2)
				case rsize == 1:
					rsize = 0 // as for a failure: the rest by lists
				case n > 1:
					size = max(1, n/2)
				default:
					// One account that lands late again and again: the
					// round fails (marked again above, it stays stale
					// for the next round) rather than looping here.
					if late++; late >= maxLateOne {
						return fmt.Errorf("recompute: one account's rows landed more than %d s after their version %d times", landLimit, late)
					}
				}
				continue
			}
			late = 0
			if rsize > 0 {
				covered.add(span)
				if grow {
					rsize = min(budget, 2*rsize) // back up after a halving
				}
			} else if grow {
				size = min(s.ChunkAccounts, 2*size)
			}
			list = list[n:]
			done += n
			progress(done)
		}
	}
	return nil
}

// maxLateOne: how many times in a row a one-account chunk may land too late
// before the recompute gives up (the round fails and is retried); and
// maxRestarts how many times a chunk whose first statement started too
// late is tried again at the same size.
const (
	maxLateOne  = 3
	maxRestarts = 3
)

// remark marks the accounts that expr selects again, from quarter q (or
// an account's first month with facts, if later), at the server's clock,
// and returns that second: their rows of a chunk that landed too late, or
// may have, are then stale whatever happens to this call, and the next
// recompute stamps them with a version past the new marks.
func (s *Served) remark(ctx context.Context, conn driver.Conn, expr string, q int32) (uint32, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_query_size": maxQuerySize}))
	db := s.cfg.Database
	err := conn.Exec(ctx, fmt.Sprintf("INSERT INTO %[1]s.rollup_marks (account_id, month, marked_at) "+
		"SELECT account_id, greatest(min(month), toDate('%04[2]d-%02[3]d-01')), now() FROM %[1]s.fact_account_months WHERE %[4]s GROUP BY account_id",
		db, q/12, q%12+1, expr))
	if err != nil {
		return 0, fmt.Errorf("mark again: %w", err)
	}
	s.remarked.Store(true)
	return serverSecond(ctx, conn)
}

// lateStart reports whether a recompute statement failed its late-start
// guard (throwIf: it started more than startLimit after its S).
func lateStart(err error) bool {
	var e *clickhouse.Exception
	return errors.As(err, &e) && e.Code == 395
}

// sizeError reports whether a recompute failed for its chunk's size or
// time (server limits, a too-big statement, the late-start guard), which a
// smaller chunk may cure; other errors (network, a restarting server) end
// the recompute.
func sizeError(err error) bool {
	var e *clickhouse.Exception
	if !errors.As(err, &e) {
		return false
	}
	switch e.Code {
	case 158, 307, 396, // TOO_MANY_ROWS, TOO_MANY_BYTES, TOO_MANY_ROWS_OR_BYTES
		159, 160, // TIMEOUT_EXCEEDED, TOO_SLOW
		167, 168, // TOO_DEEP_AST, TOO_BIG_AST
		191,      // SET_SIZE_LIMIT_EXCEEDED
		173, 241, // CANNOT_ALLOCATE_MEMORY, MEMORY_LIMIT_EXCEEDED
		395: // FUNCTION_THROW_IF_VALUE_IS_NON_ZERO: started too long after S
		return true
	case 1001: // STD_EXCEPTION: only an allocation failure is about size
		return strings.Contains(e.Message, "bad_alloc")
	}
	// Not 62 (SYNTAX_ERROR): 18.16 reports a statement over
	// max_query_size as a plain syntax error, and a chunk's statement is
	// far below maxQuerySize. Not a client-side timeout either: the
	// query may still run on the server, and a smaller chunk would run
	// beside it (the server's max_execution_time ends a slow one first,
	// as code 159).
	return false
}

// spanOf is a key range of account_id: from lo, through hi if incl,
// else up to hi.
type spanOf struct {
	lo, hi string
	incl   bool
}

func (p spanOf) expr() string {
	var b strings.Builder
	b.WriteString("account_id >= ")
	quote(&b, p.lo)
	if p.incl {
		b.WriteString(" AND account_id <= ")
	} else {
		b.WriteString(" AND account_id < ")
	}
	quote(&b, p.hi)
	return b.String()
}

// spans are the key ranges recomputed so far in one call, adjacent ones
// merged (the chunks of one group tile its range), so that checking an
// account costs about one comparison per group.
type spans []spanOf

func (ss *spans) add(p spanOf) {
	if n := len(*ss); n > 0 {
		if last := &(*ss)[n-1]; !last.incl && last.hi == p.lo {
			last.hi, last.incl = p.hi, p.incl
			return
		}
	}
	*ss = append(*ss, p)
}

func (ss spans) contain(a string) bool {
	for _, p := range ss {
		if a >= p.lo && (a < p.hi || p.incl && a == p.hi) {
			return true
		}
	}
	return false
}

// rangeChunk returns how many of list's accounts (sorted) go into one
// range chunk, or 0 if list
// is recomputed by account lists: when it is small, or when the key range
// from its first to its last account holds more than twice as many
// accounts with facts (a range recomputes every account in it: correct,
// since every account's rows are computed from the facts after S, but
// work wasted on accounts that had no news). The size keeps a chunk near
// RangeAccountQuarters account-quarters over the range's whole span of
// months.
func (s *Served) rangeChunk(ctx context.Context, conn driver.Conn, list []string) (int, error) {
	if len(list) < max(1, s.RangeMin) || s.RangeAccountQuarters <= 0 {
		return 0, nil
	}
	// Dense: at most 2·len(list) accounts with facts in the range. The
	// DISTINCT … LIMIT stops reading once it has one more than that, so
	// the check costs about what the batch does, not the whole table.
	within := spanOf{lo: list[0], hi: list[len(list)-1], incl: true}.expr()
	limit := 2*len(list) + 1
	var n uint64
	query := fmt.Sprintf("SELECT count() FROM (SELECT DISTINCT account_id FROM %s.fact_account_months WHERE %s LIMIT %d)", s.cfg.Database, within, limit)
	if err := conn.QueryRow(ctx, query).Scan(&n); err != nil {
		return 0, fmt.Errorf("recompute: accounts in range: %w", err)
	}
	if n >= uint64(limit) {
		return 0, nil
	}
	// A recompute reads each account's seat and purchase facts over its
	// whole history (its grid starts at its first quarter), whatever q
	// is: the chunk is sized by the range's whole span of months.
	var first, last int32
	query = "SELECT toInt32(toYear(min(month)) * 12 + toMonth(min(month)) - 1), toInt32(toYear(max(month)) * 12 + toMonth(max(month)) - 1) FROM " + s.cfg.Database + ".fact_account_months WHERE " + within
	if err := conn.QueryRow(ctx, query).Scan(&first, &last); err != nil {
		return 0, fmt.Errorf("recompute: months in range: %w", err)
	}
	quarters := 1
	if n > 0 && last > first {
		quarters += int(s.QuarterOf(last)-s.QuarterOf(first)) / 3
	}
	return max(1, s.RangeAccountQuarters/quarters), nil
}

// chunk returns how many of list's first accounts go into one recompute,
// and the SQL expression selecting them.
func (s *Served) chunk(list []string) (int, string) {
	var b strings.Builder
	b.WriteString("account_id IN (")
	n := 0
	for n < len(list) && n < s.ChunkAccounts && (n == 0 || b.Len() < s.ChunkBytes) {
		if n > 0 {
			b.WriteByte(',')
		}
		quote(&b, list[n])
		n++
	}
	b.WriteByte(')')
	return n, b.String()
}

// quote writes v as a ClickHouse string literal: backslash escapes for
// quote and backslash, \xHH for control bytes.
func quote(b *strings.Builder, v string) {
	b.WriteByte('\'')
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '\'' || c == '\\':
			b.WriteByte('\\')
			b.WriteByte(c)
		case c < 0x20 || c == 0x7f:
			fmt.Fprintf(b, "\\x%02x", c)
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('\'')
}

type oneThread struct{}

// OneThread returns ctx under which recomputes run on one server thread
// (max_threads = 1): a recompute beside a backlog leaves the other cores
// to ingestion (benchmarks/README.md, "Recomputes on one thread during a
// backlog").
func OneThread(ctx context.Context) context.Context {
	return context.WithValue(ctx, oneThread{}, true)
}

// recomputeChunk runs one chunk's INSERTs with version second sec and
// returns the server clock after they landed; on error, failed says where:
// 0 the feature INSERT, 1 the rollup INSERT, 2 the clock read after both.
func (s *Served) recomputeChunk(ctx context.Context, conn driver.Conn, accounts string, fromQ int32, sec uint32, lastQ string) (landed uint32, failed int, err error) {
	qs, err := s.recomputeStatements(accounts, fromQ, lastQ, sec, recomputeVersion(sec))
	if err != nil {
		return 0, 0, err
	}
	settings := clickhouse.Settings{"max_execution_time": recomputeTimeout, "max_query_size": maxQuerySize}
	if ctx.Value(oneThread{}) != nil {
		settings["max_threads"] = 1
	}
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(settings))
	for i, q := range qs {
		if err := conn.Exec(ctx, q); err != nil {
			return 0, i, fmt.Errorf("recompute %s: %w", [2]string{"served_feature_sets", "served_rollups"}[i], err)
		}
	}
	// The rows have landed: a failure to read the clock now (the
	// connection, a cancelled ctx) leaves when unknown (failed 2).
	if landed, err = serverSecond(ctx, conn); err != nil {
		return 0, 2, err
	}
	return landed, 0, nil
}

// recomputeStatements are the INSERT … SELECTs of one recompute: feature
// sets first (the feature rows of each account and quarter, grouped into
// one row), then rollup rows (a rollup row of version S vouches for the
// feature sets of S).
func (s *Served) recomputeStatements(accounts string, fromQ int32, lastQ string, sec uint32, version uint64) ([]string, error) {
	feat, roll, err := s.computeSQL(accounts, fromQ, lastQ)
	if err != nil {
		return nil, err
	}
	db := s.cfg.Database
	stamp := fmt.Sprintf("toDateTime(%d, 'UTC'), toUInt64(%d)", sec, version)
	// A statement that starts too long after its S fails: its rows could
	// land too late for the updated_at poll (a pause between reading S
	// and sending the INSERT).
	guard := fmt.Sprintf(" WHERE throwIf(now() > toDateTime(%d, 'UTC') + %d) = 0", sec, startLimit)
	return []string{
		"INSERT INTO " + db + ".served_feature_sets (fy, account_id, quarter_start, quarter_end, quarter, features, active_users, events, updated_at, version) " +
			fmt.Sprintf("SELECT %d, account_id, quarter_start, qe, ql, arrayMap(r -> r.1, rs), arrayMap(r -> r.2, rs), arrayMap(r -> r.3, rs), %s FROM (", s.cfg.FiscalStartMonth, stamp) +
			// One array of tuples, sorted: the three arrays are aligned by
			// construction and a set's order does not depend on threads.
			fmt.Sprintf("SELECT account_id, quarter_start, any(quarter_end) AS qe, any(quarter) AS ql, arraySort(groupArray((feature, active_users, events))) AS rs FROM (%s)%s GROUP BY account_id, quarter_start)", feat, guard),
		"INSERT INTO " + db + ".served_rollups (fy, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at, updated_at, version) " +
			fmt.Sprintf("SELECT %d, account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at, %s FROM (%s)%s", s.cfg.FiscalStartMonth, stamp, roll, guard),
	}, nil
}

// ComputeSQL renders the SELECTs of the feature and rollup rows that a
// recompute of the accounts selected by the SQL boolean expression accounts
// (on account_id; "1" for all) from quarter index fromQ would store
// (benchmarks and verify compare with them).
func (s *Served) ComputeSQL(accounts string, fromQ int32) (features, rollups string, err error) {
	return s.computeSQL(accounts, fromQ, "")
}

// RecomputeSQL is the INSERT … SELECT statements one recompute chunk runs,
// stamped with server second sec (for tools that run them elsewhere, such
// as the chDB benchmark).
func (s *Served) RecomputeSQL(accounts string, fromQ int32, sec uint32) ([]string, error) {
	return s.recomputeStatements(accounts, fromQ, "", sec, uint64(sec)<<32)
}

// computeSQL renders the SELECTs of the feature and rollup rows of the
// accounts that the SQL expression accounts selects, from quarter fromQ.
func (s *Served) computeSQL(accounts string, fromQ int32, lastQ string) (features, rollups string, err error) {
	d := tmplData{DB: s.cfg.Database, FiscalStartMonth: s.cfg.FiscalStartMonth, Accounts: accounts, FromQ: fromQ,
		FromDate: fmt.Sprintf("toDate('%04d-%02d-01')", fromQ/12, fromQ%12+1), LastQ: lastQ}
	if features, err = renderData(s.cfg, "compute_features.sql", d); err != nil {
		return "", "", err
	}
	if rollups, err = renderData(s.cfg, "compute_rollups.sql", d); err != nil {
		return "", "", err
	}
	return features, rollups, nil
}

// Stale returns every account with a mark its served rows do not satisfy
// yet (docs/design.md, "Served rollups"), with the earliest quarter to
// recompute. A mark (account, month, marked_at) is satisfied when the
// account has a served row for every quarter from the month's through the
// last quarter, each with updated_at > marked_at. The served rows are read
// first, then the marks, then the last quarter: whatever lands in between
// only makes an account look staler, never fresher.
//
// On a cluster each shard is read on a caught-up replica, and a row
// satisfies a mark only if it is more than the skew allowance newer. A
// shard that cannot be read is skipped: the stale accounts of the others
// come back with the error naming it (a lagging replica of one shard used
// to hold every shard's served rows back).
func (s *Served) Stale(ctx context.Context) (map[string]int32, error) {
	var (
		reads []servedMarks
		last  int32
		any   bool
		errs  []error
	)
	for _, sh := range s.topo.Shards {
		var rd servedMarks
		err := sh.Use(ctx, func(r *Replica) error {
			if err := s.topo.CaughtUp(ctx, r, s.cfg.Database, staleTables...); err != nil {
				return err
			}
			var err error
			rd, err = s.readServedMarks(ctx, r.Conn)
			return err
		})
		if err != nil {
			if ctx.Err() != nil {
				return nil, err
			}
			errs = append(errs, err)
			continue
		}
		reads = append(reads, rd)
		if rd.ok {
			last, any = max(last, rd.last), true
		}
	}
	if !any {
		return nil, errors.Join(errs...)
	}
	if s.topo.Clustered() {
		// The global last quarter: every shard's, read after its marks;
		// noted, so that the recomputes of the stale accounts it finds
		// (on shards that may not hold that quarter) write up to it.
		if m := s.lastMonth.Load(); m > 0 {
			last = max(last, s.QuarterOf(m))
		}
		s.NoteMonth(last)
	}
	stale := map[string]int32{}
	skew := s.skew()
	for _, rd := range reads {
		for a, mm := range rd.marks {
			first := last + 3
			for q := range mm {
				first = min(first, q)
			}
			rows := rd.served[a]
			// Walk up from the first marked quarter: a row must exist and
			// be newer than every mark at or before its quarter (those
			// marks need every later row too). The first row that is not
			// is where the recompute starts; after a rollover that is just
			// the new quarter.
			var newest uint32
			for q := first; q <= last; q += 3 {
				if mt, ok := mm[q]; ok {
					newest = max(newest, mt)
				}
				if t, ok := rows[q]; !ok || t <= newest+skew {
					stale[a] = q
					break
				}
			}
		}
	}
	return stale, errors.Join(errs...)
}

// servedMarks is what Stale reads on one server: the served rows' quarters
// and updated_at, the marks' latest marked_at per quarter, and that
// server's last quarter (ok: it has any month).
type servedMarks struct {
	served, marks map[string]map[int32]uint32
	last          int32
	ok            bool
}

// readServedMarks reads, on conn's server, the served rows first, then the
// marks, then the last quarter: whatever lands in between only makes an
// account look staler, never fresher.
func (s *Served) readServedMarks(ctx context.Context, conn driver.Conn) (servedMarks, error) {
	db := s.cfg.Database
	rd := servedMarks{served: map[string]map[int32]uint32{}, marks: map[string]map[int32]uint32{}}
	now, err := serverSecond(ctx, conn)
	if err != nil {
		return rd, err
	}
	err = scanServed(ctx, conn, fmt.Sprintf("SELECT account_id, toInt32(toYear(quarter_start) * 12 + toMonth(quarter_start) - 1), toUInt32(updated_at), version FROM %s.served_rollups FINAL WHERE fy = %d", db, s.cfg.FiscalStartMonth),
		func(a string, q int32, t uint32, v uint64) {
			m := rd.served[a]
			if m == nil {
				m = map[int32]uint32{}
				rd.served[a] = m
			}
			m[q] = s.servedAt(t, v, now)
		})
	if err != nil {
		return rd, fmt.Errorf("read served_rollups: %w", err)
	}
	err = scan(ctx, conn, "SELECT account_id, toInt32(toYear(month) * 12 + toMonth(month) - 1), toUInt32(max(marked_at)) FROM "+db+".rollup_marks GROUP BY account_id, month",
		func(a string, m int32, t uint32) {
			q := s.QuarterOf(m)
			mm := rd.marks[a]
			if mm == nil {
				mm = map[int32]uint32{}
				rd.marks[a] = mm
			}
			mm[q] = max(mm[q], t)
		})
	if err != nil {
		return rd, fmt.Errorf("read rollup_marks: %w", err)
	}
	rd.last, rd.ok, err = s.lastQuarter(ctx, conn)
	return rd, err
}

// servedAt is what Stale takes for the updated_at of a greatest row of
// version v at server second now: a live row satisfies no mark (0),
// except another writer's live row younger than LiveConfirmAge, which
// that writer confirms (it satisfies every mark).
func (s *Served) servedAt(updated uint32, v uint64, now uint32) uint32 {
	if !IsLive(v) {
		return updated
	}
	age := int64(now) - int64(v>>32)
	if s.LiveConfirmAge > 0 && liveWriter(v) != s.LiveWriter && age < int64(s.LiveConfirmAge/time.Second) {
		return ^uint32(0)
	}
	return 0
}

// scanServed runs a query whose rows are (String, Int32, UInt32, UInt64).
func scanServed(ctx context.Context, conn driver.Conn, q string, fn func(string, int32, uint32, uint64)) error {
	var (
		a string
		i int32
		u uint32
		v uint64
	)
	return eachRow(ctx, conn, q, []any{&a, &i, &u, &v}, func() { fn(a, i, u, v) })
}

// scan runs a query whose rows are (String, Int32, UInt32).
func scan(ctx context.Context, conn driver.Conn, q string, fn func(string, int32, uint32)) error {
	var (
		a string
		i int32
		u uint32
	)
	return eachRow(ctx, conn, q, []any{&a, &i, &u}, func() { fn(a, i, u) })
}

// eachRow runs q, scans each row into dest and calls fn.
func eachRow(ctx context.Context, conn driver.Conn, q string, dest []any, fn func()) error {
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return err
	}
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(dest...); err != nil {
			return err
		}
		fn()
	}
	return rows.Err()
}

// LastQuarter is the quarter index of the latest month with an accepted
// event (the end of every account's grid); ok is false while there is none.
func (s *Served) LastQuarter(ctx context.Context) (q int32, ok bool, err error) {
	return s.lastQuarter(ctx, s.topo.Global)
}

func (s *Served) lastQuarter(ctx context.Context, conn driver.Conn) (q int32, ok bool, err error) {
	var (
		m int32
		n uint64
	)
	if err := conn.QueryRow(ctx, "SELECT toInt32(toYear(max(month)) * 12 + toMonth(max(month)) - 1), count() FROM "+s.cfg.Database+".fact_account_months").Scan(&m, &n); err != nil {
		return 0, false, fmt.Errorf("last quarter: %w", err)
	}
	if n == 0 {
		return 0, false, nil
	}
	return s.QuarterOf(m), true, nil
}

// Sweep recomputes every stale account (see Stale) and returns how many
// there were.
func (s *Served) Sweep(ctx context.Context) (int, error) {
	stale, err := s.Stale(ctx) // (with an error: the shards read)
	if stale == nil {
		return 0, err
	}
	return len(stale), errors.Join(err, s.Recompute(ctx, stale, nil))
}

// backfill builds the served rows of s's fiscal calendar from the facts
// alone (migrate, when upgrading a database that has only facts, or after
// a change of fiscal start month): it marks every (account, month) of
// fact_account_months as written at time 0 (so that the sweep checks those
// accounts through every later quarter) and recomputes every account, in
// chunks, logging progress.
func (s *Served) backfill(ctx context.Context, log *slog.Logger) error {
	db := s.cfg.Database
	for _, sh := range s.topo.Shards {
		err := sh.Use(ctx, func(r *Replica) error {
			if err := s.topo.CaughtUp(ctx, r, db, "fact_account_months"); err != nil {
				return err
			}
			return r.Conn.Exec(ctx, "INSERT INTO "+db+".rollup_marks (account_id, month, marked_at) SELECT account_id, month, toDateTime(0, 'UTC') FROM "+db+".fact_account_months")
		})
		if err != nil {
			return fmt.Errorf("backfill rollup_marks: %w", err)
		}
	}
	accounts := map[string]int32{}
	for _, sh := range s.topo.Shards {
		err := sh.Use(ctx, func(r *Replica) error {
			if err := s.topo.CaughtUp(ctx, r, db, "fact_account_months"); err != nil {
				return err
			}
			return scan(ctx, r.Conn, "SELECT account_id, toInt32(toYear(min(month)) * 12 + toMonth(min(month)) - 1), toUInt32(0) FROM "+db+".fact_account_months GROUP BY account_id",
				func(a string, m int32, _ uint32) { accounts[a] = s.QuarterOf(m) })
		})
		if err != nil {
			return fmt.Errorf("backfill: list accounts: %w", err)
		}
	}
	// One group: every account from the earliest quarter of any (the
	// HAVING keeps each account's own grid).
	first := int32(MaxMonth)
	for _, q := range accounts {
		first = min(first, q)
	}
	for a := range accounts {
		accounts[a] = first
	}
	start := time.Now()
	last := start
	log.Info("building served rollups from the facts", "database", db, "fiscal_year_start_month", s.cfg.FiscalStartMonth, "accounts", len(accounts))
	err := s.Recompute(ctx, accounts, func(done, total int) {
		if time.Since(last) < 5*time.Second && done < total {
			return
		}
		last = time.Now()
		el := time.Since(start)
		eta := time.Duration(float64(el) / float64(done) * float64(total-done)).Round(time.Second)
		log.Info("served rollups backfill", "accounts_done", done, "accounts", total, "elapsed", el.Round(time.Second), "eta", eta)
	})
	if err != nil {
		return fmt.Errorf("backfill: %w", err)
	}
	return nil
}

// A Difference is a key whose served row (the view's) and the row
// recomputed from the facts disagree; an empty side means no such row.
type Difference struct {
	Table    string // account_quarter_rollups or account_quarter_features
	Key      string
	Served   string
	Computed string
}

const (
	rollupCols  = "account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at"
	featureCols = "account_id, quarter_start, quarter_end, quarter, feature, active_users, events"
)

// Verify recomputes the rows of accounts (nil: every account with facts)
// from the facts with the recompute's own SQL, as a SELECT, and compares
// every column with what the views return, calling each for every
// difference. It returns the number of accounts checked. Meaningful once
// the pipeline has caught up (rows of accounts being written may differ
// for a moment). On a cluster each shard is compared on a caught-up
// replica, with the reader views' SELECT on its own served tables, once
// that replica's reader objects are the views migrate installs (each one
// that is not is a difference).
func (s *Served) Verify(ctx context.Context, accounts []string, each func(Difference)) (checked int, err error) {
	db := s.cfg.Database
	all := accounts == nil
	accounts = slices.Compact(slices.Sorted(slices.Values(accounts)))
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"max_query_size": maxQuerySize}))
	lists := make([][]string, len(s.topo.Shards))
	for _, a := range accounts {
		i := s.topo.ShardIndex(a)
		lists[i] = append(lists[i], a)
	}
	for i, sh := range s.topo.Shards {
		var diffs []Difference
		err := sh.Use(ctx, func(r *Replica) error {
			diffs = diffs[:0]
			if err := s.topo.CaughtUp(ctx, r, db, verifyTables...); err != nil {
				return err
			}
			if all {
				// Every account with facts on this shard.
				lists[i] = lists[i][:0]
				err := scan(ctx, r.Conn, "SELECT account_id, toInt32(0), toUInt32(0) FROM "+db+".fact_account_months GROUP BY account_id ORDER BY account_id",
					func(a string, _ int32, _ uint32) { lists[i] = append(lists[i], a) })
				if err != nil {
					return fmt.Errorf("verify: list accounts: %w", err)
				}
			}
			return s.verifyOn(ctx, r.Conn, r.Addr, lists[i], all, func(d Difference) { diffs = append(diffs, d) })
		})
		if err != nil {
			return checked, err
		}
		for _, d := range diffs {
			each(d)
		}
		checked += len(lists[i])
	}
	return checked, nil
}

// verifyOn is Verify of accounts on conn's server; all: accounts are every
// account there, so rows of any other account are differences too.
func (s *Served) verifyOn(ctx context.Context, conn driver.Conn, node string, accounts []string, all bool, each func(Difference)) error {
	db := s.cfg.Database
	view := func(name string) (string, error) {
		if s.topo.Clustered() {
			// This shard's part of what readers read, once this node's
			// reader object is that view.
			if d, err := checkReaderObject(ctx, conn, node, s.cfg, name); err != nil || d != nil {
				if d != nil {
					each(*d)
				}
				return "", err
			}
			return shardReader(s.cfg, name)
		}
		return db + "." + name, nil
	}
	from := s.QuarterOf(MinMonth)
	// What readers read; where they read tables (a copy), the served rows
	// the copy is made from as well.
	type source struct{ label, table, from string }
	var sources []source
	for _, name := range []string{"account_quarter_rollups", "account_quarter_features"} {
		from, err := view(name)
		if err != nil {
			return err
		}
		if from != "" {
			sources = append(sources, source{name, name, from})
		}
	}
	copyTables, err := s.ReaderTablesOn()
	if err != nil {
		return err
	}
	if copyTables {
		sources = append(sources,
			source{"served_rollups", "account_quarter_rollups", fmt.Sprintf("(SELECT * FROM %s.served_rollups FINAL WHERE fy = %d)", db, s.cfg.FiscalStartMonth)},
			source{"served_feature_sets", "account_quarter_features", fmt.Sprintf("(SELECT %s FROM %s WHERE fy = %d)", strings.Join(featureNames, ", "), servedFeatures(db), s.cfg.FiscalStartMonth)})
	}
	seen := map[string]int{}
	found := map[string]bool{} // accounts with a served or a computed row
	for list := accounts; len(list) > 0; {
		n, expr := s.chunk(list)
		list = list[n:]
		lastQ, err := s.lastQLiteral(ctx, conn)
		if err != nil {
			return err
		}
		feat, roll, err := s.computeSQL(expr, from, lastQ)
		if err != nil {
			return err
		}
		computed := map[string]struct{ cols, key, sql string }{
			"account_quarter_rollups":  {rollupCols, "account_id, quarter_start", roll},
			"account_quarter_features": {featureCols, "account_id, quarter_start, feature", feat},
		}
		wants := map[string]map[string]string{}
		for _, src := range sources {
			t := computed[src.table]
			got, n, err := rowsOf(ctx, conn, "SELECT "+t.cols+" FROM "+src.from+" WHERE "+expr, t.key, found)
			if err != nil {
				return fmt.Errorf("verify: read %s: %w", src.label, err)
			}
			want, ok := wants[src.table]
			if !ok {
				if want, _, err = rowsOf(ctx, conn, "SELECT "+t.cols+" FROM ("+t.sql+")", t.key, found); err != nil {
					return fmt.Errorf("verify: recompute %s: %w", src.table, err)
				}
				wants[src.table] = want
			}
			seen[src.label] += n
			compare(src.label, got, want, each)
		}
	}
	if !all {
		// An account asked for that has neither facts nor served rows is
		// most likely a typo: say so rather than pass it.
		for _, a := range accounts {
			if !found[a] {
				each(Difference{Table: "account", Key: fmt.Sprintf("account_id=%q", a), Served: "no rows", Computed: "no facts (no such account?)"})
			}
		}
	}
	if all {
		// Rows of accounts without any fact would be wrong too.
		for _, src := range sources {
			var total uint64
			if err := conn.QueryRow(ctx, "SELECT count() FROM "+src.from).Scan(&total); err != nil {
				return fmt.Errorf("verify: count %s: %w", src.label, err)
			}
			if int(total) != seen[src.label] {
				each(Difference{Table: src.label, Key: "(rows of accounts without facts)", Served: fmt.Sprintf("%d rows in all", total), Computed: fmt.Sprintf("%d rows", seen[src.label])})
			}
		}
	}
	return nil
}

// rowsOf runs q and returns its rows as text, by the text of the key
// columns (key: their names, comma-separated), and how many rows it read.
// A key read twice keeps every row's text, so that it never equals a
// single row: one row per key is part of what is verified. accounts, if
// not nil, gets every account_id read.
func rowsOf(ctx context.Context, conn driver.Conn, q, key string, accounts map[string]bool) (map[string]string, int, error) {
	isKey := map[string]bool{}
	for _, k := range strings.Split(key, ",") {
		isKey[strings.TrimSpace(k)] = true
	}
	rows, err := conn.Query(ctx, q)
	if err != nil {
		return nil, 0, err
	}
	defer rows.Close()
	cols := rows.ColumnTypes()
	out := map[string]string{}
	n := 0
	for rows.Next() {
		vals := make([]any, len(cols))
		for i, c := range cols {
			vals[i] = newScanValue(c.DatabaseTypeName())
		}
		if err := rows.Scan(vals...); err != nil {
			return nil, 0, err
		}
		n++
		var k, v []string
		for i, val := range vals {
			f := fmt.Sprintf("%s=%v", cols[i].Name(), deref(val))
			if isKey[cols[i].Name()] {
				k = append(k, f)
			} else {
				v = append(v, f)
			}
			if a, ok := val.(*string); ok && accounts != nil && cols[i].Name() == "account_id" {
				accounts[*a] = true
			}
		}
		key, row := strings.Join(k, " "), strings.Join(v, " ")
		if prev, ok := out[key]; ok {
			row = prev + " | AND ANOTHER ROW FOR THE SAME KEY: " + row
		}
		out[key] = row
	}
	return out, n, rows.Err()
}

func compare(table string, got, want map[string]string, each func(Difference)) {
	keys := make([]string, 0, len(got)+len(want))
	for k := range got {
		keys = append(keys, k)
	}
	for k := range want {
		if _, ok := got[k]; !ok {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		if got[k] != want[k] {
			each(Difference{Table: table, Key: k, Served: got[k], Computed: want[k]})
		}
	}
}

func newScanValue(typ string) any {
	switch {
	case typ == "String":
		return new(string)
	case typ == "UInt64":
		return new(uint64)
	case typ == "Float64":
		return new(float64)
	case typ == "Date" || strings.HasPrefix(typ, "DateTime"):
		return new(time.Time)
	}
	return new(string)
}

func deref(v any) any {
	switch p := v.(type) {
	case *string:
		return fmt.Sprintf("%q", *p)
	case *uint64:
		return *p
	case *float64:
		return *p
	case *time.Time:
		return p.UTC().Format(time.DateTime)
	}
	return v
}

// backfillRecord is the schema_migrations name of the build of fiscal
// calendar fy's served rows in the current layout: v2 since the feature
// rows are sets (docs/design.md, "Feature sets"); a database built as
// served_fy<F> is built again.
func backfillRecord(fy int) string { return fmt.Sprintf("served_v2_fy%d", fy) }

// BackfillPending reports whether Migrate would build the served rows of
// cfg's fiscal calendar from existing facts: the database has facts and no
// record of that build. Such a build must not race writers of a release
// before the served rollups, which write facts but no marks (their facts
// would never be served): `usagepipe run` waits for the consumer group to
// be empty first. (Writers of served layout 1 are fenced by the new table
// names instead; run waits for them too, as the upgrade notes in
// docs/operations.md say.)
func BackfillPending(ctx context.Context, conn driver.Conn, cfg Config) (bool, error) {
	if err := cfg.Validate(); err != nil {
		return false, err
	}
	cfg = cfg.withDefaults()
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name IN ('fact_account_months', 'schema_migrations')", cfg.Database).Scan(&n); err != nil {
		return false, fmt.Errorf("served rollups: read system.tables: %w", err)
	}
	if n < 2 {
		return false, nil
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+cfg.Database+".schema_migrations WHERE name = ?", backfillRecord(cfg.FiscalStartMonth)).Scan(&n); err != nil {
		return false, fmt.Errorf("served rollups: read schema_migrations: %w", err)
	}
	if n > 0 {
		return false, nil
	}
	if err := conn.QueryRow(ctx, "SELECT count() FROM (SELECT 1 FROM "+cfg.Database+".fact_account_months LIMIT 1)").Scan(&n); err != nil {
		return false, fmt.Errorf("served rollups: read fact_account_months: %w", err)
	}
	return n > 0, nil
}
