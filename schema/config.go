package schema

import (
	"errors"
	"fmt"
	"regexp"
)

// DefaultDatabase is the ClickHouse database of contract section 4.
const DefaultDatabase = "usage"

// Config chooses where the objects live and how quarters are cut.
type Config struct {
	// Database holds every usagepipe object; "" means DefaultDatabase.
	Database string
	// FiscalStartMonth is the first month (1–12) of the fiscal year; 0
	// means 1. It is rendered into the views, which migrate recreates when
	// it changes.
	FiscalStartMonth int
	// Cluster names a cluster of the servers' remote_servers: every object
	// is created ON CLUSTER with a Replicated engine, sharded or on every
	// node (docs/design.md, "ClickHouse clusters"). "" means one server.
	Cluster string
}

// ErrConfig is wrapped by every error Validate returns.
var ErrConfig = errors.New("invalid schema config")

var (
	identRE   = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,63}$`)
	clusterRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]{0,127}$`)
)

// ValidateDatabase reports a database name usagepipe does not accept: it
// must be a plain identifier (letters, digits, underscore; not starting
// with a digit; at most 64 bytes), so that it needs no quoting in SQL.
func ValidateDatabase(name string) error {
	if !identRE.MatchString(name) {
		return fmt.Errorf("%w: clickhouse database %q must match %s", ErrConfig, name, identRE)
	}
	return nil
}

// Validate reports a bad setting, naming it.
func (c Config) Validate() error {
	c = c.withDefaults()
	if err := ValidateDatabase(c.Database); err != nil {
		return err
	}
	if c.Cluster != "" && !clusterRE.MatchString(c.Cluster) {
		return fmt.Errorf("%w: clickhouse cluster %q must match %s (a remote_servers name)", ErrConfig, c.Cluster, clusterRE)
	}
	if c.FiscalStartMonth < 1 || c.FiscalStartMonth > 12 {
		return fmt.Errorf("%w: fiscal year start month must be 1–12, got %d", ErrConfig, c.FiscalStartMonth)
	}
	return nil
}

func (c Config) withDefaults() Config {
	if c.Database == "" {
		c.Database = DefaultDatabase
	}
	if c.FiscalStartMonth == 0 {
		c.FiscalStartMonth = 1
	}
	return c
}
