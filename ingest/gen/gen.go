package gen

import (
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// Config says what to generate. Zero fields take the defaults noted.
type Config struct {
	Seed int64
	// Events is the number of records of the random stream: valid events,
	// bad records and re-sent duplicates together. EdgeCases adds a fixed
	// number of records on top (see Generator.Total). Default 100,000.
	Events int
	// Accounts, Users and Features size the population: defaults 10,000
	// accounts, 300,000 users (at least one per account) and 40 features.
	Accounts, Users, Features int
	// Population shapes the accounts: PopulationUniform ("", the default,
	// which the benchmarks measure: user u belongs to account u mod
	// Accounts, and seat events are random) or PopulationRealistic (a
	// customer base with sizes from a handful to thousands of seats,
	// under-assigned, low-activation, growing and shrinking accounts; see
	// population). The bad records, duplicates and edge cases are the same
	// in both.
	Population string
	// Start is where the occurred_at range begins (default
	// 2026-01-01T00:00:00Z); events spread over Quarters quarters (default
	// 2), i.e. [Start, Start + 3·Quarters months), roughly in stream order.
	Start    time.Time
	Quarters int
	// BadRatio and DupRatio are the shares of the random stream that are bad
	// records and re-sent duplicates (each 0–1, together at most 1). Bad
	// records rotate through the reject reasons, one fault each; because a
	// too_large record is over 1 MiB, only the first bad record and every
	// 500th after it is too_large.
	BadRatio, DupRatio float64
	// EdgeCases adds the hard cases (see edge.go): unicode and quote-laden
	// account IDs, quarter-edge timestamps with +09:00/-05:00 offsets and
	// epoch milliseconds, seat ties at the same millisecond, late events for
	// a past quarter, duplicates inside and outside the dedup window and a
	// duplicate of a duplicate, over-assignment, accounts with seats and no
	// activity, an event at exactly 2000-01-01, duplicate JSON keys, and a
	// valid value of exactly 1 MiB.
	EdgeCases bool
	// RecordTime is the Kafka timestamp of the first record; each record is
	// 1 ms after the previous one, and the edge cases move the clock forward
	// by 24.5 h once (for the duplicates outside the window). Default: the
	// current hour minus 48 h, so the whole stream stays in the past for
	// brokers that refuse future timestamps. A RecordTime before the end of
	// the occurred_at range is moved to that end, so that no valid event is
	// rejected for clock skew.
	RecordTime time.Time
}

// Defaults.
const (
	DefaultEvents   = 100_000
	DefaultAccounts = 10_000
	DefaultUsers    = 300_000
	DefaultFeatures = 40
	DefaultQuarters = 2
)

// DefaultStart is the default start of the occurred_at range.
func DefaultStart() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }

// RegisterFlags registers cfg's fields on fs, prefixed "gen-"; the current
// values of cfg are the flags' defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.Int64Var(&c.Seed, "gen-seed", c.Seed, "random seed; the same seed gives the same records")
	fs.IntVar(&c.Events, "gen-events", c.Events, "records in the random stream (0: 100000)")
	fs.IntVar(&c.Accounts, "gen-accounts", c.Accounts, "accounts (0: 10000)")
	fs.IntVar(&c.Users, "gen-users", c.Users, "users (0: 300000)")
	fs.IntVar(&c.Features, "gen-features", c.Features, "distinct features (0: 40)")
	fs.StringVar(&c.Population, "gen-population", c.Population, "population: uniform (\"\") or realistic")
	fs.TextVar(&c.Start, "gen-start", c.Start, "start of the occurred_at range, RFC 3339 (zero: 2026-01-01T00:00:00Z)")
	fs.IntVar(&c.Quarters, "gen-quarters", c.Quarters, "quarters the occurred_at range spans (0: 2)")
	fs.Float64Var(&c.BadRatio, "gen-bad-ratio", c.BadRatio, "share of bad records (0–1)")
	fs.Float64Var(&c.DupRatio, "gen-dup-ratio", c.DupRatio, "share of re-sent duplicates (0–1)")
	fs.BoolVar(&c.EdgeCases, "gen-edge-cases", c.EdgeCases, "add the hard edge cases")
	fs.TextVar(&c.RecordTime, "gen-record-time", c.RecordTime, "Kafka timestamp of the first record, RFC 3339 (zero: this hour minus 48h)")
}

