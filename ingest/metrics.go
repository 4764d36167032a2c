package ingest

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/usagepipe/usagepipe/ingest/dedup"
	"github.com/usagepipe/usagepipe/schema/event"
)

type metrics struct {
	consumed      prometheus.Counter
	accepted      [numTypes]prometheus.Counter
	rejected      [numReasons]prometheus.Counter
	dlq           [numReasons]prometheus.Counter
	dlqErr        prometheus.Counter
	duplicates    prometheus.Counter
	flushSeconds  prometheus.Histogram
	flushOK       prometheus.Counter
	flushErr      prometheus.Counter
	lag           *prometheus.GaugeVec
	delay         *batchHistogram
	lastFlush     prometheus.Gauge
	ready         prometheus.Gauge
	clickhouseUp  prometheus.Gauge
	replayed      prometheus.Counter
	pendingFacts  prometheus.Gauge
	ownPartitions prometheus.Gauge
	expired       prometheus.Counter
	restoredRows  prometheus.Counter

	dedupIDs              prometheus.Gauge
	dedupDiskIDs          prometheus.Gauge
	dedupRecoveries       prometheus.Counter
	dedupRecoveredRecords prometheus.Counter
	dedupUnrecoverable    prometheus.Counter
	dedupAhead            prometheus.Counter
}

// ReadyGaugeOpts and ClickHouseUpGaugeOpts describe usagepipe_ready and
// usagepipe_clickhouse_up, for a caller that reports them (as 0) before
// the Consumer exists and then unregisters them: a Prometheus registry
// accepts a name again only with the same help.
var (
	ReadyGaugeOpts = prometheus.GaugeOpts{Name: "usagepipe_ready",
		Help: "1 while /readyz answers 200: ClickHouse reachable and the consumer making progress."}
	ClickHouseUpGaugeOpts = prometheus.GaugeOpts{Name: "usagepipe_clickhouse_up",
		Help: "1 when the last ClickHouse ping or write succeeded."}
)

