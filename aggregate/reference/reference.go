package reference

import (
	"cmp"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/usagepipe/usagepipe/schema"
)

// Record is one Kafka record as the pipeline consumed it.
type Record struct {
	Topic       string
	Partition   int32
	Offset      int64
	TimestampMs int64 // the Kafka record timestamp
	Key, Value  []byte
}

// Options are the pipeline settings that change the result. Zero fields take
// the contract's defaults.
type Options struct {
	FiscalStartMonth int           // 1–12; default 1
	MaxClockSkew     time.Duration // default 1h
	DedupWindow      time.Duration // default 24h
}

func (o Options) withDefaults() Options {
	if o.FiscalStartMonth == 0 {
		o.FiscalStartMonth = 1
	}
	if o.FiscalStartMonth < 1 || o.FiscalStartMonth > 12 {
		panic(fmt.Sprintf("reference: FiscalStartMonth must be 1–12, got %d", o.FiscalStartMonth))
	}
	if o.MaxClockSkew == 0 {
		o.MaxClockSkew = time.Hour
	}
	if o.DedupWindow == 0 {
		o.DedupWindow = 24 * time.Hour
	}
	return o
}

// Rejected is a record that goes to the dead-letter topic.
type Rejected struct {
	Partition int32
	Offset    int64
	Reason    string // one of Reasons()
}

// Result is what the pipeline must have written once it has caught up.
//
// Every input record is counted exactly once: Accepted (valid and not a
// duplicate), Duplicates (valid, but a duplicate) or Rejected.
type Result struct {
	Rollups    []schema.Rollup     // sorted by (AccountID, QuarterStart)
	Features   []schema.FeatureRow // sorted by (AccountID, QuarterStart, Feature)
	Rejected   []Rejected          // sorted by (Partition, Offset)
	Accepted   int
	Duplicates int
}

// Compute returns the rollups, feature rows, rejects and counts the contract
// prescribes for records, which may come in any order. Each partition (of
// each topic) is processed in offset order. Compute does not modify records.
func Compute(records []Record, opt Options) Result {
	opt = opt.withDefaults()
	var res Result

	// Split by partition, each in offset order.
	type partition struct {
		topic string
		id    int32
	}
	byPartition := make(map[partition][]*Record)
	for i := range records {
		r := &records[i]
		p := partition{r.Topic, r.Partition}
		byPartition[p] = append(byPartition[p], r)
	}
	parts := make([]partition, 0, len(byPartition))
	for p := range byPartition {
		parts = append(parts, p)
	}
	slices.SortFunc(parts, func(a, b partition) int {
		return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.id, b.id))
	})

	// Partitions are independent (dedup is per partition): process them
	// concurrently, at most GOMAXPROCS at a time.
	results := make([]partitionResult, len(parts))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, p := range parts {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = processPartition(byPartition[p], opt)
		})
	}
	wg.Wait()

	for _, r := range results {
		res.Accepted += len(r.events)
		res.Duplicates += r.duplicates
		res.Rejected = append(res.Rejected, r.rejected...)
	}
	events := make([]event, 0, res.Accepted)
	for i := range results {
		events = append(events, results[i].events...)
		results[i].events = nil
	}
	slices.SortStableFunc(res.Rejected, func(a, b Rejected) int {
		return cmp.Or(cmp.Compare(a.Partition, b.Partition), cmp.Compare(a.Offset, b.Offset))
	})

	res.Rollups, res.Features = rollups(events, opt.FiscalStartMonth)
	return res
}

// partitionResult is what one partition contributes.
type partitionResult struct {
	events     []event // accepted, not duplicates
	rejected   []Rejected
	duplicates int
}