// Validate reports a setting New cannot use, naming it.
func (c Config) Validate() error {
	var errs []error
	for _, f := range []struct {
		name string
		v    int
	}{{"gen-events", c.Events}, {"gen-accounts", c.Accounts}, {"gen-users", c.Users}, {"gen-features", c.Features}, {"gen-quarters", c.Quarters}} {
		if f.v < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative, got %d", f.name, f.v))
		}
	}
	if c.BadRatio < 0 || c.BadRatio > 1 {
		errs = append(errs, fmt.Errorf("gen-bad-ratio must be 0–1, got %v", c.BadRatio))
	}
	if c.DupRatio < 0 || c.DupRatio > 1 {
		errs = append(errs, fmt.Errorf("gen-dup-ratio must be 0–1, got %v", c.DupRatio))
	}
	if c.BadRatio+c.DupRatio > 1 {
		errs = append(errs, fmt.Errorf("gen-bad-ratio + gen-dup-ratio must be at most 1, got %v", c.BadRatio+c.DupRatio))
	}
	if c.Population != "" && c.Population != PopulationUniform && c.Population != PopulationRealistic {
		errs = append(errs, fmt.Errorf("gen-population must be %s or %s, got %q", PopulationUniform, PopulationRealistic, c.Population))
	}
	if !c.Start.IsZero() && (c.Start.Year() < 2000 || c.Start.Year() > 2100) {
		errs = append(errs, fmt.Errorf("gen-start must be in 2000–2100, got %s", c.Start.Format(time.RFC3339)))
	}
	return errors.Join(errs...)
}

func (c Config) withDefaults(now time.Time) Config {
	if c.Events == 0 {
		c.Events = DefaultEvents
	}
	if c.Accounts == 0 {
		c.Accounts = DefaultAccounts
	}
	if c.Users == 0 {
		c.Users = DefaultUsers
	}
	c.Users = max(c.Users, c.Accounts)
	if c.Features == 0 {
		c.Features = DefaultFeatures
	}
	if c.Start.IsZero() {
		c.Start = DefaultStart()
	}
	c.Start = c.Start.UTC()
	if c.Quarters == 0 {
		c.Quarters = DefaultQuarters
	}
	if c.RecordTime.IsZero() {
		c.RecordTime = now.Truncate(time.Hour).Add(-48 * time.Hour)
	}
	if end := c.Start.AddDate(0, 3*c.Quarters, 0); c.RecordTime.Before(end) {
		c.RecordTime = end
	}
	return c
}

// Record is one generated Kafka record.
type Record struct {
	Key, Value  []byte // fresh for every record: the caller may keep them
	TimestampMs int64  // the Kafka record timestamp to produce it with
	// WantReason is the reject reason of a bad record (one fault each), ""
	// for a valid one. Duplicates are valid.
	WantReason string
}

// Generator yields the records of one Config. It is not safe for concurrent
// use.
type Generator struct {
	cfg     Config
	rng     *rand.Rand
	startMs int64 // occurred_at range [startMs, endMs)
	endMs   int64
	clockMs int64 // the next record's timestamp
	tokyo   *time.Location
	newYork *time.Location // a fixed -05:00, not the real zone

	accounts []string
	features []string
	pop      *population // nil for the uniform population

	emitted int // records of the random stream so far
	seq     uint32
	badAcc  float64
	dupAcc  float64
	bad     int // bad records so far
	rot     int // rotation over the reasons other than too_large
	variant map[string]int
	recent  []sent // ring of recent valid records, for duplicates
	next    int    // next ring slot

	phases  []edgePhase
	phase   int
	pending []Record
	total   int
}

type sent struct{ key, value []byte }

const recentSize = 256

