package ingest

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/usagepipe/usagepipe/aggregate"
	"github.com/usagepipe/usagepipe/aggregate/quarter"
	"github.com/usagepipe/usagepipe/ingest/decode"
	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/schema"
	"github.com/usagepipe/usagepipe/schema/event"
)

// Writer stores one flush of facts (writing the same facts again must be
// harmless) and gives back what a new owner of a partition resumes from:
// the durable position and the open bucket's counts. *store.Store
// implements it.
type Writer interface {
	Write(ctx context.Context, f *schema.Facts) error
	Ping(ctx context.Context) error
	Incarnation(ctx context.Context, topic, topicID string) (string, error)
	ReadProgress(ctx context.Context, topic string, topicIDs ...string) (map[int32]schema.Progress, error)
	ReadBucketCounts(ctx context.Context, srcTopic string, buckets map[int32]uint64) ([]schema.EventCount, error)
	// The duplicate filter's archive (docs/design.md, "Durable event IDs").
	ReadArchive(ctx context.Context, q schema.ArchiveQuery, fn func(off, tsMs int64, eventID string)) error
	ArchiveHours(ctx context.Context, q schema.ArchiveQuery) ([]schema.ArchiveHour, error)
}

// ErrTopicRecreated is returned by Run when the events topic was deleted and
// created again under the same name while it ran. What was read is written
// first; the next run reads the new incarnation from its first record
// (its offsets restart at 0 and are counted apart from the old ones).
var ErrTopicRecreated = errors.New("events topic was deleted and re-created; restart to read the new incarnation")

// Consumer reads the events topic as a member of a consumer group and
// writes facts to ClickHouse through a Writer.
type Consumer struct {
	cfg Config
	log *slog.Logger
	w   Writer
	m   *metrics
	cl  *kgo.Client
	adm *kadm.Client
	// probe fetches for aborted records (aborted.go) on connections of its
	// own: the group client's fetch connection is busy with its long
	// polls. Made on first use; closed by Run.
	probe *kgo.Client

	// mu guards everything below; it is held by the poll loop while it
	// processes a poll and by the rebalance callbacks.
	mu      sync.Mutex
	parts   map[int32]*partState
	workers []*worker // partition p is processed by workers[p % len(workers)]
	bufs    [2]schema.Facts
	// lastPending is pending() when the previous flush was drained.
	lastPending int
	buf         int
	flight      *flushJob          // the flush being written, nil if none
	idPool      []*schema.DedupIDs // archive buffers of finished flushes (takeIDs, recycleIDs)
	broken      bool               // a flush failed for good: commit nothing more
	closed      bool               // Run has flushed for the last time
	lastRun     time.Time          // when the last flush was started

	srv   *server       // keeps the served rollups current; nil if w cannot
	built chan struct{} // closed once New has made adm

	flushReq  chan *flushJob
	flushDone chan *flushJob
	flushCtx  context.Context

	// The events topic's incarnation as of the last assignment (guarded by
	// mu): its hex topic ID, and the IDs whose progress rows count for it.
	topicID     string
	progressIDs []string
	idleIDs     []string // progress IDs an --until-caught-up run without partitions reads (caughtUp)

	recoverErr  atomic.Pointer[error]      // a duplicate filter recovery that gave up: Run stops
	disk        atomic.Pointer[dedup.Disk] // open while Run runs
	chUp        atomic.Bool
	chUpMu      sync.Mutex   // setClickHouseUp
	lastFlushOK atomic.Int64 // unix nanos
	totalLag    atomic.Int64
	lagKnown    atomic.Bool    // every assigned partition's hwm is known: totalLag is its lag
	owned       map[int32]bool // under mu: the topic's partitions assigned (onAssigned) and not revoked or lost
	joined      bool           // under mu: an assignment arrived
	warn        rateLimiter
}

// worker decodes and aggregates the records of its partitions. Workers run
// in parallel within one poll, each on its own partitions, and never share
// state; ClickHouse merges their facts like those of separate instances.
type worker struct {
	ahead [2]decoded // record i is decoded into ahead[i%2] while record i-1 is applied
	agg   *aggregate.Aggregator
}

// decoded is one record decoded ahead of its dedup check and aggregation.
type decoded struct {
	dec  *decode.Decoder // ev borrows the record's value and dec's memory until dec's next Decode
	ev   event.Event
	rej  *event.Rejection
	key  dedup.Key // of ev.EventID when rej == nil
	ts   int64
	ctrl bool // a transaction marker: advances the position, nothing else
}

func (c *Consumer) worker(p int32) *worker { return c.workers[int(p)%len(c.workers)] }

func (c *Consumer) dedupIDs() int {
	n := 0
	for _, st := range c.parts {
		n += st.dedup.Len()
	}
	return n
}

func (c *Consumer) dedupDiskIDs() int {
	n := 0
	for _, st := range c.parts {
		n += st.dedup.DiskEntries()
	}
	return n
}

func (c *Consumer) pending() int {
	n := 0
	for _, w := range c.workers {
		n += w.agg.Pending()
	}
	return n
}

// partState is what the consumer knows about one owned partition.
type partState struct {
	p         int32
	topicID   string // hex Kafka topic ID of the incarnation assigned
	committed int64  // the durable position at assignment: records below it were handled before
	aggFrom   int64  // offsets below this only rebuild the dedup set
	next      int64  // next offset to process; -1 before the first record
	flushed   int64  // position as of the last flush handed to the flusher (at assignment: resume.flushed)
	advanced  bool   // a flush of this assignment wrote a position (finish commits it again, synchronously)
	dedup     *dedup.Set
	tsBucket  int64 // bucket start whose first record's timestamp is bucketTs
	bucketTs  int64
	lastTs    int64
	from      int64 // dedup replay start (record time) found at assignment, if hasFrom
	hasFrom   bool
	hwm       int64 // last stable offset seen
	hwmKnown  bool  // hwm is known (listed at assignment, or fetched)
	dlq       []*kgo.Record
	delays    map[delayKey]int // records since the last flush by record second and event month
	delayAt   delayKey         // the key being counted into delayN (records of a partition mostly share it)
	delayN    int

	warnedAhead bool // a record stamped beyond the duplicate filter's clock limit was logged

	// Aborted records below the last stable offset (aborted.go): the
	// position and last stable offset, and since when both stood still
	// (zero: not yet seen).
	stallPos, stallHwm int64
	stallSince         time.Time

	// The duplicate filter's archive: every valid record at offsets
	// [idsFrom, position) that a flush wrote facts for has its ID in
	// dedup_ids. ids holds the records decided since the last flush,
	// written by the next flush after its facts.
	fetchFrom   int64 // the offset the assignment asked the first fetch for
	idsFrom     int64
	progressIDs []string // topic IDs the incarnation's rows may carry
	ids         *schema.DedupIDs
}

