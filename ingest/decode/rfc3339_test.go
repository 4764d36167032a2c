package decode

import (
	"strings"
	"testing"
	"time"
)

func TestParseRFC3339Ms(t *testing.T) {
	// ok: ParseRFC3339Ms accepts s and agrees with time.Parse (given an
	// upper-case 'T' and 'Z') on the millisecond, truncated toward the past.
	ok := func(s string, wantMs int64) {
		t.Helper()
		got, accepted := ParseRFC3339Ms([]byte(s))
		if !accepted {
			t.Fatalf("ParseRFC3339Ms(%q) rejected it", s)
		}
		ref, err := time.Parse(time.RFC3339Nano, strings.ToUpper(s))
		if err != nil {
			t.Fatalf("time.Parse(%q): %v", s, err)
		}
		if got != ref.UnixMilli() || got != wantMs {
			t.Fatalf("ParseRFC3339Ms(%q) = %d, want %d (time.Parse: %d)", s, got, wantMs, ref.UnixMilli())
		}
	}
	utc := func(y int, mo time.Month, d, h, mi, s, ns int) int64 {
		return time.Date(y, mo, d, h, mi, s, ns, time.UTC).UnixMilli()
	}
	ok("2026-07-01T08:59:59.999+09:00", utc(2026, 6, 30, 23, 59, 59, 999e6))
	ok("2026-07-01T09:00:00+09:00", utc(2026, 7, 1, 0, 0, 0, 0))
	ok("2026-03-31T20:00:00-04:00", utc(2026, 4, 1, 0, 0, 0, 0))
	ok("2026-01-01T05:29:59.9999+05:30", utc(2025, 12, 31, 23, 59, 59, 999e6))
	ok("2026-07-01T00:00:00-00:00", utc(2026, 7, 1, 0, 0, 0, 0))
	ok("2026-07-01T00:00:00+00:00", utc(2026, 7, 1, 0, 0, 0, 0))
	ok("2000-01-01T00:00:00Z", 946684800000)
	ok("1999-12-31T23:59:59.999Z", 946684799999)
	ok("1970-01-01T00:00:00Z", 0)
	ok("1969-12-31T23:59:59.9999Z", -1)
	ok("1969-12-31T23:59:59.000000001Z", -1000)
	ok("0000-01-01T00:00:00Z", utc(0, 1, 1, 0, 0, 0, 0))
	ok("0000-03-01T00:00:00+23:59", utc(0, 2, 29, 0, 1, 0, 0)) // year 0 is a leap year
	ok("9999-12-31T23:59:59.999999999Z", utc(9999, 12, 31, 23, 59, 59, 999e6))
	ok("9999-12-31T23:59:59.999999999-23:59", utc(10000, 1, 1, 23, 58, 59, 999e6))
	ok("2024-02-29T12:00:00Z", utc(2024, 2, 29, 12, 0, 0, 0))
	ok("2000-02-29T12:00:00Z", utc(2000, 2, 29, 12, 0, 0, 0))
	ok("2026-12-31T23:59:59Z", utc(2026, 12, 31, 23, 59, 59, 0))
	ok("2026-04-30T00:00:00Z", utc(2026, 4, 30, 0, 0, 0, 0))
	ok("2026-07-01t09:00:00z", utc(2026, 7, 1, 9, 0, 0, 0))
	ok("2026-07-01t09:00:00.5+01:00", utc(2026, 7, 1, 8, 0, 0, 500e6))
	for n, frac := range []string{"1", "12", "123", "1234", "12345", "123456", "123456789"[:7], "12345678", "123456789"} {
		ms := []int{100, 120, 123, 123, 123, 123, 123, 123, 123}[n]
		ok("2026-07-01T09:00:00."+frac+"Z", utc(2026, 7, 1, 9, 0, 0, ms*1e6))
	}
	ok("2026-07-01T09:00:00.999999999Z", utc(2026, 7, 1, 9, 0, 0, 999e6))
	// RFC 3339 sets no limit on fraction digits (time.Parse takes them too).
	ok("2026-07-01T09:00:00.1234567890Z", utc(2026, 7, 1, 9, 0, 0, 123e6))
	ok("2026-07-01T09:00:00.99999999999999+09:00", utc(2026, 7, 1, 0, 0, 0, 999e6))
	ok("2026-07-01T09:00:00.0Z", utc(2026, 7, 1, 9, 0, 0, 0))

	bad := func(s string) {
		t.Helper()
		if ms, accepted := ParseRFC3339Ms([]byte(s)); accepted {
			t.Fatalf("ParseRFC3339Ms(%q) = %d, want rejected", s, ms)
		}
	}
	for _, s := range []string{
		"", "Z", "2026", "2026-07-01", "2026-07-01T09:00:00", "2026-07-01T09:00Z", "2026-07-01T09:00:00.",
		"2026-07-01T09:00:00.Z", "2026-07-01T09:00:00.5",
		"2026-07-01 09:00:00Z", "2026-07-01_09:00:00Z", "2026/07/01T09:00:00Z", "2026-07-01T09.00.00Z",
		"2026-7-01T09:00:00Z", "2026-07-1T09:00:00Z", "26-07-01T09:00:00Z", "+2026-07-01T09:00:00Z", "12026-07-01T09:00:00Z",
		"2026-00-01T09:00:00Z", "2026-13-01T09:00:00Z", "2026-07-00T09:00:00Z", "2026-07-32T09:00:00Z",
		"2026-02-29T09:00:00Z", "1900-02-29T09:00:00Z", "2026-04-31T09:00:00Z", "2026-06-31T09:00:00Z",
		"2026-09-31T09:00:00Z", "2026-11-31T09:00:00Z", "2026-02-30T09:00:00Z",
		"2026-07-01T24:00:00Z", "2026-07-01T23:60:00Z", "2026-07-01T23:59:60Z", "2026-07-01T-1:00:00Z",
		"2026-07-01T09:00:00+24:00", "2026-07-01T09:00:00+09:60", "2026-07-01T09:00:00+0900", "2026-07-01T09:00:00+09",
		"2026-07-01T09:00:00+9:00", "2026-07-01T09:00:00 +09:00", "2026-07-01T09:00:00+09:00 ", " 2026-07-01T09:00:00Z",
		"2026-07-01T09:00:00ZZ", "2026-07-01T09:00:00UTC", "2026-07-01T09:00:00GMT", "2026-07-01T09:00:00,5Z",
		"2026-07-01T09:00:00.5.5Z", "2026-07-01T09:00:00+09:00Z", "2026-07-01T09:00:00z+09:00",
		"2026-07-01T09:00:00.-5Z", "２０２６-07-01T09:00:00Z", "2026-07-01T09:00:00\x00", "2026-07-01X09:00:00Z",
		"1782820800000",
	} {
		bad(s)
	}
}

