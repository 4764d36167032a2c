package schema

import "time"

// Rollup is one row of usage.account_quarter_rollups (contract section 4).
type Rollup struct {
	AccountID           string
	QuarterStart        time.Time // Date, UTC midnight
	QuarterEnd          time.Time // Date, exclusive
	Quarter             string
	SeatsPurchased      uint64
	SeatsAssigned       uint64
	SeatUtilization     float64
	ActiveUsers         uint64
	ActiveAssignedUsers uint64
	ActivationRate      float64
	Logins              uint64
	FeatureEvents       uint64
	FeaturesUsed        uint64
	LastActivityAt      time.Time // UTC, second precision; Unix 0 when none
}

// FeatureRow is one row of usage.account_quarter_features.
type FeatureRow struct {
	AccountID    string
	QuarterStart time.Time
	Feature      string
	ActiveUsers  uint64
	Events       uint64
}