// takeIDs hands st's pending archive entries to f and gives st buffers of
// a finished flush (or new ones).
func (c *Consumer) takeIDs(st *partState, f *schema.Facts) {
	d := st.ids
	if d == nil || d.Len() == 0 {
		return
	}
	d.Topic, d.TopicID, d.Partition = c.cfg.Topic, st.topicID, st.p
	f.DedupIDs = append(f.DedupIDs, d)
	if n := len(c.idPool); n > 0 {
		st.ids, c.idPool = c.idPool[n-1], c.idPool[:n-1]
	} else {
		st.ids = &schema.DedupIDs{}
	}
}

// recycleIDs takes back the archive buffers of a finished flush: reusing
// them saves the pipeline fresh memory at every flush.
func (c *Consumer) recycleIDs(f *schema.Facts) {
	for _, d := range f.DedupIDs {
		if d.Len() < cap(d.Offsets)/4 {
			continue // sized for a larger flush (a backlog): let it go
		}
		d.Reset()
		c.idPool = append(c.idPool, d)
	}
	clear(f.DedupIDs)
	f.DedupIDs = f.DedupIDs[:0]
}

// delayKey is a record's second (Kafka timestamp) and its event's month
// index (-1: rejected), by which a flush counts its records: the serve
// loop reports each record's served delay when its quarter's rows are
// rewritten (a live round for the live quarter, a recompute for late
// events).
type delayKey struct {
	sec   int64
	month int32
}

type commitPos struct {
	offset int64
	meta   string
}

// flushJob is one flush: what to write, and what to commit once written.
type flushJob struct {
	facts   *schema.Facts
	dlq     []*kgo.Record
	commits map[int32]commitPos
	delays  map[delayKey]int
	started time.Time
	err     error
}

