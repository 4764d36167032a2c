package gen

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/usagepipe/usagepipe/aggregate/reference"
)

// Edge-case accounts. Their events use deterministic event_ids and user IDs
// starting "edge-", so a test can check each case by hand. Times are
// relative to Config.Start (S) and to the first calendar-quarter boundary
// after it (B, see EdgeQuarterBoundary).
const (
	// EdgeUnicode and EdgeQuoted are account IDs that need escaping or are
	// not ASCII. EdgeUnicode is also sent once spelled with \u escapes
	// (a surrogate pair included): the same account.
	EdgeUnicode = "edge-ünïcødé-日本語-🚀"
	EdgeQuoted  = `edge-"quoted" \back\slash 'single' ` + "`tick`" + ` ,comma;semi`
	EdgeControl = "edge-tab\there\nnewline"
	// EdgeLongEscaped is 128 bytes once decoded, 5 + 61×"é" + "x", sent as
	// \u00e9 escapes (its raw JSON is much longer than 128 bytes).
	EdgeLongEscaped = "edge-" + "ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé" + "x"

	// EdgeY2K has logins at exactly 2000-01-01T00:00:00Z, the first valid
	// instant, in three spellings: its rows run from 2000-Q1.
	EdgeY2K = "edge-y2k"
	// EdgeBig has a valid login whose value is exactly 1 MiB, and a record
	// one byte longer (too_large).
	EdgeBig = "edge-big"

	// EdgeOverassigned buys 2 seats at S+1d and assigns 3 users
	// (utilization 1.5); edge-o1 and edge-o4 (not assigned) log in at S+2d.
	EdgeOverassigned = "edge-overassigned"
	// EdgeSeatsOnly buys 5 seats and assigns 2 users at S+1d, and has no
	// activity ever: it still has a row for every quarter through the last.
	EdgeSeatsOnly = "edge-seats-only"
	// EdgeSeatTie has events at the same millisecond (S+3d, S+3d+1h) that
	// only the event_id orders; the winner is always sent first. Expected:
	// seats_purchased 7, seats_assigned 1 (edge-t1 yes, edge-t2 no).
	EdgeSeatTie = "edge-seat-tie"
	// EdgeBounds has boundary values that are valid: seats 10,000,000 then
	// 0, a 64-byte product, an empty product, a 128-byte event_id and
	// user_id, schema_version null, and fields a type ignores holding wrong
	// types (user_id on a purchase, seats on a login, feature on a seat
	// event).
	EdgeBounds = "edge-bounds"
	// EdgeQuarterEdge has activity on both sides of B: in the quarter before
	// B logins by edge-q1 (B−1ms as +09:00), edge-q3 (epoch B−1) and edge-q7
	// (B−100ns, lowercase 't' and 'z'), and a feature_used by edge-q6
	// (B−1ns as -05:00); from B on logins by edge-q2 (B as +09:00) and
	// edge-q4 (epoch B), and a feature_used by edge-q5 (B as -05:00).
	EdgeQuarterEdge = "edge-qedge"
	// EdgeDupKey has a login whose JSON repeats keys: the first occurrence
	// is valid, the later ones are not (first wins).
	EdgeDupKey = "edge-dupkey"
	// EdgeDup exercises the dedup window (at S+5d): login X by edge-d1,
	// login Y by edge-d2 and feature_used Z by edge-d3; Z is re-sent at once
	// (a duplicate). Then the record clock jumps 1h and X is re-sent (a
	// duplicate), jumps 23h30m more and X is re-sent again (a duplicate of
	// the first copy, which is inside the window although X is not) and Y
	// is re-sent (outside the window: counted again). So: 3 logins, 1
	// feature event.
	EdgeDup = "edge-dup"
	// EdgeLate has a login in the last quarter (end − 1d) early in the
	// stream and a late login in the first quarter (S+1h) near its end;
	// accounts acct-000000 and acct-000001 also get a late feature_used at
	// S+2h.
	EdgeLate = "edge-late"
)