// processPartition validates and deduplicates one partition's records.
func processPartition(recs []*Record, opt Options) partitionResult {
	slices.SortStableFunc(recs, func(a, b *Record) int { return cmp.Compare(a.Offset, b.Offset) })
	skewMs := opt.MaxClockSkew.Milliseconds()
	windowMs := opt.DedupWindow.Milliseconds()

	var res partitionResult
	res.events = make([]event, 0, len(recs))
	in := newInterner()
	var members object // scratch for validate
	// seenTs[event_id] holds the Kafka timestamps of every valid record
	// with that event_id so far, duplicates included: contract section 2
	// compares with each of them, in either direction.
	seenTs := make(map[string][]int64, len(recs))
	for _, r := range recs {
		d, reason := validate(r.Value, r.TimestampMs, skewMs, &members)
		if reason != "" {
			res.rejected = append(res.rejected, Rejected{Partition: r.Partition, Offset: r.Offset, Reason: reason})
			continue
		}
		id := string(d.eventID)
		dup := false
		for _, ts := range seenTs[id] {
			if ts >= r.TimestampMs-windowMs && ts <= r.TimestampMs+windowMs {
				dup = true
				break
			}
		}
		seenTs[id] = append(seenTs[id], r.TimestampMs)
		if dup {
			res.duplicates++
			continue
		}
		res.events = append(res.events, event{
			eventID: id,
			typ:     d.typ,
			account: in.intern(d.account),
			user:    in.intern(d.user),
			feature: in.intern(d.feature),
			ms:      d.ms,
			seats:   d.seats,
		})
	}
	return res
}

// event is an accepted, non-duplicate event.
type event struct {
	eventID string
	typ     string
	account string
	user    string // "" for seats_purchased
	feature string // feature_used only
	ms      int64  // occurred_at, UTC epoch milliseconds
	seats   int64  // seats_purchased only
}

// interner keeps one copy of each repeated string (accounts, users,
// features), which keeps millions of events in little memory.
type interner map[string]string

func newInterner() interner { return make(interner) }

func (in interner) intern(b []byte) string {
	if s, ok := in[string(b)]; ok {
		return s
	}
	s := string(b)
	in[s] = s
	return s
}

// later orders events from earliest to latest: by occurred_at, then by
// event_id (contract: ties broken by the greater event_id). Events equal in
// both — the same event accepted twice, outside the dedup window or in two
// partitions — are ordered by their remaining fields so the result does not
// depend on input order.
func later(a, b event) int {
	if a.ms != b.ms {
		return cmp.Compare(a.ms, b.ms)
	}
	// Rare from here on; cmp.Or evaluates every comparison.
	return cmp.Or(
		cmp.Compare(a.eventID, b.eventID),
		cmp.Compare(a.typ, b.typ),
		cmp.Compare(a.seats, b.seats),
		cmp.Compare(a.user, b.user),
		cmp.Compare(a.feature, b.feature),
	)
}

// byAccountThenLater orders events by account, then by later.
func byAccountThenLater(a, b event) int {
	if a.account != b.account {
		return cmp.Compare(a.account, b.account)
	}
	return later(a, b)
}

// rollups computes contract section 4 from the accepted, non-duplicate
// events. It reorders events.
func rollups(events []event, fiscalStart int) ([]schema.Rollup, []schema.FeatureRow) {
	if len(events) == 0 {
		return nil, nil
	}
	var latestMs int64
	for _, e := range events {
		latestMs = max(latestMs, e.ms)
	}
	last := quarterOf(latestMs, fiscalStart)

	// Group by account, each account's events from earliest to latest.
	slices.SortFunc(events, byAccountThenLater)
	var rows []schema.Rollup
	var features []schema.FeatureRow
	for len(events) > 0 {
		n := 1
		for n < len(events) && events[n].account == events[0].account {
			n++
		}
		account, evs := events[0].account, events[:n]
		events = events[n:]
		for q := quarterOf(evs[0].ms, fiscalStart); !q.start.After(last.start); q = quarterOf(q.end.UnixMilli(), fiscalStart) {
			row, feats := accountQuarter(account, q, evs)
			rows = append(rows, row)
			features = append(features, feats...)
		}
	}
	slices.SortFunc(rows, func(a, b schema.Rollup) int {
		return cmp.Or(cmp.Compare(a.AccountID, b.AccountID), a.QuarterStart.Compare(b.QuarterStart))
	})
	slices.SortFunc(features, func(a, b schema.FeatureRow) int {
		return cmp.Or(cmp.Compare(a.AccountID, b.AccountID), a.QuarterStart.Compare(b.QuarterStart), cmp.Compare(a.Feature, b.Feature))
	})
	return rows, features
}