// New connects to Kafka and prepares a consumer. franz-go joins the group
// as soon as the client exists, so partitions can be assigned before Run
// (which opens the duplicate filter's disk and starts flushing). extra are
// additional client options (TLS, SASL, logging) built by the caller.
func New(cfg Config, w Writer, log *slog.Logger, reg prometheus.Registerer, extra ...kgo.Opt) (*Consumer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Consumer{
		cfg:       cfg,
		log:       log,
		w:         w,
		m:         newMetrics(reg),
		parts:     make(map[int32]*partState),
		owned:     make(map[int32]bool),
		flushReq:  make(chan *flushJob),
		flushDone: make(chan *flushJob, 1),
		warn:      rateLimiter{every: 30 * time.Second},
		built:     make(chan struct{}),
	}
	// The stall clock starts now, not at the epoch: the client joins the
	// group as soon as it exists, so Ready can see lag before Run starts.
	c.lastFlushOK.Store(time.Now().UnixNano())
	srv, err := newServer(w, cfg, log, reg)
	if err != nil {
		return nil, err
	}
	c.srv = srv
	if srv != nil {
		srv.lag = func() (int64, bool) { return c.totalLag.Load(), c.lagKnown.Load() }
	}
	promauto.With(reg).NewGaugeFunc(prometheus.GaugeOpts{Name: "usagepipe_dedup_disk_bytes",
		Help: "Bytes of the duplicate filters' on-disk store (files and write buffers) while run runs."},
		func() float64 {
			if d := c.disk.Load(); d != nil {
				return float64(d.Bytes())
			}
			return 0
		})
	for range cfg.Workers {
		c.workers = append(c.workers, &worker{agg: aggregate.New(cfg.Topic), ahead: [2]decoded{
			{dec: decode.New(decode.Config{MaxClockSkew: cfg.MaxClockSkew})},
			{dec: decode.New(decode.Config{MaxClockSkew: cfg.MaxClockSkew})},
		}})
	}
	opts := []kgo.Opt{
		kgo.SeedBrokers(cfg.Brokers...),
		kgo.ConsumerGroup(cfg.Group),
		kgo.ConsumeTopics(cfg.Topic),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.KeepControlRecords(), // transaction markers move the position to the last stable offset
		kgo.DisableAutoCommit(),
		kgo.BlockRebalanceOnPoll(),
		kgo.Balancers(kgo.CooperativeStickyBalancer()),
		kgo.AdjustFetchOffsetsFn(c.adjustOffsets),
		kgo.OnPartitionsAssigned(c.onAssigned),
		kgo.OnPartitionsRevoked(c.onRevoked),
		kgo.OnPartitionsLost(c.onLost),
		kgo.DefaultProduceTopic(cfg.DLQTopic),
		kgo.ProducerBatchMaxBytes(16 << 20), // rejected values can exceed 1 MiB (too_large)
		kgo.FetchMaxBytes(8 << 20),
		kgo.FetchMaxPartitionBytes(2 << 20),
		kgo.SessionTimeout(cfg.SessionTimeout),
		kgo.RebalanceTimeout(cfg.RebalanceTimeout),
	}
	opts = append(opts, cfg.ConnOpts...)
	cl, err := kgo.NewClient(append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	c.cl = cl
	c.adm = kadm.NewClient(cl)
	close(c.built)
	c.setClickHouseUp(true)
	return c, nil
}

// setClickHouseUp records whether ClickHouse answered the last write or
// ping (for Ready and usagepipe_clickhouse_up).
func (c *Consumer) setClickHouseUp(up bool) {
	// (The flusher and the pinger both call it: one at a time, so that the
	// gauge ends as the flag does.)
	c.chUpMu.Lock()
	defer c.chUpMu.Unlock()
	c.chUp.Store(up)
	if up {
		c.m.clickhouseUp.Set(1)
	} else {
		c.m.clickhouseUp.Set(0)
	}
}

// Client is the underlying Kafka client (for metrics plugins and tests).
func (c *Consumer) Client() *kgo.Client { return c.cl }

// Ready reports whether the consumer should receive traffic: ClickHouse
// reachable, and not stalled (records waiting while no flush succeeded for
// the stall timeout). The string says why not.
func (c *Consumer) Ready() (bool, string) {
	if !c.chUp.Load() {
		return false, "clickhouse unreachable"
	}
	last := time.Unix(0, c.lastFlushOK.Load())
	if c.totalLag.Load() > 0 && time.Since(last) > c.cfg.ReadyStallTimeout {
		return false, fmt.Sprintf("lag %d records and no flush for %s", c.totalLag.Load(), time.Since(last).Round(time.Second))
	}
	return true, "ok"
}

// Run consumes until ctx is cancelled (then it flushes what it holds, within
// cfg.ShutdownTimeout, and returns nil) or, with cfg.UntilCaughtUp, until
// every record that existed when it started is flushed and committed.
// It closes the Kafka client before returning.
func (c *Consumer) Run(ctx context.Context) error {
	disk, err := c.openDisk()
	if err != nil {
		c.cl.Close()
		return err
	}
	c.useDisk(disk)
	defer func() {
		c.cl.AllowRebalance() // Close waits for a blocked rebalance (even after a panic)
		c.cl.Close()
		if c.probe != nil {
			c.probe.Close()
		}
		if err := disk.Close(); err != nil {
			c.log.Warn("close the duplicate filter's disk", "err", err)
		}
	}()
	prog := c.startProgress()
	defer prog.stop() // after the last flush: logs the run summary
	var targets map[int32]int64
	if c.cfg.UntilCaughtUp {
		var err error
		if targets, err = c.endOffsets(ctx); err != nil {
			return err
		}
	}
	c.lastFlushOK.Store(time.Now().UnixNano())
	c.m.lastFlush.SetToCurrentTime()

	// The flusher may outlive ctx by ShutdownTimeout so that a SIGTERM still
	// writes what was read.
	flushCtx, cancelFlush := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelFlush()
	c.mu.Lock()
	c.flushCtx = flushCtx // from now on a revoke flushes (onRevoked)
	c.mu.Unlock()
	stopWatch := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(c.cfg.ShutdownTimeout, cancelFlush)
		context.AfterFunc(flushCtx, func() { t.Stop() })
	})
	defer stopWatch()

	var wg sync.WaitGroup
	wg.Go(func() { c.flusher(flushCtx) })
	wg.Go(func() { c.pinger(flushCtx) })
	defer wg.Wait()
	defer cancelFlush()
	defer close(c.flushReq)
	// The serve loop stops with ctx; the served rows of the last flushes
	// are completed below (--until-caught-up) or by the next sweep.
	serveCtx, stopServe := context.WithCancel(ctx)
	var serveWG sync.WaitGroup
	if c.srv != nil {
		serveWG.Go(func() { c.srv.run(serveCtx) })
	}
	defer serveWG.Wait()
	defer stopServe()

	err = c.loop(ctx, targets)
	c.mu.Lock()
	ferr := c.finish()
	c.closed = true
	broken := c.broken
	c.mu.Unlock()
	c.cl.AllowRebalance()
	c.m.ready.Set(0)
	if err == nil {
		err = ferr
	}
	if c.srv != nil && !broken {
		stopServe()
		serveWG.Wait()
		switch {
		case err == nil && c.cfg.UntilCaughtUp:
			// Contract section 5: exit only once the served rows are complete.
			err = c.srv.complete(flushCtx)
		case err == nil || errors.Is(err, ErrTopicRecreated):
			// SIGTERM: the served rows of what this run wrote, within the
			// shutdown timeout; else the next sweep (any instance) does it
			// (also the recompute of this run's live rows).
			c.srv.endLive()
			if derr := c.srv.round(flushCtx, false, true); derr != nil {
				c.log.Warn("served rollups: not recomputed at shutdown; the next sweep will", "err", derr)
			}
		}
		c.srv.close(flushCtx)
	}
	return err
}

func (c *Consumer) loop(ctx context.Context, targets map[int32]int64) error {
	for {
		if ctx.Err() != nil {
			return nil
		}
		pollCtx, cancel := context.WithTimeout(ctx, c.cfg.FlushInterval/2+time.Millisecond)
		fetches := c.cl.PollRecords(pollCtx, c.cfg.MaxPollRecords)
		cancel()
		if fetches.IsClientClosed() {
			return nil
		}
		var fatal error
		recreated := false
		fetches.EachError(func(t string, p int32, err error) {
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
				return
			}
			if errors.Is(err, kerr.UnknownTopicID) || errors.Is(err, kerr.InconsistentTopicID) {
				recreated = true
			}
			c.warn.Do(func(n int) { c.log.Warn("fetch error", "topic", t, "partition", p, "err", err, "repeats", n) })
		})
		if recreated && c.topicChanged(ctx) {
			// The client keeps fetching the old incarnation's ID: write
			// and commit what was read, and let the next start read the
			// new incarnation from its first record.
			return fmt.Errorf("%w: %s", ErrTopicRecreated, c.cfg.Topic)
		}
		c.mu.Lock()
		c.process(fetches)
		c.collect()
		c.probeAborted(ctx, time.Now())
		if c.cfg.UntilCaughtUp && c.reached(targets) {
			// The backfill has read everything it has to: write and commit
			// it now instead of after the flush interval and another poll.
			if c.unflushed() {
				fatal = c.startFlush(false)
			} else {
				fatal = c.waitFlight(true)
			}
		} else if c.flushDue() {
			fatal = c.startFlush(true)
		}
		if err := c.recoverErr.Load(); err != nil && fatal == nil {
			fatal = *err // what was decided is flushed by finish; the rest is read again next time
		}
		done := c.cfg.UntilCaughtUp && c.flight == nil && c.caughtUp(ctx, targets)
		c.m.pendingFacts.Set(float64(c.pending()))
		c.m.dedupIDs.Set(float64(c.dedupIDs()))
		c.m.dedupDiskIDs.Set(float64(c.dedupDiskIDs()))
		c.updateReady()
		c.mu.Unlock()
		c.cl.AllowRebalance()
		if fatal != nil {
			return fatal
		}
		if done {
			c.log.Info("caught up", "partitions", len(targets))
			return nil
		}
	}
}