// edgeTieIDFormat makes EdgeSeatTie's event_ids, ordered by their last byte.
const edgeTieIDFormat = "ed9e71e0-0000-4000-8000-0000000000%02x"

// edgePhase is a group of edge records sent together, after at random
// records.
type edgePhase struct {
	at    int
	build func(g *Generator)
}

func edgePhases(events int) []edgePhase {
	return []edgePhase{
		{events / 5, (*Generator).edgeEarly},
		{events / 2, (*Generator).edgeDuplicates},
		{events * 19 / 20, (*Generator).edgeLateEvents},
	}
}

const (
	dayMs  = 24 * 3600_000
	hourMs = 3600_000
)

// EdgeQuarterBoundary returns B, the quarter boundary the edge cases
// straddle: the first calendar-quarter start after Start if it is inside
// the occurred_at range, else the calendar-quarter start at or before Start.
// It is also a fiscal-quarter boundary when the fiscal year starts in
// January, April, July or October.
func (g *Generator) EdgeQuarterBoundary() time.Time {
	t := g.cfg.Start
	qs := time.Date(t.Year(), t.Month()-(t.Month()-1)%3, 1, 0, 0, 0, 0, time.UTC)
	if b := qs.AddDate(0, 3, 0); b.UnixMilli() < g.endMs {
		return b
	}
	return qs
}

// edgeDoc returns an edge event with a fresh deterministic event_id.
// occurred is raw JSON.
func (g *Generator) edgeDoc(typ, account, user, occurred string) doc {
	g.seq++
	d := doc{
		{"event_id", quote(fmt.Sprintf("ed9e0000-0000-4000-8000-%012x", g.seq))},
		{"type", quote(typ)},
		{"account_id", quote(account)},
	}
	if user != "" {
		d = append(d, field{"user_id", quote(user)})
	}
	return append(d, field{"occurred_at", occurred}, field{"source", `"edge-case"`})
}

func (g *Generator) pushDoc(key string, d doc) { g.push(key, d.bytes(), "") }

// rfc renders ms as an RFC 3339 JSON string in UTC with milliseconds.
func rfc(ms int64) string {
	return quote(time.UnixMilli(ms).UTC().Format("2006-01-02T15:04:05.000Z07:00"))
}