// New returns a generator for cfg. It panics if cfg.Validate fails.
func New(cfg Config) *Generator {
	if err := cfg.Validate(); err != nil {
		panic("gen: " + err.Error())
	}
	g := newGenerator(cfg.withDefaults(time.Now()))
	g.total = g.cfg.Events
	if g.cfg.EdgeCases {
		g.phases = edgePhases(g.cfg.Events)
		// Count the edge records on a scratch generator: phases use no
		// randomness, only the clock and the population.
		scratch := newGenerator(g.cfg)
		for _, p := range g.phases {
			p.build(scratch)
		}
		g.total += len(scratch.pending)
	}
	if g.cfg.Population == PopulationRealistic {
		periods := make([]int64, g.cfg.Quarters+1)
		for q := range periods {
			periods[q] = g.cfg.Start.AddDate(0, 3*q, 0).UnixMilli()
		}
		g.pop = newPopulation(g.cfg, periods)
	}
	return g
}

func newGenerator(cfg Config) *Generator {
	g := &Generator{
		cfg:     cfg,
		rng:     rand.New(rand.NewPCG(uint64(cfg.Seed), 0x75736167_65706970)), // "usagepip"
		startMs: cfg.Start.UnixMilli(),
		endMs:   cfg.Start.AddDate(0, 3*cfg.Quarters, 0).UnixMilli(),
		clockMs: cfg.RecordTime.UnixMilli(),
		tokyo:   time.FixedZone("+09:00", 9*3600),
		newYork: time.FixedZone("-05:00", -5*3600),
		variant: make(map[string]int),
	}
	g.accounts = make([]string, cfg.Accounts)
	for i := range g.accounts {
		g.accounts[i] = fmt.Sprintf("acct-%06d", i)
	}
	g.features = make([]string, cfg.Features)
	for i := range g.features {
		g.features[i] = featureNames[i%len(featureNames)]
		if i >= len(featureNames) {
			g.features[i] += ".v" + strconv.Itoa(i/len(featureNames)+1)
		}
	}
	return g
}

// Config returns the configuration in use, defaults applied.
func (g *Generator) Config() Config { return g.cfg }

// Total returns how many records Next yields in all: Events, plus the edge
// cases when enabled.
func (g *Generator) Total() int { return g.total }

// Next fills r with the next record and reports whether there was one.
// Key and Value are freshly allocated; r's previous contents are not reused.
func (g *Generator) Next(r *Record) bool {
	for len(g.pending) == 0 {
		switch {
		case g.phase < len(g.phases) && g.emitted >= g.phases[g.phase].at:
			g.phases[g.phase].build(g)
			g.phase++
		case g.emitted < g.cfg.Events:
			g.random()
			g.emitted++
		default:
			return false
		}
	}
	*r = g.pending[0]
	g.pending[0] = Record{}
	g.pending = g.pending[1:]
	if len(g.pending) == 0 {
		g.pending = g.pending[:0:0]
	}
	return true
}

// push queues a record stamped with the clock, which advances by 1 ms.
func (g *Generator) push(key string, value []byte, want string) {
	g.pending = append(g.pending, Record{Key: []byte(key), Value: value, TimestampMs: g.clockMs, WantReason: want})
	g.clockMs++
}

// random queues one record of the random stream.
func (g *Generator) random() {
	g.badAcc += g.cfg.BadRatio
	g.dupAcc += g.cfg.DupRatio
	switch {
	case g.badAcc >= 1:
		g.badAcc--
		g.badRecord()
	case g.dupAcc >= 1 && len(g.recent) > 0:
		g.dupAcc--
		s := g.recent[g.rng.IntN(len(g.recent))]
		g.push(string(s.key), append([]byte(nil), s.value...), "")
	default:
		var account string
		var d doc
		if g.pop != nil {
			account, d = g.realisticEvent()
		} else {
			account, d = g.validEvent(g.randomType())
		}
		v := d.bytes()
		g.remember(account, v)
		g.push(account, v, "")
	}
}

// remember keeps a valid record for re-sending as a duplicate.
func (g *Generator) remember(key string, value []byte) {
	s := sent{key: []byte(key), value: value}
	if len(g.recent) < recentSize {
		g.recent = append(g.recent, s)
		return
	}
	g.recent[g.next] = s
	g.next = (g.next + 1) % recentSize
}

// forget empties the duplicate ring: after a clock jump a re-sent record
// might fall outside the dedup window, and random duplicates are meant to be
// inside it.
func (g *Generator) forget() { g.recent, g.next = nil, 0 }