// process hands each partition of a poll to its worker; workers run in
// parallel and process dispatches and waits for them.
func (c *Consumer) process(fetches kgo.Fetches) {
	byWorker := make([][]kgo.FetchTopicPartition, len(c.workers))
	nowMs := time.Now().UnixMilli() // the duplicate filters' clock (dedup.Set.SetClock)
	fetches.EachPartition(func(ftp kgo.FetchTopicPartition) {
		// Errors (a poll timeout is reported as partition -1) carry no records.
		if ftp.Topic != c.cfg.Topic || ftp.Partition < 0 {
			return
		}
		if st := c.parts[ftp.Partition]; st != nil && ftp.Err == nil {
			st.hwmKnown = true
		}
		if len(ftp.Records) == 0 && ftp.HighWatermark <= 0 {
			return
		}
		i := int(ftp.Partition) % len(c.workers)
		byWorker[i] = append(byWorker[i], ftp)
	})
	var wg sync.WaitGroup
	for i := 1; i < len(c.workers); i++ {
		if len(byWorker[i]) > 0 {
			wg.Go(func() {
				for _, ftp := range byWorker[i] {
					c.processPartition(c.workers[i], ftp, nowMs)
				}
			})
		}
	}
	for _, ftp := range byWorker[0] {
		c.processPartition(c.workers[0], ftp, nowMs)
	}
	wg.Wait()
}

// maxDedupReserve caps the IDs a partition's dedup table is sized for ahead
// of its backlog: 2^19 IDs need 2^20 slots, 24 MiB. A larger backlog grows
// the table as the IDs arrive, as before.
const maxDedupReserve = 1 << 19

// processPartition handles the records of one partition from one poll. It
// touches only w and the partition's own state. nowMs is this host's clock.
func (c *Consumer) processPartition(w *worker, ftp kgo.FetchTopicPartition, nowMs int64) {
	st := c.parts[ftp.Partition]
	if ftp.Topic != c.cfg.Topic || st == nil {
		return // revoked or lost since the fetch: the new owner reads it
	}
	st.dedup.SetClock(nowMs)
	var consumed, dups, replayed, ahead int
	var accepted [numTypes]int
	// Each record is decoded, and its dedup slot prefetched, one record
	// ahead: the slot's cache miss overlaps the previous record's work.
	recs := ftp.Records
	if len(recs) > 0 && st.next < 0 && ftp.HighWatermark > recs[0].Offset {
		// The partition's first records: its backlog up to the high
		// watermark is known, so the dedup table is sized for it once
		// instead of doubling its way there (up to maxDedupReserve IDs).
		st.dedup.Reserve(int(min(ftp.HighWatermark-recs[0].Offset, maxDedupReserve)))
	}
	if len(recs) > 0 {
		// The first record of a fetch above the offset expected: the
		// client may have gone on from a new log start (checkReset).
		expected := st.next
		if expected < 0 {
			expected = st.fetchFrom
		}
		if recs[0].Offset > expected {
			c.checkReset(st, expected, recs[0].Offset, ftp.LogStartOffset)
		}
		w.prepare(st, recs[0], &w.ahead[0])
	}
	for i, r := range recs {
		if i+1 < len(recs) {
			w.prepare(st, recs[i+1], &w.ahead[(i+1)%2])
		}
		d := &w.ahead[i%2]
		off := r.Offset
		if st.next >= 0 && off < st.next {
			continue
		}
		ts := d.ts
		fresh := off >= st.committed
		st.next = off + 1
		if d.ctrl {
			if off >= st.aggFrom {
				w.agg.Skip(st.p, off)
			}
			continue
		}
		if !fresh {
			replayed++
		}
		st.lastTs = ts
		if off < st.aggFrom { // dedup-only replay: fills the filter, decides nothing
			if d.rej == nil {
				st.dedup.CheckKey(d.key, ts, off)
			}
			continue
		}
		if b := aggregate.BucketStart(off); b != st.tsBucket {
			st.tsBucket, st.bucketTs = b, ts
		}
		if fresh {
			consumed++
			k := delayKey{sec: ts / 1000, month: -1}
			if d.rej == nil {
				k.month = quarter.MonthIndex(d.ev.OccurredAtMs)
			}
			if k == st.delayAt {
				st.delayN++
			} else {
				st.foldDelays()
				st.delayAt, st.delayN = k, 1
			}
		}
		if d.rej != nil {
			w.agg.Skip(st.p, off)
			if fresh {
				c.m.rejected[d.rej.Reason].Inc()
				st.dlq = append(st.dlq, deadLetter(r, d.rej))
			}
			continue
		}
		if !st.dedup.Covered(ts) {
			rec := st.dedup.Recovery(ts, off)
			if err := c.recoverDedup(st, rec, off); err != nil {
				// Undecided: the record and those after it stay unread.
				st.next = off
				c.recoverErr.CompareAndSwap(nil, &err)
				break
			}
		}
		dup := st.dedup.CheckKey(d.key, ts, off)
		if err := st.dedup.Err(); err != nil {
			st.next = off // undecided: read again by the next run
			c.recoverErr.CompareAndSwap(nil, &err)
			break
		}
		if fresh && st.dedup.Ahead(ts) {
			ahead++
			if ahead == 1 && !st.warnedAhead {
				st.warnedAhead = true
				c.log.Warn("record stamped beyond this host's clock + 1h: the duplicate filter's eviction takes it as the clock + 1h; check the producers' and this host's clocks",
					"partition", st.p, "offset", off, "timestamp", time.UnixMilli(ts).UTC().Format(time.RFC3339))
			}
		}
		st.ids.Add(off, ts, d.ev.EventID)
		if dup {
			w.agg.Skip(st.p, off)
			if fresh {
				dups++
			}
			continue
		}
		w.agg.Add(st.p, off, &d.ev)
		if fresh {
			accepted[d.ev.Type]++
		}
	}
	if end := stableEnd(ftp); end > 0 {
		st.hwm = end
	}
	if st.hwm > 0 {
		c.m.lag.WithLabelValues(strconv.Itoa(int(st.p))).Set(float64(max(st.hwm-st.position(), 0)))
	}
	c.m.consumed.Add(float64(consumed))
	c.m.duplicates.Add(float64(dups))
	if ahead > 0 {
		c.m.dedupAhead.Add(float64(ahead))
	}
	c.m.replayed.Add(float64(replayed))
	for t, n := range accepted {
		if n > 0 {
			c.m.accepted[t].Add(float64(n))
		}
	}
}

