package store

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unsafe"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/usagepipe/usagepipe/schema"
)

// Config says how to reach ClickHouse.
type Config struct {
	Addr     []string // host:port of the native protocol
	Database string   // "" means schema.DefaultDatabase
	User     string   // "" means "default"
	Password string
	TLS      *tls.Config // nil: plain TCP
	// Compression of INSERT blocks: "none" (or ""), "lz4" or "zstd".
	// Compressing costs CPU on both ends; it pays off when the link to
	// ClickHouse is slow or metered.
	Compression string
	// DialTimeout bounds connecting; 0 means 10s.
	DialTimeout time.Duration
	// WriteTimeout bounds one Write (all its tables); 0 means only the
	// caller's context does.
	WriteTimeout time.Duration
	// Cluster names a cluster of the servers' remote_servers (contract
	// §8): Open reads its shards and replicas from system.clusters on the
	// first of Addr that answers, and Write sends each account's facts to
	// a replica of its shard. "" means a single server.
	Cluster string
}

// ErrInvalidFact is wrapped by the error Write returns for a fact it
// refuses to store (a month outside schema.MinMonth–MaxMonth, a negative
// time or seat count, an unknown count kind). Nothing of that Write was
// stored.
var ErrInvalidFact = errors.New("invalid fact")

// Validate reports a bad setting, naming it.
func (c Config) Validate() error {
	if len(c.Addr) == 0 {
		return errors.New("clickhouse address: none given")
	}
	for _, a := range c.Addr {
		if a == "" {
			return errors.New("clickhouse address: empty")
		}
	}
	if c.Database != "" {
		if err := schema.ValidateDatabase(c.Database); err != nil {
			return err
		}
	}
	if err := c.ValidateCompression(); err != nil {
		return fmt.Errorf("clickhouse compression: %w", err)
	}
	if c.DialTimeout < 0 || c.WriteTimeout < 0 {
		return errors.New("clickhouse timeouts must not be negative")
	}
	return nil
}

// The fact tables in the order Write writes them: account months first, so
// that a crash part way leaves no fact whose account the views don't list.
// ValidateCompression checks Compression.
func (c Config) ValidateCompression() error {
	switch c.Compression {
	case "", "none", "lz4", "zstd":
		return nil
	}
	return fmt.Errorf("must be none, lz4 or zstd, got %q", c.Compression)
}

func compression(name string) *clickhouse.Compression {
	switch name {
	case "lz4":
		return &clickhouse.Compression{Method: clickhouse.CompressionLZ4}
	case "zstd":
		return &clickhouse.Compression{Method: clickhouse.CompressionZSTD}
	}
	return nil
}

const (
	tAccountMonths = iota
	tUserActivity
	tFeatureUsers
	tEventCounts
	tSeatEvents
	tSeatPurchases
	tMarks
	tProgress
	tDedupIDs
	nTables
)

var tables = [nTables]struct{ name, cols string }{
	{"fact_account_months", "account_id, month"},
	{"fact_user_activity", "account_id, month, user_id, last_activity_ms"},
	{"fact_feature_users", "account_id, month, feature, user_id"},
	{"fact_event_counts", "account_id, month, kind, feature, src_topic, src_partition, bucket, covered_end, events"},
	{"fact_seat_events", "account_id, user_id, month, occurred_ms, event_id, assigned"},
	{"fact_seat_purchases", "account_id, month, occurred_ms, event_id, seats"},
	{"rollup_marks", "account_id, month"},
	{"ingest_progress", "topic, topic_id, partition, next_offset, dedup_from_ms, written_at, ids_from"},
	{"dedup_ids", "topic, topic_id, partition, hour, off_lo, off_hi, n, records"},
}

// Store writes facts to ClickHouse and reads the views back. Its methods
// are safe for concurrent use.
type Store struct {
	conn    driver.Conn // the server (or, on a cluster, any node)
	topo    *schema.Topology
	db      string
	timeout time.Duration
	log     *slog.Logger
	insert  [nTables]string
	rows    [nTables]prometheus.Counter
	bufs    sync.Pool // *columns
}