func TestDaysFromCivil(t *testing.T) {
	// Every day from 0000-01-01 to 9999-12-31 against the time package.
	d := time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
	want := d.Unix() / 86400
	for d.Year() < 10000 {
		y, m, day := d.Date()
		if got := daysFromCivil(int64(y), int64(m), int64(day)); got != want {
			t.Fatalf("daysFromCivil(%v) = %d, want %d", d.Format(time.DateOnly), got, want)
		}
		if day == 1 {
			last := d.AddDate(0, 1, -1).Day()
			if got := daysIn(int64(m), int64(y)); got != int64(last) {
				t.Fatalf("daysIn(%d, %d) = %d, want %d", m, y, got, last)
			}
		}
		d = d.AddDate(0, 0, 1)
		want++
	}
}

// TestParseRFC3339Sub: sub says whether the instant lies after the
// millisecond returned (digits beyond the third that are not all zero).
func TestParseRFC3339Sub(t *testing.T) {
	for s, want := range map[string]bool{
		"2026-07-01T09:00:00Z":               false,
		"2026-07-01T09:00:00.5Z":             false,
		"2026-07-01T09:00:00.123Z":           false,
		"2026-07-01T09:00:00.123000000000Z":  false,
		"2026-07-01T09:00:00.0005Z":          true,
		"2026-07-01T09:00:00.000999999Z":     true,
		"2026-07-01T09:00:00.1230000000001Z": true,
	} {
		if _, sub, ok := parseRFC3339([]byte(s)); !ok || sub != want {
			t.Errorf("parseRFC3339(%q): sub %v ok %v, want sub %v", s, sub, ok, want)
		}
	}
}