// stableEnd is what a read_committed consumer can reach in ftp's partition:
// the last stable offset, or the high watermark where the broker sent none.
func stableEnd(ftp kgo.FetchTopicPartition) int64 {
	if ftp.LastStableOffset >= 0 && ftp.LastStableOffset <= ftp.HighWatermark {
		return ftp.LastStableOffset
	}
	return ftp.HighWatermark
}

// position is the offset the partition has been handled up to: the next
// record to process, or the durable position while replaying below it.
func (st *partState) position() int64 { return max(st.next, st.committed) }

// prepare decodes r into d and prefetches its dedup slot and account.
func (w *worker) prepare(st *partState, r *kgo.Record, d *decoded) {
	d.ts = r.Timestamp.UnixMilli()
	if d.ctrl = r.Attrs.IsControl(); d.ctrl {
		return
	}
	d.rej = d.dec.Decode(r.Value, d.ts, &d.ev)
	if d.rej == nil {
		d.key = st.dedup.Key(d.ev.EventID)
		st.dedup.Prefetch(d.key)
		w.agg.Prefetch(d.ev.AccountID)
	}
}

// foldDelays moves the records counted under the current key (second and
// event month) into delays.
func (st *partState) foldDelays() {
	if st.delayN > 0 {
		st.delays[st.delayAt] += st.delayN
		st.delayN = 0
	}
}

// deadLetter builds the dead-letter record for r (contract section 2).
func deadLetter(r *kgo.Record, rej *event.Rejection) *kgo.Record {
	return &kgo.Record{
		Key:   r.Key,
		Value: r.Value,
		Headers: []kgo.RecordHeader{
			{Key: "usagepipe.reason", Value: []byte(rej.Reason.String())},
			{Key: "usagepipe.error", Value: []byte(rej.Msg)},
			{Key: "usagepipe.source.topic", Value: []byte(r.Topic)},
			{Key: "usagepipe.source.partition", Value: strconv.AppendInt(nil, int64(r.Partition), 10)},
			{Key: "usagepipe.source.offset", Value: strconv.AppendInt(nil, r.Offset, 10)},
		},
	}
}

func (c *Consumer) flushDue() bool {
	if c.pending() >= c.cfg.MaxPendingFacts {
		return true
	}
	return time.Since(c.lastRun) >= c.cfg.FlushInterval && c.unflushed()
}

// unflushed reports whether anything read is not yet handed to a flush.
func (c *Consumer) unflushed() bool {
	if c.pending() > 0 {
		return true
	}
	for _, st := range c.parts {
		if st.position() > st.flushed || len(st.dlq) > 0 {
			return true
		}
	}
	return false
}

// reached reports whether this instance owns every partition with records
// to read for --until-caught-up and has read each up to its target.
func (c *Consumer) reached(targets map[int32]int64) bool {
	for p, t := range targets {
		if t <= 0 {
			continue
		}
		if st := c.parts[p]; st == nil || st.position() < t {
			return false
		}
	}
	return true
}

// startFlush hands everything gathered so far to the flusher. With async it
// returns once the flusher has it (after waiting for the previous flush and
// committing it); otherwise it also waits for this flush and commits it.
func (c *Consumer) startFlush(async bool) error {
	waitStart := time.Now()
	if err := c.waitFlight(!async); err != nil {
		return err
	}
	if waited := time.Since(waitStart); waited > 10*time.Millisecond {
		c.log.Debug("flush waited for the previous one", "seconds", waited.Seconds())
	}
	job := &flushJob{facts: &c.bufs[c.buf], commits: make(map[int32]commitPos), delays: make(map[delayKey]int), started: time.Now()}
	c.buf ^= 1
	job.facts.Reset()
	// Room for the previous flush's rows, scaled by how many more events
	// this one holds: filling the buffer does not regrow it.
	pending := c.pending()
	if c.lastPending > 0 {
		job.facts.Reserve(&c.bufs[c.buf], float64(pending)/float64(c.lastPending))
	}
	c.lastPending = pending
	aggs := make([]*aggregate.Aggregator, len(c.workers))
	for i, w := range c.workers {
		aggs[i] = w.agg
	}
	aggregate.DrainAll(job.facts, aggs...) // every worker's accounts in one name order
	for p, st := range c.parts {
		job.dlq = append(job.dlq, st.dlq...)
		st.dlq = nil
		st.foldDelays()
		for s, n := range st.delays {
			job.delays[s] += n
		}
		clear(st.delays)
		c.takeIDs(st, job.facts)
		if pos := st.position(); pos > st.flushed {
			from := c.dedupFrom(st)
			job.commits[p] = commitPos{offset: pos, meta: commitMeta(st.topicID, from)}
			job.facts.Progress = append(job.facts.Progress, schema.Progress{
				Topic: c.cfg.Topic, TopicID: st.topicID, Partition: p, NextOffset: pos, DedupFromMs: from, IDsFrom: st.idsFrom})
			st.flushed, st.advanced = pos, true
		}
	}
	c.lastRun = time.Now()
	c.flight = job
	select {
	case c.flushReq <- job:
	case <-c.flushCtx.Done():
		c.flight = nil
		c.broken = true
		return fmt.Errorf("flush: %w", c.flushCtx.Err())
	}
	if !async {
		return c.waitFlight(true)
	}
	return nil
}

// waitFlight waits for the flush in flight, if any, and commits its offsets
// (synchronously if sync: on revoke and at shutdown).
func (c *Consumer) waitFlight(sync bool) error {
	if c.flight == nil {
		return nil
	}
	job := <-c.flushDone
	c.flight = nil
	c.recycleIDs(job.facts)
	if job.err != nil {
		c.broken = true
		return job.err
	}
	c.commit(job.commits, sync)
	return nil
}