func newMetrics(reg prometheus.Registerer) *metrics {
	f := promauto.With(reg)
	m := &metrics{
		consumed: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_records_consumed_total",
			Help: "Records read from the events topic for the first time (replays after a restart are not counted again)."}),
		duplicates: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_events_duplicate_total",
			Help: "Valid events dropped as duplicates of an earlier event_id of the same partition inside the dedup window."}),
		flushSeconds: f.NewHistogram(prometheus.HistogramOpts{Name: "usagepipe_flush_duration_seconds",
			Help:    "Time to write one flush (dead-letter records, then ClickHouse facts) including retries.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120}}),
		lag: f.NewGaugeVec(prometheus.GaugeOpts{Name: "usagepipe_consumer_lag_records",
			Help: "Last stable offset (the high watermark on non-transactional topics) minus this instance's position, per owned partition: 0 once caught up."}, []string{"partition"}),
		delay: newBatchHistogram(prometheus.HistogramOpts{Name: "usagepipe_event_delay_seconds",
			Help:    "Kafka record timestamp to the moment its facts were acknowledged by ClickHouse.",
			Buckets: []float64{.1, .25, .5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 900, 3600}}),
		lastFlush: f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_last_flush_timestamp_seconds",
			Help: "Unix time of the last successful flush."}),
		ready:        f.NewGauge(ReadyGaugeOpts),
		clickhouseUp: f.NewGauge(ClickHouseUpGaugeOpts),
		replayed: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_records_replayed_total",
			Help: "Records read again after an assignment: to rebuild the dedup window, or below a restored count's covered end."}),
		pendingFacts: f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_pending_facts",
			Help: "Fact keys aggregated in memory and not yet handed to a flush."}),
		expired: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_records_expired_unread_total",
			Help: "Offsets Kafka's retention deleted before any usagepipe instance had read them (found at assignment: log start beyond the durable position). Their events are lost; alert on any increase."}),
		restoredRows: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_restored_count_rows_total",
			Help: "Event-count rows of open offset buckets restored from ClickHouse at partition assignment (instead of recounting from Kafka)."}),
		dedupIDs: f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_dedup_ids",
			Help: "Entries (event ID, record timestamp) the duplicate filters of this instance hold, all owned partitions."}),
		dedupDiskIDs: f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_dedup_disk_ids",
			Help: "Entries the duplicate filters of this instance moved to their on-disk store (hours beyond --dedup-memory-mib) and still hold."}),
		dedupRecoveries: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_dedup_recoveries_total",
			Help: "Times a record's dedup window reached record time the filter no longer held (evicted, or before its floor) and that part of the partition was re-read from Kafka before deciding."}),
		dedupRecoveredRecords: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_dedup_recovery_records_total",
			Help: "Records re-read from Kafka by duplicate-filter recoveries."}),
		dedupUnrecoverable: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_dedup_unrecoverable_total",
			Help: "Duplicate-filter recoveries that needed records Kafka's retention had already deleted: copies of those records may have been counted. Alert on any increase."}),
		dedupAhead: f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_dedup_records_ahead_total",
			Help: "Valid records stamped more than 1h after this host's clock. They are decided as usual, but the duplicate filter's eviction takes them as the clock + 1h: check the producers' clocks and this host's (NTP)."}),
		ownPartitions: f.NewGauge(prometheus.GaugeOpts{Name: "usagepipe_assigned_partitions",
			Help: "Partitions of the events topic this instance owns."}),
	}
	if reg != nil {
		reg.MustRegister(m.delay)
	}
	f.NewGaugeFunc(prometheus.GaugeOpts{Name: "usagepipe_dedup_table_bytes",
		Help: "Bytes of duplicate-filter tables kept outside the Go heap (anonymous mappings; not counted by go_memstats_* or GOMEMLIMIT), all partitions of this process."},
		func() float64 { return float64(dedup.MappedBytes()) })
	f.NewCounterFunc(prometheus.CounterOpts{Name: "usagepipe_dedup_disk_lookups_total",
		Help: "Duplicate checks that read the on-disk store (the window reached hours moved there), all partitions of this process."},
		func() float64 { return float64(dedup.DiskLookups()) })
	flushes := f.NewCounterVec(prometheus.CounterOpts{Name: "usagepipe_flushes_total",
		Help: "Flush attempts by result: ok, or error (each failed attempt; the flush is retried)."}, []string{"result"})
	m.flushOK, m.flushErr = flushes.WithLabelValues("ok"), flushes.WithLabelValues("error")
	accepted := f.NewCounterVec(prometheus.CounterOpts{Name: "usagepipe_events_accepted_total",
		Help: "Valid, non-duplicate events by type (what the rollups count)."}, []string{"type"})
	for _, t := range event.Types {
		m.accepted[t] = accepted.WithLabelValues(t.String())
	}
	rejected := f.NewCounterVec(prometheus.CounterOpts{Name: "usagepipe_events_rejected_total",
		Help: "Records rejected by reason; each goes to the dead-letter topic."}, []string{"reason"})
	dlq := f.NewCounterVec(prometheus.CounterOpts{Name: "usagepipe_dlq_records_total",
		Help: "Records acknowledged by the dead-letter topic, by reason."}, []string{"reason"})
	for _, r := range event.Reasons {
		m.rejected[r] = rejected.WithLabelValues(r.String())
		m.dlq[r] = dlq.WithLabelValues(r.String())
	}
	m.dlqErr = f.NewCounter(prometheus.CounterOpts{Name: "usagepipe_dlq_errors_total",
		Help: "Dead letters the dead-letter topic refused or did not acknowledge (each is produced again; the flush waits for them)."})
	return m
}

// Array sizes indexed by event.Type and event.Reason.
const (
	numTypes   = int(event.SeatsPurchased) + 1
	numReasons = int(event.ReasonTimestampOutOfRange) + 1
)