// Open connects to ClickHouse and pings it. The database need not exist
// yet (schema.Migrate creates it): the connection uses the server's default
// database and Store names its tables in full. A nil log logs nothing; a
// nil reg registers nothing.
func Open(ctx context.Context, cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	db := cfg.Database
	if db == "" {
		db = schema.DefaultDatabase
	}
	user := cfg.User
	if user == "" {
		user = "default"
	}
	dial := cfg.DialTimeout
	if dial == 0 {
		dial = 10 * time.Second
	}
	open := func(addr []string) (driver.Conn, error) {
		return clickhouse.Open(&clickhouse.Options{
			Addr:        addr,
			Auth:        clickhouse.Auth{Username: user, Password: cfg.Password},
			TLS:         cfg.TLS,
			DialTimeout: dial,
			Compression: compression(cfg.Compression),
		})
	}
	conn, err := open(cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("clickhouse open: %w", err)
	}
	if err := conn.Ping(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse ping %v: %w", cfg.Addr, err)
	}
	topo := schema.SingleServer(conn)
	if cfg.Cluster != "" {
		if topo, err = openCluster(ctx, cfg.Cluster, conn, open); err != nil {
			conn.Close()
			return nil, err
		}
	}
	rows := promauto.With(reg).NewCounterVec(prometheus.CounterOpts{
		Name: "usagepipe_clickhouse_rows_written_total",
		Help: "Rows ClickHouse acknowledged, by table: the fact tables, rollup_marks and ingest_progress; for dedup_ids, the records archived.",
	}, []string{"table"})
	s := &Store{conn: conn, topo: topo, db: db, timeout: cfg.WriteTimeout, log: log}
	for i, t := range tables {
		s.insert[i] = "INSERT INTO " + db + "." + t.name + " (" + t.cols + ")"
		s.rows[i] = rows.WithLabelValues(t.name)
	}
	s.bufs.New = func() any { return new(columns) }
	log.Debug("clickhouse connected", "addr", cfg.Addr, "database", db)
	return s, nil
}

// openCluster reads cluster's shards through conn and opens a connection
// pool per replica (not pinged: a replica that is down must not keep the
// pipeline from starting).
func openCluster(ctx context.Context, cluster string, conn driver.Conn, open func([]string) (driver.Conn, error)) (*schema.Topology, error) {
	nums, weights, addrs, err := schema.ReadShards(ctx, conn, cluster)
	if err != nil {
		return nil, err
	}
	var shards []*schema.Shard
	closeAll := func() {
		for _, sh := range shards {
			for _, r := range sh.Replicas {
				r.Conn.Close()
			}
		}
	}
	for i, num := range nums {
		sh := &schema.Shard{Num: num, Weight: weights[i]}
		shards = append(shards, sh)
		for _, a := range addrs[i] {
			c, err := open([]string{a})
			if err != nil {
				closeAll()
				return nil, fmt.Errorf("clickhouse open %s (cluster %s, shard %d): %w", a, cluster, num, err)
			}
			sh.Replicas = append(sh.Replicas, &schema.Replica{Addr: a, Conn: c})
		}
	}
	t, err := schema.NewTopology(cluster, conn, shards)
	if err != nil {
		closeAll()
		return nil, err
	}
	return t, nil
}

// Conn is the connection to the server, or on a cluster to any node (for
// schema.Migrate and health checks).
func (s *Store) Conn() driver.Conn { return s.conn }

// Topology is where the rows live: the server, or the cluster's shards.
func (s *Store) Topology() *schema.Topology { return s.topo }

// Database is the database the Store writes to.
func (s *Store) Database() string { return s.db }

// Ping checks that ClickHouse answers.
func (s *Store) Ping(ctx context.Context) error { return s.conn.Ping(ctx) }

// Close closes the connections.
func (s *Store) Close() error {
	if s.topo.Clustered() {
		for _, sh := range s.topo.Shards {
			for _, r := range sh.Replicas {
				r.Conn.Close()
			}
		}
	}
	return s.conn.Close()
}

