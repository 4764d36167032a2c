package ingest

import (
	"errors"
	"fmt"
	"runtime"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
)

// Config is the consumer's configuration. Field comments give the setting
// names users see (flags; env vars are USAGEPIPE_ + upper snake case).
type Config struct {
	Brokers  []string // --kafka-brokers
	Topic    string   // --kafka-topic
	Group    string   // --kafka-group
	DLQTopic string   // --dlq-topic

	MaxClockSkew time.Duration // --max-clock-skew
	DedupWindow  time.Duration // --dedup-window
	// DedupMemory bounds the duplicate filters' tables of all owned
	// partitions (--dedup-memory-mib); hours beyond it move to an
	// on-disk store in a new directory under DedupDir (--dedup-dir,
	// default the system's temporary directory), removed at exit.
	DedupMemory int64
	DedupDir    string

	FlushInterval     time.Duration // --flush-interval: how often facts are written
	MaxPendingFacts   int           // flush early when this many fact keys wait (memory bound: ~100–150 MiB of event logs and facts per 1M)
	MaxPollRecords    int           // records per poll
	ReadyStallTimeout time.Duration // --ready-stall-timeout
	SessionTimeout    time.Duration // Kafka group session timeout
	RebalanceTimeout  time.Duration // Kafka group rebalance timeout
	ShutdownTimeout   time.Duration // how long a final flush may take after SIGTERM
	PingInterval      time.Duration // ClickHouse health check period
	Workers           int           // partitions are decoded and aggregated by this many goroutines
	ProgressInterval  time.Duration // how often a run with a backlog logs its progress (at most 10s: contract section 5)

	UntilCaughtUp bool // --until-caught-up

	// FiscalStartMonth (--fiscal-year-start-month; 0 means 1) is the fiscal
	// calendar of the served rollups this instance recomputes; it must be
	// the one the database was migrated for.
	FiscalStartMonth int
	// SweepInterval is how often the serve loop checks every mark against
	// the served rows (docs/design.md, "Served rollups").
	SweepInterval time.Duration
	// LiveCacheMemory bounds the live path's cache of account facts
	// (--live-cache-mib; docs/design.md, "Live quarter"): accounts beyond
	// it are recomputed after each flush instead. 0 turns the live path
	// off.
	LiveCacheMemory int64

	// ConnOpts are the Kafka connection options (TLS, SASL, logger) of
	// every client the consumer opens: the group client and the direct
	// readers that recover the duplicate filter. New's extra options
	// (metrics hooks) apply to the group client only.
	ConnOpts []kgo.Opt
}

// Defaults returns the contract's defaults.
func Defaults() Config {
	return Config{
		Brokers:           []string{"127.0.0.1:9092"},
		Topic:             "usage-events",
		Group:             "usagepipe",
		DLQTopic:          "usage-events-dlq",
		MaxClockSkew:      time.Hour,
		DedupWindow:       24 * time.Hour,
		DedupMemory:       256 << 20,
		FlushInterval:     time.Second,
		MaxPendingFacts:   1_000_000,
		MaxPollRecords:    20_000,
		ReadyStallTimeout: 20 * time.Second,
		SessionTimeout:    45 * time.Second,
		RebalanceTimeout:  60 * time.Second,
		ShutdownTimeout:   30 * time.Second,
		PingInterval:      5 * time.Second,
		Workers:           min(runtime.GOMAXPROCS(0), 8),
		ProgressInterval:  10 * time.Second,
		SweepInterval:     time.Minute,
		LiveCacheMemory:   256 << 20,
	}
}

// Validate reports the first bad setting, naming it.
func (c *Config) Validate() error {
	switch {
	case len(c.Brokers) == 0 || c.Brokers[0] == "":
		return errors.New("kafka-brokers: at least one broker is required")
	case c.Topic == "":
		return errors.New("kafka-topic: must not be empty")
	case c.Group == "":
		return errors.New("kafka-group: must not be empty")
	case c.DLQTopic == "":
		return errors.New("dlq-topic: must not be empty")
	case c.DLQTopic == c.Topic:
		return fmt.Errorf("dlq-topic: must differ from kafka-topic %q", c.Topic)
	case c.MaxClockSkew <= 0 || c.MaxClockSkew%time.Millisecond != 0:
		// (0 is refused, not taken as the default: 1ms is the strictest.
		// Timestamps are compared in whole milliseconds.)
		return fmt.Errorf("max-clock-skew: must be a positive number of whole milliseconds (1ms is the strictest), got %s", c.MaxClockSkew)
	case c.DedupWindow < 0:
		return fmt.Errorf("dedup-window: must not be negative, got %s", c.DedupWindow)
	case c.DedupMemory < 1<<20:
		return fmt.Errorf("dedup-memory-mib: must be at least 1, got %d", c.DedupMemory>>20)
	case c.FlushInterval < 10*time.Millisecond || c.FlushInterval > time.Hour:
		return fmt.Errorf("flush-interval: must be between 10ms and 1h, got %s", c.FlushInterval)
	case c.ReadyStallTimeout <= 0:
		return fmt.Errorf("ready-stall-timeout: must be positive, got %s", c.ReadyStallTimeout)
	case c.Workers <= 0:
		return fmt.Errorf("workers: must be positive, got %d", c.Workers)
	case c.MaxPendingFacts <= 0 || c.MaxPollRecords <= 0:
		return errors.New("max-pending-facts and max-poll-records must be positive")
	case c.SessionTimeout < time.Second:
		return fmt.Errorf("kafka-session-timeout: must be at least 1s, got %s", c.SessionTimeout)
	case c.RebalanceTimeout < time.Second:
		return fmt.Errorf("kafka-rebalance-timeout: must be at least 1s, got %s", c.RebalanceTimeout)
	case c.ShutdownTimeout <= 0 || c.PingInterval <= 0:
		return errors.New("shutdown timeout and ping interval must be positive")
	case c.LiveCacheMemory < 0:
		return fmt.Errorf("live-cache-mib: must not be negative, got %d", c.LiveCacheMemory>>20)
	case c.SweepInterval <= 0:
		return fmt.Errorf("sweep interval: must be positive, got %s", c.SweepInterval)
	case c.FiscalStartMonth < 0 || c.FiscalStartMonth > 12:
		return fmt.Errorf("fiscal-year-start-month: must be 1–12, got %d", c.FiscalStartMonth)
	case c.ProgressInterval <= 0 || c.ProgressInterval > 10*time.Second:
		return fmt.Errorf("progress interval: must be positive and at most 10s, got %s", c.ProgressInterval)
	}
	return nil
}