func (g *Generator) randomType() string {
	switch x := g.rng.IntN(100); {
	case x < 45:
		return "login"
	case x < 88:
		return "feature_used"
	case x < 94:
		return "seat_assigned"
	case x < 97:
		return "seat_unassigned"
	default:
		return "seats_purchased"
	}
}

// usersOf returns how many users account a has.
func (g *Generator) usersOf(a int) int {
	n := g.cfg.Users / g.cfg.Accounts
	if a < g.cfg.Users%g.cfg.Accounts {
		n++
	}
	return n
}

func userID(u int) string { return fmt.Sprintf("user-%07d", u) }

// eventID returns a fresh UUID-like (version 4 layout) event_id, unique
// within the generator: its low 32 bits are a sequence number.
func (g *Generator) eventID() string {
	hi, lo := g.rng.Uint64(), g.rng.Uint64()
	lo = lo&^0xffffffff | uint64(g.seq)
	g.seq++
	hi = hi&^0xf000 | 0x4000
	lo = lo&^(0xc<<60) | 0x8<<60
	return fmt.Sprintf("%08x-%04x-%04x-%04x-%012x", hi>>32, (hi>>16)&0xffff, hi&0xffff, lo>>48, lo&0xffffffffffff)
}

// occurredMs returns an occurred_at for the current stream position: the
// range is walked in stream order with a few hours of jitter, and 1% of
// events are up to two weeks late.
func (g *Generator) occurredMs() int64 {
	span := g.endMs - g.startMs
	ms := g.startMs + int64(float64(span)*float64(g.emitted)/float64(max(g.cfg.Events, 1)))
	ms += g.rng.Int64N(6*3600_000) - 3*3600_000
	if g.rng.IntN(100) == 0 {
		ms -= g.rng.Int64N(14 * 24 * 3600_000)
	}
	return min(max(ms, g.startMs), g.endMs-1)
}

// formatOccurred renders ms as a JSON value in one of the accepted forms:
// mostly RFC 3339 in UTC with milliseconds, some with offsets, other
// fraction lengths, or integer epoch milliseconds. Sub-millisecond digits,
// when present, do not change the millisecond.
func (g *Generator) formatOccurred(ms int64) string {
	t := time.UnixMilli(ms).UTC()
	switch x := g.rng.IntN(100); {
	case x < 70:
		return quote(t.Format("2006-01-02T15:04:05.000Z07:00"))
	case x < 76:
		return quote(t.Truncate(time.Second).Format("2006-01-02T15:04:05Z07:00"))
	case x < 80:
		t = t.Add(time.Duration(g.rng.Int64N(int64(time.Millisecond))))
		return quote(t.Format("2006-01-02T15:04:05.000000000Z07:00"))
	case x < 83:
		t = t.Add(time.Duration(g.rng.Int64N(int64(time.Millisecond))))
		return quote(t.Format("2006-01-02T15:04:05.0000Z07:00"))
	case x < 89:
		return quote(t.In(g.tokyo).Format("2006-01-02T15:04:05.000Z07:00"))
	case x < 94:
		return quote(t.In(g.newYork).Format("2006-01-02T15:04:05.000Z07:00"))
	default:
		return strconv.FormatInt(ms, 10)
	}
}

// validEvent returns a random valid event of type typ and its account.
// With the realistic population it is a random user of a random account
// (bad records start from one; valid events come from realisticEvent).
func (g *Generator) validEvent(typ string) (string, doc) {
	if g.pop != nil {
		a, user := g.pop.anyUser(g.rng)
		return g.accounts[a], g.eventDoc(typ, a, user, g.occurredMs, func() int { return max(1, g.pop.plans[a].seats[0]) })
	}
	u := g.rng.Float64()
	a := int(u * u * float64(g.cfg.Accounts)) // a few busy accounts, a long tail
	user := a + g.rng.IntN(g.usersOf(a))*g.cfg.Accounts
	return g.accounts[a], g.eventDoc(typ, a, user, g.occurredMs, func() int { return max(1, g.usersOf(a)+g.rng.IntN(9)-4) })
}