// Write stores f: one batch INSERT per non-empty table, account months
// first. Every fact is idempotent, so a Write may be repeated, or follow a
// failed one, without changing what the views return. The error names the
// table that failed; tables before it may have been written.
//
// On a cluster each shard's facts and marks go to a replica of that shard
// (failing over to the next), all shards at once, and the progress rows
// only after every shard acknowledged its part.
func (s *Store) Write(ctx context.Context, f *schema.Facts) error {
	if err := validate(f); err != nil {
		return err
	}
	if s.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel()
	}
	c := s.bufs.Get().(*columns)
	defer func() { c.reset(); s.bufs.Put(c) }()
	if !s.topo.Clustered() {
		if err := s.writeFacts(ctx, s.conn, c, f); err != nil {
			return err
		}
		if err := s.writeDedupIDs(ctx, s.conn, c, f); err != nil {
			return err
		}
		return s.writeProgress(ctx, s.conn, c, f)
	}
	// Replicated tables drop a block identical to one inserted before; a
	// replay must write again what a lost replica took with it (every
	// fact is idempotent anyway).
	ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_deduplicate": 0}))
	parts := splitFacts(s.topo, f)
	errs := make([]error, len(parts))
	var wg sync.WaitGroup
	for i, p := range parts {
		if p.Rows() == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := s.bufs.Get().(*columns)
			defer func() { c.reset(); s.bufs.Put(c) }()
			errs[i] = s.topo.Shards[i].Use(ctx, func(r *schema.Replica) error {
				return s.writeFacts(ctx, r.Conn, c, p)
			})
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	// The archive of event IDs lives on every node, as progress does: after
	// every shard's facts, before progress.
	if f.DedupRows() > 0 {
		if err := s.topo.All.Use(ctx, func(r *schema.Replica) error { return s.writeDedupIDs(ctx, r.Conn, c, f) }); err != nil {
			return err
		}
	}
	return s.topo.All.Use(ctx, func(r *schema.Replica) error { return s.writeProgress(ctx, r.Conn, c, f) })
}

// splitFacts returns f's facts (not its progress) by shard of t.
func splitFacts(t *schema.Topology, f *schema.Facts) []*schema.Facts {
	parts := make([]*schema.Facts, len(t.Shards))
	for i := range parts {
		parts[i] = new(schema.Facts)
	}
	last, lastShard := "", 0
	shard := func(a string) *schema.Facts {
		if a != last || last == "" {
			last, lastShard = a, t.ShardIndex(a)
		}
		return parts[lastShard]
	}
	for _, r := range f.AccountMonths {
		p := shard(r.Account)
		p.AccountMonths = append(p.AccountMonths, r)
	}
	for _, r := range f.UserActivity {
		p := shard(r.Account)
		p.UserActivity = append(p.UserActivity, r)
	}
	for _, r := range f.FeatureUsers {
		p := shard(r.Account)
		p.FeatureUsers = append(p.FeatureUsers, r)
	}
	for _, r := range f.EventCounts {
		p := shard(r.Account)
		p.EventCounts = append(p.EventCounts, r)
	}
	for _, r := range f.SeatEvents {
		p := shard(r.Account)
		p.SeatEvents = append(p.SeatEvents, r)
	}
	for _, r := range f.SeatPurchases {
		p := shard(r.Account)
		p.SeatPurchases = append(p.SeatPurchases, r)
	}
	return parts
}