// collect commits a finished flush without waiting for one in flight.
func (c *Consumer) collect() {
	if c.flight == nil {
		return
	}
	select {
	case job := <-c.flushDone:
		c.flight = nil
		c.recycleIDs(job.facts)
		if job.err != nil {
			c.broken = true
			return
		}
		c.commit(job.commits, false)
	default:
	}
}

// dedupFrom is the floor from which the next owner of the partition
// rebuilds its duplicate filter: the window (plus slack) before the
// greatest timestamp seen. Older time is recovered on demand (recover.go).
func (c *Consumer) dedupFrom(st *partState) int64 {
	wm, ok := st.dedup.Watermark()
	if !ok {
		if st.hasFrom {
			return st.from // nothing read since the assignment: keep what it said
		}
		return st.lastTs - (c.cfg.DedupWindow + dedup.Slack).Milliseconds()
	}
	return wm - (c.cfg.DedupWindow + dedup.Slack).Milliseconds()
}

// commitMeta is stored with a committed offset for people and lag tools;
// the position itself is read from ClickHouse (ingest_progress). Releases
// before it wrote metaPrefixV1 and resumed from the committed offset, which
// an upgrade still honours once.
func commitMeta(topicID string, dedupFrom int64) string {
	return metaPrefixV2 + topicID + " dedup_from_ms=" + strconv.FormatInt(dedupFrom, 10)
}

const (
	metaPrefixV1 = "usagepipe/v1 dedup_from_ms="
	metaPrefixV2 = "usagepipe/v2 topic_id="
)

// asyncCommitWait bounds how long the poll loop may wait to issue a commit.
const asyncCommitWait = time.Second

// parseMetaV1 reads the dedup start of a release-v1 commit.
func parseMetaV1(s string) (int64, bool) {
	v, ok := strings.CutPrefix(s, metaPrefixV1)
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(v, 10, 64)
	return n, err == nil
}

// commit commits offsets (with their metadata) of a written flush. From the
// poll loop it is asynchronous: franz-go orders commits and holds them while
// the member is between JoinGroup and SyncGroup, which must not stall
// consuming. On revoke and at shutdown it is synchronous. A failed commit
// is only logged: the next flush commits later offsets, and a replay of
// uncommitted offsets is harmless.
func (c *Consumer) commit(commits map[int32]commitPos, sync bool) {
	if len(commits) == 0 || c.broken {
		return
	}
	offsets := map[string]map[int32]kgo.EpochOffset{c.cfg.Topic: {}}
	meta := make(map[int32]string, len(commits))
	for p, pos := range commits {
		offsets[c.cfg.Topic][p] = kgo.EpochOffset{Epoch: -1, Offset: pos.offset}
		meta[p] = pos.meta
	}
	ctx := kgo.PreCommitFnContext(c.flushCtx, func(req *kmsg.OffsetCommitRequest) error {
		for i := range req.Topics {
			t := &req.Topics[i]
			for j := range t.Partitions {
				if m, ok := meta[t.Partitions[j].Partition]; ok && t.Topic == c.cfg.Topic {
					t.Partitions[j].Metadata = &m
				}
			}
		}
		return nil
	})
	onDone := func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err == nil && resp == nil {
			return
		}
		failed := err
		if resp != nil {
			for _, t := range resp.Topics {
				for _, p := range t.Partitions {
					if p.ErrorCode != 0 && failed == nil {
						failed = fmt.Errorf("partition %d: %w", p.Partition, kerr.ErrorForCode(p.ErrorCode))
					}
				}
			}
		}
		if failed != nil {
			c.warn.Do(func(n int) {
				c.log.Warn("offset commit failed; a later flush commits, or the next owner replays", "err", failed, "repeats", n)
			})
		}
	}
	if !sync {
		// franz-go's CommitOffsets still waits for this member's own
		// JoinGroup/SyncGroup to finish before issuing; bound that wait so
		// the poll loop keeps consuming while the group waits out a dead
		// member's session. A commit given up is harmless: the next flush
		// commits later offsets.
		actx, cancel := context.WithTimeout(ctx, asyncCommitWait)
		c.cl.CommitOffsets(actx, offsets, func(cl *kgo.Client, req *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
			cancel()
			onDone(cl, req, resp, err)
		})
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c.cl.CommitOffsetsSync(ctx, offsets, onDone)
}

// finish flushes and commits what is left (shutdown). Called with mu held.
// Then it commits every position this run flushed once more,
// synchronously: when the last flush had nothing new, the commit of the
// one before may still be in flight (asynchronous, bounded by
// asyncCommitWait), and the group would be left behind this database
// (lag tools would show records that are counted). A synchronous commit
// waits for the ones before it; the offsets are the same, so it is
// harmless when they landed.
func (c *Consumer) finish() error {
	if c.broken {
		return c.waitFlight(true)
	}
	if err := c.startFlush(false); err != nil {
		return err
	}
	again := make(map[int32]commitPos)
	for p, st := range c.parts {
		if st.advanced {
			again[p] = commitPos{offset: st.flushed, meta: commitMeta(st.topicID, c.dedupFrom(st))}
		}
	}
	c.commit(again, true)
	return nil
}

// updateReady recomputes the lag total and the ready gauge.
func (c *Consumer) updateReady() {
	var lag int64
	// Known once an assignment arrived and every partition it gave is set
	// up with its hwm: a member left with none has a known lag of zero;
	// one whose partitions AdjustFetchOffsets has not set up yet does not.
	known := c.joined
	for p := range c.owned {
		known = known && c.parts[p] != nil
	}
	for _, st := range c.parts {
		if st.hwm > st.position() {
			lag += st.hwm - st.position()
		}
		known = known && st.hwmKnown
	}
	c.totalLag.Store(lag)
	c.lagKnown.Store(known)
	if ok, _ := c.Ready(); ok {
		c.m.ready.Set(1)
	} else {
		c.m.ready.Set(0)
	}
}