func (g *Generator) edgeEarly() {
	S := g.startMs

	// Account IDs that need care.
	for i, account := range []string{EdgeUnicode, EdgeQuoted, EdgeControl} {
		g.pushDoc(account, g.edgeDoc("login", account, "edge-u1", rfc(S+dayMs+int64(i))))
		g.pushDoc(account, g.edgeDoc("feature_used", account, "edge-u2", rfc(S+dayMs+hourMs)).set("feature", `"reports.export"`))
	}
	g.pushDoc(EdgeUnicode, g.edgeDoc("login", EdgeUnicode, "edge-u3", rfc(S+dayMs+2*hourMs)).
		set("account_id", `"edge-\u00fcn\u00efc\u00f8d\u00e9-\u65e5\u672c\u8a9e-\ud83d\ude80"`))
	escaped := `"edge-` + strings.Repeat(`\u00e9`, 61) + `x"`
	g.pushDoc(EdgeLongEscaped, g.edgeDoc("login", EdgeLongEscaped, "edge-u1", rfc(S+dayMs)).set("account_id", escaped))

	// The first valid instant, three ways.
	g.pushDoc(EdgeY2K, g.edgeDoc("login", EdgeY2K, "edge-u1", `"2000-01-01T00:00:00Z"`))
	g.pushDoc(EdgeY2K, g.edgeDoc("login", EdgeY2K, "edge-u1", "946684800000"))
	g.pushDoc(EdgeY2K, g.edgeDoc("login", EdgeY2K, "edge-u2", `"2000-01-01T09:00:00.000+09:00"`))

	// Exactly 1 MiB (valid) and one byte more.
	g.push(EdgeBig, padTo(g.edgeDoc("login", EdgeBig, "edge-u1", rfc(S+dayMs)), 1<<20), "")
	g.push(EdgeBig, padTo(g.edgeDoc("login", EdgeBig, "edge-u2", rfc(S+dayMs)), 1<<20+1), reference.ReasonTooLarge)

	// Over-assignment.
	g.pushDoc(EdgeOverassigned, g.edgeDoc("seats_purchased", EdgeOverassigned, "", rfc(S+dayMs)).set("seats", "2"))
	for i, u := range []string{"edge-o1", "edge-o2", "edge-o3"} {
		g.pushDoc(EdgeOverassigned, g.edgeDoc("seat_assigned", EdgeOverassigned, u, rfc(S+dayMs+hourMs+int64(i))))
	}
	g.pushDoc(EdgeOverassigned, g.edgeDoc("login", EdgeOverassigned, "edge-o1", rfc(S+2*dayMs)))
	g.pushDoc(EdgeOverassigned, g.edgeDoc("login", EdgeOverassigned, "edge-o4", rfc(S+2*dayMs)))

	// Seats and no activity.
	g.pushDoc(EdgeSeatsOnly, g.edgeDoc("seats_purchased", EdgeSeatsOnly, "", rfc(S+dayMs)).set("seats", "5"))
	g.pushDoc(EdgeSeatsOnly, g.edgeDoc("seat_assigned", EdgeSeatsOnly, "edge-s1", rfc(S+dayMs+hourMs)))
	g.pushDoc(EdgeSeatsOnly, g.edgeDoc("seat_assigned", EdgeSeatsOnly, "edge-s2", rfc(S+dayMs+hourMs)))

	// Ties at the same millisecond; the winner (greater event_id) first.
	tie := func(typ, user, occurred string, id int) doc {
		return g.edgeDoc(typ, EdgeSeatTie, user, occurred).set("event_id", quote(fmt.Sprintf(edgeTieIDFormat, id)))
	}
	T := S + 3*dayMs
	g.pushDoc(EdgeSeatTie, tie("seats_purchased", "", rfc(T), 0x02).set("seats", "7"))
	g.pushDoc(EdgeSeatTie, tie("seats_purchased", "", rfc(T), 0x01).set("seats", "3"))
	g.pushDoc(EdgeSeatTie, tie("seat_assigned", "edge-t1", rfc(T+hourMs), 0x12))
	g.pushDoc(EdgeSeatTie, tie("seat_unassigned", "edge-t1", rfc(T+hourMs), 0x11))
	g.pushDoc(EdgeSeatTie, tie("seat_unassigned", "edge-t2", rfc(T+hourMs), 0x22))
	g.pushDoc(EdgeSeatTie, tie("seat_assigned", "edge-t2", strconv.FormatInt(T+hourMs, 10), 0x21))
	g.pushDoc(EdgeSeatTie, g.edgeDoc("login", EdgeSeatTie, "edge-t1", rfc(T+2*hourMs)))
	g.pushDoc(EdgeSeatTie, g.edgeDoc("login", EdgeSeatTie, "edge-t2", rfc(T+2*hourMs)))

	// Valid boundary values and ignored fields.
	g.pushDoc(EdgeBounds, g.edgeDoc("seats_purchased", EdgeBounds, "", rfc(S+dayMs)).set("seats", "10000000").set("user_id", "42"))
	g.pushDoc(EdgeBounds, g.edgeDoc("seats_purchased", EdgeBounds, "", rfc(S+2*dayMs)).set("seats", "0"))
	g.pushDoc(EdgeBounds, g.edgeDoc("login", EdgeBounds, "edge-b1", rfc(S+dayMs)).set("product", quote(strings.Repeat("p", 64))).set("seats", `"lots"`))
	g.pushDoc(EdgeBounds, g.edgeDoc("login", EdgeBounds, "edge-b2", rfc(S+dayMs)).set("product", `""`).set("schema_version", "null"))
	g.pushDoc(EdgeBounds, g.edgeDoc("login", EdgeBounds, strings.Repeat("u", 128), rfc(S+dayMs)).set("event_id", quote(strings.Repeat("e", 128))))
	g.pushDoc(EdgeBounds, g.edgeDoc("seat_assigned", EdgeBounds, "edge-b1", rfc(S+dayMs)).set("feature", "5"))

	// Both sides of the quarter boundary B.
	B := g.EdgeQuarterBoundary().UnixMilli()
	ns := func(ms int64) time.Time { return time.Unix(0, ms*1e6) }
	lower := []byte(ns(B).Add(-100).UTC().Format("2006-01-02T15:04:05.0000000Z07:00"))
	lower[10], lower[len(lower)-1] = 't', 'z'
	qe := func(typ, user, occurred string) {
		d := g.edgeDoc(typ, EdgeQuarterEdge, user, occurred)
		if typ == "feature_used" {
			d = d.set("feature", `"charts.annotate"`)
		}
		g.pushDoc(EdgeQuarterEdge, d)
	}
	// Sent after-first, so that stream order and quarter order differ.
	qe("login", "edge-q2", quote(ns(B).In(g.tokyo).Format("2006-01-02T15:04:05Z07:00")))
	qe("login", "edge-q1", quote(ns(B-1).In(g.tokyo).Format("2006-01-02T15:04:05.000Z07:00")))
	qe("login", "edge-q4", strconv.FormatInt(B, 10))
	qe("login", "edge-q3", strconv.FormatInt(B-1, 10))
	qe("feature_used", "edge-q5", quote(ns(B).In(g.newYork).Format("2006-01-02T15:04:05.000Z07:00")))
	qe("feature_used", "edge-q6", quote(ns(B).Add(-1).In(g.newYork).Format("2006-01-02T15:04:05.000000000Z07:00")))
	qe("login", "edge-q7", quote(string(lower)))

	// Repeated keys: the first occurrence wins.
	d := g.edgeDoc("login", EdgeDupKey, "edge-k1", rfc(S+4*dayMs))
	d = append(d, field{"type", `"bogus"`}, field{"account_id", "42"}, field{"occurred_at", `"yesterday"`}, field{"user_id", "null"})
	g.pushDoc(EdgeDupKey, d)

	// The last quarter, before a late event for the first (edgeLateEvents).
	g.pushDoc(EdgeLate, g.edgeDoc("login", EdgeLate, "edge-l1", rfc(g.endMs-dayMs)))
}