// writeFacts writes f's facts, then its marks, through conn.
func (s *Store) writeFacts(ctx context.Context, conn driver.Conn, c *columns, f *schema.Facts) error {
	if err := s.send(ctx, conn, c, tAccountMonths, len(f.AccountMonths), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.AccountMonths[i]
			c.add(r.Account, r.Month)
		}
		return []any{c.s[0], c.d}
	}); err != nil {
		return err
	}
	if err := s.send(ctx, conn, c, tUserActivity, len(f.UserActivity), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.UserActivity[i]
			c.add(r.Account, r.Month)
			c.s[1] = append(c.s[1], r.User)
			c.u[0] = append(c.u[0], uint64(r.LastMs))
		}
		return []any{c.s[0], c.d, c.s[1], c.u[0]}
	}); err != nil {
		return err
	}
	if err := s.send(ctx, conn, c, tFeatureUsers, len(f.FeatureUsers), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.FeatureUsers[i]
			c.add(r.Account, r.Month)
			c.s[1] = append(c.s[1], r.Feature)
			c.s[2] = append(c.s[2], r.User)
		}
		return []any{c.s[0], c.d, c.s[1], c.s[2]}
	}); err != nil {
		return err
	}
	if err := s.send(ctx, conn, c, tEventCounts, len(f.EventCounts), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.EventCounts[i]
			c.add(r.Account, r.Month)
			c.u8 = append(c.u8, r.Kind)
			c.s[1] = append(c.s[1], r.Feature)
			c.s[2] = append(c.s[2], r.Topic)
			c.i32 = append(c.i32, r.Partition)
			c.u[0] = append(c.u[0], r.Bucket)
			c.u[1] = append(c.u[1], r.CoveredEnd)
			c.u[2] = append(c.u[2], r.Events)
		}
		return []any{c.s[0], c.d, c.u8, c.s[1], c.s[2], c.i32, c.u[0], c.u[1], c.u[2]}
	}); err != nil {
		return err
	}
	if err := s.send(ctx, conn, c, tSeatEvents, len(f.SeatEvents), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.SeatEvents[i]
			c.add(r.Account, r.Month)
			c.s[1] = append(c.s[1], r.User)
			c.u[0] = append(c.u[0], uint64(r.OccurredMs))
			c.s[2] = append(c.s[2], r.EventID)
			var a uint8
			if r.Assigned {
				a = 1
			}
			c.u8 = append(c.u8, a)
		}
		return []any{c.s[0], c.s[1], c.d, c.u[0], c.s[2], c.u8}
	}); err != nil {
		return err
	}
	if err := s.send(ctx, conn, c, tSeatPurchases, len(f.SeatPurchases), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.SeatPurchases[i]
			c.add(r.Account, r.Month)
			c.u[0] = append(c.u[0], uint64(r.OccurredMs))
			c.s[1] = append(c.s[1], r.EventID)
			c.u[1] = append(c.u[1], uint64(r.Seats))
		}
		return []any{c.s[0], c.d, c.u[0], c.s[1], c.u[1]}
	}); err != nil {
		return err
	}
	// Marks after the facts (marked_at, the server's clock on arrival, is
	// then at or after every fact's acknowledgement) and before progress (a
	// replay from the progress row writes them again): the serve loop and
	// its sweep recompute the served rows of these accounts.
	if err := s.send(ctx, conn, c, tMarks, len(f.AccountMonths), func(lo, hi int) []any {
		for i := lo; i < hi; i++ {
			r := &f.AccountMonths[i]
			c.add(r.Account, r.Month)
		}
		return []any{c.s[0], c.d}
	}); err != nil {
		return err
	}
	return nil
}

// writeProgress writes f's progress rows through conn: last, since a row
// may land only once every fact it vouches for has.
func (s *Store) writeProgress(ctx context.Context, conn driver.Conn, c *columns, f *schema.Facts) error {
	now := time.Now().UTC().Truncate(time.Second)
	return s.send(ctx, conn, c, tProgress, len(f.Progress), func(lo, hi int) []any {
		d := make([]int64, 0, hi-lo)
		for i := lo; i < hi; i++ {
			r := &f.Progress[i]
			c.s[0] = append(c.s[0], r.Topic)
			c.s[1] = append(c.s[1], r.TopicID)
			c.i32 = append(c.i32, r.Partition)
			c.u[0] = append(c.u[0], uint64(r.NextOffset))
			d = append(d, r.DedupFromMs)
			c.d = append(c.d, now)
			c.i64 = append(c.i64, r.IDsFrom)
		}
		return []any{c.s[0], c.s[1], c.i32, c.u[0], d, c.d, c.i64}
	})
}