// eventDoc returns a valid event of type typ by user (a global user index,
// unused by seats_purchased) of account a. occurred and seats are called
// when their fields are written (seats only for seats_purchased), so the
// random draws keep their order.
func (g *Generator) eventDoc(typ string, a, user int, occurred func() int64, seats func() int) doc {
	d := doc{{"event_id", quote(g.eventID())}, {"type", quote(typ)}, {"account_id", quote(g.accounts[a])}}
	if typ != "seats_purchased" {
		d = append(d, field{"user_id", quote(userID(user))})
	}
	if typ == "feature_used" {
		d = append(d, field{"feature", quote(g.features[g.rng.IntN(len(g.features))])})
	}
	if g.rng.IntN(10) < 8 {
		d = append(d, field{"product", quote(products[g.rng.IntN(len(products))])})
	}
	d = append(d, field{"occurred_at", g.formatOccurred(occurred())})
	if typ == "seats_purchased" {
		d = append(d, field{"seats", strconv.Itoa(seats())})
	}
	if g.rng.IntN(10) < 3 {
		d = append(d, field{"schema_version", "1"})
	}
	d = append(d,
		field{"source", quote(sources[g.rng.IntN(len(sources))])},
		field{"sdk", quote(sdks[g.rng.IntN(len(sdks))])},
		field{"session_id", quote(fmt.Sprintf("%016x", g.rng.Uint64()))},
	)
	if g.rng.IntN(10) == 0 { // a field this version does not know
		d = append(d, field{"ctx", fmt.Sprintf(`{"ip":"10.%d.%d.%d","locale":"en-US","tags":["beta",null,1.5e3]}`,
			g.rng.IntN(256), g.rng.IntN(256), g.rng.IntN(256))})
	}
	return d
}

var featureNames = []string{
	"dashboards.view", "dashboards.create", "reports.export", "reports.schedule", "alerts.create",
	"alerts.mute", "search.query", "search.saved", "api.tokens", "sso.configure",
	"billing.invoice", "billing.plan_change", "users.invite", "users.remove", "roles.edit",
	"audit.view", "integrations.slack", "integrations.jira", "integrations.github", "data.import",
	"data.export", "notebooks.run", "notebooks.share", "charts.annotate", "sql.editor",
	"workflows.run", "workflows.edit", "forms.submit", "comments.add", "mobile.push",
	"ai.summarize", "ai.ask", "files.upload", "files.preview", "calendar.sync",
	"tasks.assign", "goals.track", "surveys.send", "webhooks.create", "sandbox.open",
}

var (
	products = []string{"analytics", "workspace", "billing", "platform"}
	sources  = []string{"web", "ios", "android", "api", "cli"}
	sdks     = []string{"usagepipe-js/3.2.1", "usagepipe-swift/1.9.0", "usagepipe-kotlin/2.0.4", "usagepipe-go/0.14.2"}
)

// field is one JSON object member; raw is its value as JSON text.
type field struct{ key, raw string }

// doc is a JSON object under construction, members in order.
type doc []field

// set replaces the value of key (its first occurrence) or appends it.
func (d doc) set(key, raw string) doc {
	for i := range d {
		if d[i].key == key {
			out := append(doc(nil), d...)
			out[i].raw = raw
			return out
		}
	}
	return append(append(doc(nil), d...), field{key, raw})
}

// without removes key.
func (d doc) without(key string) doc {
	var out doc
	for _, f := range d {
		if f.key != key {
			out = append(out, f)
		}
	}
	return out
}

func (d doc) bytes() []byte {
	n := 2
	for _, f := range d {
		n += len(f.key) + len(f.raw) + 4
	}
	b := make([]byte, 0, n)
	b = append(b, '{')
	for i, f := range d {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, '"')
		b = append(b, f.key...)
		b = append(b, '"', ':')
		b = append(b, f.raw...)
	}
	return append(b, '}')
}

// quote returns s as a JSON string. Bytes from 0x80 up are copied as they
// are, so valid UTF-8 stays valid and invalid UTF-8 stays invalid.
func quote(s string) string {
	b := make([]byte, 0, len(s)+2)
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20:
			b = fmt.Appendf(b, `\u%04x`, c)
		default:
			b = append(b, c)
		}
	}
	return string(append(b, '"'))
}