// accountQuarter computes one rollup row and the feature rows of account in
// quarter q. evs are all of the account's events, sorted by later.
func accountQuarter(account string, q quarter, evs []event) (schema.Rollup, []schema.FeatureRow) {
	startMs, endMs := q.start.UnixMilli(), q.end.UnixMilli()

	var seatsPurchased int64
	assigned := make(map[string]bool)                // user -> latest seat event is seat_assigned
	active := make(map[string]bool)                  // users with a login/feature_used in q
	featureUsers := make(map[string]map[string]bool) // feature -> users
	featureEvents := make(map[string]uint64)         // feature -> events
	var logins, featureCount uint64
	lastActivityMs := int64(-1)

	for _, e := range evs {
		if e.ms >= endMs {
			break // sorted: everything after is at or after quarter_end
		}
		// Seat state "before quarter_end": the last one seen wins.
		switch e.typ {
		case typeSeatsPurchased:
			seatsPurchased = e.seats
		case typeSeatAssigned:
			assigned[e.user] = true
		case typeSeatUnassigned:
			assigned[e.user] = false
		}
		if e.ms < startMs || (e.typ != typeLogin && e.typ != typeFeatureUsed) {
			continue
		}
		// Activity in q.
		active[e.user] = true
		lastActivityMs = e.ms
		if e.typ == typeLogin {
			logins++
			continue
		}
		featureCount++
		if featureUsers[e.feature] == nil {
			featureUsers[e.feature] = make(map[string]bool)
		}
		featureUsers[e.feature][e.user] = true
		featureEvents[e.feature]++
	}

	var seatsAssigned, activeAssigned uint64
	for _, isAssigned := range assigned {
		if isAssigned {
			seatsAssigned++
		}
	}
	for user := range active {
		if assigned[user] {
			activeAssigned++
		}
	}
	lastActivity := time.Unix(0, 0).UTC()
	if lastActivityMs >= 0 {
		lastActivity = time.Unix(lastActivityMs/1000, 0).UTC()
	}

	row := schema.Rollup{
		AccountID:           account,
		QuarterStart:        q.start,
		QuarterEnd:          q.end,
		Quarter:             q.label,
		SeatsPurchased:      uint64(seatsPurchased),
		SeatsAssigned:       seatsAssigned,
		SeatUtilization:     ratio(seatsAssigned, uint64(seatsPurchased)),
		ActiveUsers:         uint64(len(active)),
		ActiveAssignedUsers: activeAssigned,
		ActivationRate:      ratio(activeAssigned, seatsAssigned),
		Logins:              logins,
		FeatureEvents:       featureCount,
		FeaturesUsed:        uint64(len(featureUsers)),
		LastActivityAt:      lastActivity,
	}
	var feats []schema.FeatureRow
	for feature, users := range featureUsers {
		feats = append(feats, schema.FeatureRow{
			AccountID:    account,
			QuarterStart: q.start,
			Feature:      feature,
			ActiveUsers:  uint64(len(users)),
			Events:       featureEvents[feature],
		})
	}
	return row, feats
}

func ratio(n, d uint64) float64 {
	if d == 0 {
		return 0
	}
	return float64(n) / float64(d)
}

// quarter is a fiscal quarter [start, end) in UTC.
type quarter struct {
	start, end time.Time
	label      string
}

// quarterOf returns the fiscal quarter containing the instant ms, for a
// fiscal year starting in month fiscalStart (1–12).
func quarterOf(ms int64, fiscalStart int) quarter {
	t := time.UnixMilli(ms).UTC()
	monthsIntoYear := (int(t.Month()) - fiscalStart + 12) % 12 // 0..11
	q := monthsIntoYear / 3                                    // 0..3
	// time.Date normalizes months below 1 into the previous year.
	start := time.Date(t.Year(), t.Month()-time.Month(monthsIntoYear%3), 1, 0, 0, 0, 0, time.UTC)
	end := start.AddDate(0, 3, 0)
	fyStart := start.AddDate(0, -3*q, 0)
	fyEndYear := fyStart.AddDate(0, 11, 0).Year()

	label := fmt.Sprintf("FY%d-Q%d", fyEndYear, q+1)
	if fiscalStart == 1 {
		label = fmt.Sprintf("%d-Q%d", start.Year(), q+1)
	}
	return quarter{start: start, end: end, label: label}
}