// writeDedupIDs writes f's entries of the duplicate filter's archive
// through conn, one row per partition and hour of record time (split past
// dedupRowRecords records): after the facts (an archived record is a
// counted one) and before progress, which may vouch for a record only once
// its ID is stored (docs/design.md, "Durable event IDs"). The INSERT goes
// as blocks of about dedupBlockRecords records, so the client's buffers
// stay small however large the flush.
func (s *Store) writeDedupIDs(ctx context.Context, conn driver.Conn, _ *columns, f *schema.Facts) (err error) {
	n := f.DedupRows()
	if n == 0 {
		return nil
	}
	name := tables[tDedupIDs].name
	b, err := conn.PrepareBatch(ctx, s.insert[tDedupIDs])
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = b.Abort()
		}
	}()
	inBlock := 0
	var enc schema.ArchiveEncoder // its buffer is reused: the client copies what Append is given
	var first, last uint64
	emit := func(d *schema.DedupIDs, hour int64) error {
		rec := enc.Bytes()
		if err := b.Append(d.Topic, d.TopicID, d.Partition, hour, first, last, uint32(enc.Len()), unsafe.String(unsafe.SliceData(rec), len(rec))); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
		if inBlock += enc.Len(); inBlock >= dedupBlockRecords {
			if err := b.Flush(); err != nil {
				return fmt.Errorf("write %s: %w", name, err)
			}
			inBlock = 0
		}
		return nil
	}
	for _, d := range f.DedupIDs {
		for _, g := range hourGroups(d) {
			enc.Reset(g.hour, 0)
			for _, r := range g.runs {
				for j := r.lo; j < r.hi; j++ {
					if enc.Len() == 0 {
						first = d.Offsets[j]
						enc.Reset(g.hour, first)
					}
					enc.Add(d.Offsets[j], d.TsMs[j], d.EventID(j))
					last = d.Offsets[j]
					if enc.Len() == dedupRowRecords {
						if err := emit(d, g.hour); err != nil {
							return err
						}
						enc.Reset(g.hour, 0)
					}
				}
			}
			if enc.Len() > 0 {
				if err := emit(d, g.hour); err != nil {
					return err
				}
			}
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	s.rows[tDedupIDs].Add(float64(n))
	return nil
}

const (
	dedupRowRecords   = 1 << 14 // most records in one row of dedup_ids
	dedupBlockRecords = 1 << 16 // records per block of its INSERT
)

// hourGroup is the records of one hour of record time among a partition's
// archive entries: runs of consecutive entries [lo, hi), in offset order.
type hourGroup struct {
	hour int64
	runs []entryRun
}

type entryRun struct{ lo, hi int }

// hourGroups splits d's records by hour of record time, hours in the order
// they first appear. Records come in offset order, mostly in long runs of
// one hour: the map is consulted once per run, not per record.
func hourGroups(d *schema.DedupIDs) []hourGroup {
	var out []hourGroup
	byHour := map[int64]int{} // hour → index in out
	for lo := 0; lo < d.Len(); {
		h := schema.HourOf(d.TsMs[lo])
		hi := lo + 1
		for hi < d.Len() && d.TsMs[hi] >= h && d.TsMs[hi] < h+schema.HourMs {
			hi++
		}
		k, ok := byHour[h]
		if !ok {
			k = len(out)
			byHour[h] = k
			out = append(out, hourGroup{hour: h})
		}
		out[k].runs = append(out[k].runs, entryRun{lo, hi})
		lo = hi
	}
	return out
}

// BlockRows is the most rows one block of an INSERT carries. A table's
// rows go as several blocks of one INSERT: the client's column buffers are
// reused from block to block (memory stays at one block, not one flush),
// and the server squashes the blocks into parts of up to
// min_insert_block_size_rows as it would one big block (TestWriteManyBlocks
// checks: one part). Each INSERT starts with empty column buffers (the
// driver allocates them per batch), so small blocks keep that growth, and
// the fresh memory it touches, small: 4096 rows instead of 65536 cut the
// pipeline's CPU by ~10% and its peak RSS by ~70 MiB in TestE2E, with no
// change in ClickHouse's CPU.
const BlockRows = 1 << 12

// send INSERTs n rows into table t, in blocks of at most BlockRows: fill
// puts rows [lo, hi) into c and returns the columns in the INSERT's order.
func (s *Store) send(ctx context.Context, conn driver.Conn, c *columns, t, n int, fill func(lo, hi int) []any) (err error) {
	if n == 0 {
		return nil
	}
	name := tables[t].name
	b, err := conn.PrepareBatch(ctx, s.insert[t])
	if err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = b.Abort()
		}
	}()
	for lo := 0; lo < n; lo += BlockRows {
		hi := min(lo+BlockRows, n)
		c.reset()
		for i, col := range fill(lo, hi) {
			if err := b.Column(i).Append(col); err != nil {
				return fmt.Errorf("write %s: column %d: %w", name, i, err)
			}
		}
		if hi < n {
			if err := b.Flush(); err != nil {
				return fmt.Errorf("write %s: %w", name, err)
			}
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	s.rows[t].Add(float64(n))
	return nil
}

// columns are the reusable column buffers of one Write.
type columns struct {
	s    [3][]string
	u    [3][]uint64
	d    []time.Time
	u8   []uint8
	i32  []int32
	i64  []int64
	i64b []int64
	// the Date of the last month seen: facts come grouped by account, and
	// an account's months are few, so most rows hit it.
	lastMonth int32
	lastDate  time.Time
}

// add appends the account and month columns every table has.
func (c *columns) add(account string, month int32) {
	c.s[0] = append(c.s[0], account)
	if month != c.lastMonth || c.lastDate.IsZero() {
		c.lastMonth, c.lastDate = month, monthDate(month)
	}
	c.d = append(c.d, c.lastDate)
}

func (c *columns) reset() {
	for i := range c.s {
		clear(c.s[i]) // drop references to the caller's strings
		c.s[i] = c.s[i][:0]
	}
	for i := range c.u {
		c.u[i] = c.u[i][:0]
	}
	c.d, c.u8, c.i32, c.i64, c.i64b = c.d[:0], c.u8[:0], c.i32[:0], c.i64[:0], c.i64b[:0]
}

// monthDate is the first day of month index mi (year*12 + month-1) at UTC
// midnight, computed without time.Date (days_from_civil, Howard Hinnant).
func monthDate(mi int32) time.Time {
	y, m := int64(mi)/12, int64(mi)%12+1 // mi ≥ schema.MinMonth > 0
	if m <= 2 {
		y--
	}
	era := y / 400 // y ≥ 1999 > 0
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp + 2) / 5 // day 1 of the month
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	days := era*146097 + doe - 719468
	return time.Unix(days*86400, 0).UTC()
}