// flusher writes flush jobs one at a time: dead letters first, then facts,
// each retried with backoff until it succeeds or ctx ends.
func (c *Consumer) flusher(ctx context.Context) {
	for job := range c.flushReq {
		job.err = c.write(ctx, job)
		if job.err == nil {
			now := time.Now()
			c.m.flushSeconds.Observe(now.Sub(job.started).Seconds())
			c.m.flushOK.Inc()
			c.m.lastFlush.Set(float64(now.UnixNano()) / 1e9)
			c.lastFlushOK.Store(now.UnixNano())
			c.log.Debug("flushed", "rows", job.facts.Rows(), "dlq", len(job.dlq), "seconds", now.Sub(job.started).Seconds())
			for k, n := range job.delays {
				// (0 for a record stamped after now: a producer's clock
				// ahead, or synthetic times.)
				c.m.delay.ObserveN(max(now.Sub(time.Unix(k.sec, 0)).Seconds()-0.5, 0), uint64(n))
			}
			if c.srv != nil {
				c.srv.touch(job.facts, job.delays)
			}
		}
		c.flushDone <- job
	}
}

func (c *Consumer) write(ctx context.Context, job *flushJob) error {
	backoff := 100 * time.Millisecond
	pendingDLQ := job.dlq
	for {
		err := c.produceDLQ(ctx, &pendingDLQ)
		if err == nil {
			err = c.w.Write(ctx, job.facts)
			if err == nil {
				c.setClickHouseUp(true)
				return nil
			}
			c.setClickHouseUp(false)
		}
		c.m.flushErr.Inc()
		if ctx.Err() != nil {
			return fmt.Errorf("flush abandoned at shutdown: %w", err)
		}
		c.warn.Do(func(n int) { c.log.Warn("flush failed; retrying", "err", err, "backoff", backoff, "repeats", n) })
		select {
		case <-ctx.Done():
			return fmt.Errorf("flush abandoned at shutdown: %w", err)
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// produceDLQ produces the dead letters in *recs, leaving in *recs those that
// failed.
func (c *Consumer) produceDLQ(ctx context.Context, recs *[]*kgo.Record) error {
	if len(*recs) == 0 {
		return nil
	}
	var small, failed []*kgo.Record
	var firstErr error
	note := func(results kgo.ProduceResults) {
		for _, r := range results {
			if r.Err != nil {
				c.m.dlqErr.Inc()
				failed = append(failed, r.Record)
				if firstErr == nil {
					firstErr = r.Err
				}
				continue
			}
			c.m.dlq[reasonOf(r.Record)].Inc()
		}
	}
	// One ProduceSync per chunk of at most dlqChunkBytes, one at a time, so
	// that no record batch exceeds the topic's max.message.bytes (1 MiB by
	// default); a larger record goes alone.
	size := 0
	for _, r := range *recs {
		n := len(r.Value) + len(r.Key) + 256
		if n > dlqChunkBytes {
			note(c.cl.ProduceSync(ctx, r))
			continue
		}
		if size+n > dlqChunkBytes {
			note(c.cl.ProduceSync(ctx, small...))
			small, size = small[:0], 0
		}
		small = append(small, r)
		size += n
	}
	if len(small) > 0 {
		note(c.cl.ProduceSync(ctx, small...))
	}
	*recs = failed
	if firstErr != nil {
		return fmt.Errorf("dead-letter produce to %s: %w", c.cfg.DLQTopic, firstErr)
	}
	return nil
}

// dlqChunkBytes bounds the dead letters produced together.
const dlqChunkBytes = 512 << 10

func reasonOf(r *kgo.Record) event.Reason {
	for _, rr := range event.Reasons {
		if rr.String() == string(r.Headers[0].Value) {
			return rr
		}
	}
	return event.ReasonNone
}

// pinger keeps chUp current while no flush is running.
func (c *Consumer) pinger(ctx context.Context) {
	t := time.NewTicker(c.cfg.PingInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		pctx, cancel := context.WithTimeout(ctx, c.cfg.PingInterval)
		err := c.w.Ping(pctx)
		cancel()
		c.setClickHouseUp(err == nil)
		if ok, _ := c.Ready(); ok {
			c.m.ready.Set(1)
		} else {
			c.m.ready.Set(0)
		}
	}
}

// endOffsets lists the last stable offset of every partition of the topic:
// what --until-caught-up must reach. A partition whose retained log is
// empty (start = end) has nothing to reach: its target is 0.
func (c *Consumer) endOffsets(ctx context.Context) (map[int32]int64, error) {
	ends, err := c.adm.ListCommittedOffsets(ctx, c.cfg.Topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list end offsets of %s: %w", c.cfg.Topic, err)
	}
	starts, err := c.adm.ListStartOffsets(ctx, c.cfg.Topic)
	if err == nil {
		err = starts.Error()
	}
	if err != nil {
		return nil, fmt.Errorf("list start offsets of %s: %w", c.cfg.Topic, err)
	}
	out := make(map[int32]int64)
	ends.Each(func(o kadm.ListedOffset) {
		out[o.Partition] = o.Offset
		if s, ok := starts.Lookup(o.Topic, o.Partition); ok && s.Offset >= o.Offset {
			out[o.Partition] = 0
		}
	})
	if len(out) == 0 {
		return nil, fmt.Errorf("topic %s does not exist", c.cfg.Topic)
	}
	return out, nil
}

// topicChanged reports whether the events topic now has another topic ID
// than the one its partitions were assigned with. Each partition is
// compared, not the last assignment's ID: a rebalance after the re-creation
// sets the new ID up for the partitions it adds while the client still
// fetches the others under the old one (comparing the last ID, the
// instance stalled instead of stopping).
func (c *Consumer) topicChanged(ctx context.Context) bool {
	id, err := c.fetchTopicID(ctx)
	if err != nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.parts {
		if st.topicID != "" && st.topicID != id {
			return true
		}
	}
	return false
}

// caughtUp reports whether ClickHouse holds every partition up to its
// target: what this instance flushed, and what the group's other members
// did (their progress rows). The group's committed offsets are not asked:
// a lost final commit must not make a finished backfill wait forever.
func (c *Consumer) caughtUp(ctx context.Context, targets map[int32]int64) bool {
	need := false
	for p, t := range targets {
		if t <= 0 {
			continue
		}
		need = true
		if st := c.parts[p]; st != nil && st.flushed < t {
			return false
		}
	}
	if !need {
		return true
	}
	ids := c.progressIDs
	if c.topicID == "" {
		// No partition assigned (yet, or at all: the group's other
		// members own them all): their progress rows say when the group
		// is done. The incarnation is looked up once, not every tick.
		if c.idleIDs == nil {
			topicID, err := c.fetchTopicID(ctx)
			if err == nil {
				_, c.idleIDs, err = c.incarnation(ctx, topicID)
			}
			if err != nil {
				c.log.Debug("caught-up check: topic incarnation", "err", err)
				return false
			}
		}
		ids = c.idleIDs
	}
	prog, err := c.w.ReadProgress(ctx, c.cfg.Topic, ids...)
	if err != nil {
		c.log.Debug("caught-up check: read progress", "err", err)
		return false
	}
	for p, t := range targets {
		if t > 0 && prog[p].NextOffset < t {
			c.log.Debug("caught-up check: partition behind", "partition", p, "target", t, "stored", prog[p].NextOffset)
			return false
		}
	}
	return true
}

// onAssigned runs after every join, even when nothing new is assigned
// (franz-go), before AdjustFetchOffsets sets up the new partitions: it
// records what this member owns, so that one that owns none has a known
// lag of zero (the serve loop need not pace itself for a backlog it does
// not have) and one whose partitions are not set up yet has none.
func (c *Consumer) onAssigned(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.joined = true
	for _, p := range assigned[c.cfg.Topic] {
		c.owned[p] = true
	}
	if c.srv != nil && len(assigned[c.cfg.Topic]) > 0 {
		c.srv.assignmentChanged()
	}
	c.updateReady()
}

// onRevoked flushes and commits everything before the partitions go, so the
// next owner replays as little as possible (drain, then let go).
func (c *Consumer) onRevoked(_ context.Context, _ *kgo.Client, revoked map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	// Before Run set up its flusher (the group may assign and revoke as
	// soon as the client exists, and Run may return before its loop),
	// nothing was read: there is nothing to flush.
	if !c.broken && !c.closed && c.flushCtx != nil {
		if err := c.startFlush(false); err != nil {
			c.log.Warn("flush on revoke failed; the next owner replays", "err", err)
		}
	}
	c.drop(revoked[c.cfg.Topic])
	if c.srv != nil && len(revoked[c.cfg.Topic]) > 0 {
		c.srv.assignmentChanged()
	}
}

// onLost drops state without committing: another member owns the
// partitions now, and anything written meanwhile is harmless.
func (c *Consumer) onLost(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.drop(lost[c.cfg.Topic])
	if c.srv != nil && len(lost[c.cfg.Topic]) > 0 {
		c.srv.assignmentChanged()
	}
}

// openDisk opens the duplicate filters' on-disk tier in a directory of its
// own under cfg.DedupDir.
func (c *Consumer) openDisk() (*dedup.Disk, error) {
	base := c.cfg.DedupDir
	if base == "" {
		base = os.TempDir()
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		return nil, fmt.Errorf("dedup-dir: %w", err)
	}
	dir, err := os.MkdirTemp(base, "usagepipe-dedup-")
	if err != nil {
		return nil, fmt.Errorf("dedup-dir: %w", err)
	}
	// The store takes its shares of --dedup-memory-mib; the tables get
	// the rest (d.TableBytes, setDedupLimits).
	d, err := dedup.OpenDisk(dedup.DiskConfig{Dir: dir, Memory: c.cfg.DedupMemory})
	if err != nil {
		return nil, err
	}
	c.disk.Store(d)
	return d, nil
}

// useDisk gives the partitions assigned before the store opened their
// on-disk tier: franz-go joins the group as soon as the client exists, so
// an assignment can come before Run opened the store, and such a
// partition's filter would never spill (memory past --dedup-memory-mib;
// found by CI on a busy machine). An assignment after the store opened
// finds it (c.disk, read under c.mu).
func (c *Consumer) useDisk(d *dedup.Disk) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, st := range c.parts {
		if !st.dedup.HasDisk() {
			st.dedup.UseDisk(d, 0)
		}
	}
	c.setDedupLimits()
}

// setDedupLimits shares the filters' memory among the owned partitions: a
// table holds up to 4/3 of its limit in slots rounded up to a power of two,
// 24 bytes each, so the worst case is 64 bytes per entry of the limit.
// (dedup.LimitFor(disk.TableBytes()/partitions), the strict budget that
// BenchmarkDedupDisk holds, was measured at 100k events/s: a limit 8×
// smaller, constant spills and disk lookups, pipeline CPU 0.20 → 0.79
// cores and event delay p99 1.96 → 3.63 s; so not used here yet.)
func (c *Consumer) setDedupLimits() {
	if len(c.parts) == 0 {
		return
	}
	limit := max(int(c.cfg.DedupMemory/64)/len(c.parts), 1024)
	for _, st := range c.parts {
		st.dedup.SetLimit(limit)
	}
}

func (c *Consumer) drop(parts []int32) {
	defer func() {
		if len(c.owned) == 0 {
			c.joined = false // until the assignment that follows
		}
	}()
	for _, p := range parts {
		delete(c.owned, p)
		if st := c.parts[p]; st != nil {
			// Nothing else holds st: records are processed under c.mu.
			st.dedup.Free()
		}
		delete(c.parts, p)
		c.worker(p).agg.Drop(p)
		c.m.lag.DeleteLabelValues(strconv.Itoa(int(p)))
	}
	c.m.ownPartitions.Set(float64(len(c.parts)))
}

// rateLimiter runs a function at most once per interval and counts the
// calls it swallowed.
type rateLimiter struct {
	mu      sync.Mutex
	every   time.Duration
	last    time.Time
	dropped int
}

func (r *rateLimiter) Do(fn func(repeats int)) {
	r.mu.Lock()
	if time.Since(r.last) < r.every {
		r.dropped++
		r.mu.Unlock()
		return
	}
	n := r.dropped
	r.last, r.dropped = time.Now(), 0
	r.mu.Unlock()
	fn(n)
}