func (g *Generator) edgeDuplicates() {
	T := g.startMs + 5*dayMs
	x := g.edgeDoc("login", EdgeDup, "edge-d1", rfc(T)).bytes()
	y := g.edgeDoc("login", EdgeDup, "edge-d2", rfc(T+hourMs)).bytes()
	z := g.edgeDoc("feature_used", EdgeDup, "edge-d3", rfc(T+2*hourMs)).set("feature", `"search.query"`).bytes()
	again := func(v []byte) { g.push(EdgeDup, append([]byte(nil), v...), "") }

	g.push(EdgeDup, x, "")
	g.push(EdgeDup, y, "")
	g.push(EdgeDup, z, "")
	again(z) // inside the window: dropped

	g.forget()
	g.clockMs += hourMs
	again(x) // 1h after X: dropped
	g.clockMs += 23*hourMs + hourMs/2
	again(x) // 24.5h after X but 23.5h after its first copy: dropped
	again(y) // 24.5h after Y: counted again
}

func (g *Generator) edgeLateEvents() {
	S := g.startMs
	g.pushDoc(EdgeLate, g.edgeDoc("login", EdgeLate, "edge-l2", rfc(S+hourMs)))
	for _, a := range []int{0, min(1, g.cfg.Accounts-1)} {
		account := g.accounts[a]
		g.pushDoc(account, g.edgeDoc("feature_used", account, userID(a), rfc(S+2*hourMs)).set("feature", `"reports.export"`))
	}
}