func validate(f *schema.Facts) error {
	bad := func(table string, i int, what string) error {
		return fmt.Errorf("write %s: row %d: %w: %s", table, i, ErrInvalidFact, what)
	}
	month := func(m int32) bool { return m >= schema.MinMonth && m <= schema.MaxMonth }
	for i, r := range f.AccountMonths {
		if !month(r.Month) {
			return bad("fact_account_months", i, fmt.Sprintf("month index %d out of range", r.Month))
		}
	}
	for i, r := range f.UserActivity {
		if !month(r.Month) || r.LastMs < 0 {
			return bad("fact_user_activity", i, fmt.Sprintf("month index %d, last activity %d", r.Month, r.LastMs))
		}
	}
	for i, r := range f.FeatureUsers {
		if !month(r.Month) {
			return bad("fact_feature_users", i, fmt.Sprintf("month index %d out of range", r.Month))
		}
	}
	for i, r := range f.EventCounts {
		if !month(r.Month) || (r.Kind != schema.KindLogin && r.Kind != schema.KindFeatureUsed) {
			return bad("fact_event_counts", i, fmt.Sprintf("month index %d, kind %d", r.Month, r.Kind))
		}
	}
	for i, r := range f.SeatEvents {
		if !month(r.Month) || r.OccurredMs < 0 {
			return bad("fact_seat_events", i, fmt.Sprintf("month index %d, occurred %d", r.Month, r.OccurredMs))
		}
	}
	for i, r := range f.Progress {
		if r.NextOffset < 0 || r.Topic == "" {
			return bad("ingest_progress", i, fmt.Sprintf("topic %q, next offset %d", r.Topic, r.NextOffset))
		}
	}
	for _, d := range f.DedupIDs {
		if d.Topic == "" || len(d.TsMs) != d.Len() || len(d.Ends) != d.Len() {
			return bad("dedup_ids", 0, fmt.Sprintf("topic %q partition %d: %d offsets, %d timestamps, %d IDs", d.Topic, d.Partition, d.Len(), len(d.TsMs), len(d.Ends)))
		}
		for i := range d.Len() {
			if d.EventID(i) == "" {
				return bad("dedup_ids", i, fmt.Sprintf("partition %d offset %d: empty event ID", d.Partition, d.Offsets[i]))
			}
		}
	}
	for i, r := range f.SeatPurchases {
		if !month(r.Month) || r.OccurredMs < 0 || r.Seats < 0 {
			return bad("fact_seat_purchases", i, fmt.Sprintf("month index %d, occurred %d, seats %d", r.Month, r.OccurredMs, r.Seats))
		}
	}
	return nil
}

// ReadRollups returns every row of account_quarter_rollups, ordered by
// account_id and quarter_start.
func (s *Store) ReadRollups(ctx context.Context) ([]schema.Rollup, error) {
	rows, err := s.conn.Query(ctx, "SELECT account_id, quarter_start, quarter_end, quarter, seats_purchased, seats_assigned, seat_utilization, active_users, active_assigned_users, activation_rate, logins, feature_events, features_used, last_activity_at FROM "+s.db+".account_quarter_rollups ORDER BY account_id, quarter_start")
	if err != nil {
		return nil, fmt.Errorf("read account_quarter_rollups: %w", err)
	}
	defer rows.Close()
	var out []schema.Rollup
	for rows.Next() {
		var r schema.Rollup
		if err := rows.Scan(&r.AccountID, &r.QuarterStart, &r.QuarterEnd, &r.Quarter, &r.SeatsPurchased, &r.SeatsAssigned, &r.SeatUtilization,
			&r.ActiveUsers, &r.ActiveAssignedUsers, &r.ActivationRate, &r.Logins, &r.FeatureEvents, &r.FeaturesUsed, &r.LastActivityAt); err != nil {
			return nil, fmt.Errorf("read account_quarter_rollups: %w", err)
		}
		r.QuarterStart, r.QuarterEnd, r.LastActivityAt = utcDate(r.QuarterStart), utcDate(r.QuarterEnd), r.LastActivityAt.UTC()
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read account_quarter_rollups: %w", err)
	}
	return out, nil
}

// ReadFeatures returns every row of account_quarter_features, ordered by
// account_id, quarter_start and feature.
func (s *Store) ReadFeatures(ctx context.Context) ([]schema.FeatureRow, error) {
	rows, err := s.conn.Query(ctx, "SELECT account_id, quarter_start, feature, active_users, events FROM "+s.db+".account_quarter_features ORDER BY account_id, quarter_start, feature")
	if err != nil {
		return nil, fmt.Errorf("read account_quarter_features: %w", err)
	}
	defer rows.Close()
	var out []schema.FeatureRow
	for rows.Next() {
		var r schema.FeatureRow
		if err := rows.Scan(&r.AccountID, &r.QuarterStart, &r.Feature, &r.ActiveUsers, &r.Events); err != nil {
			return nil, fmt.Errorf("read account_quarter_features: %w", err)
		}
		r.QuarterStart = utcDate(r.QuarterStart)
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read account_quarter_features: %w", err)
	}
	return out, nil
}

// utcDate is the UTC midnight of t's calendar date: the driver returns
// Dates in the server's time zone.
func utcDate(t time.Time) time.Time {
	y, m, d := t.Date()
	return time.Date(y, m, d, 0, 0, 0, 0, time.UTC)
}
