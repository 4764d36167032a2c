package quarter

import (
	"testing"
	"time"
)

func TestMonthIndexMatchesTime(t *testing.T) {
	f := func(ts string) {
		t.Helper()
		tm, err := time.Parse(time.RFC3339Nano, ts)
		if err != nil {
			t.Fatal(err)
		}
		u := tm.UTC()
		want := int32(u.Year()*12 + int(u.Month()) - 1)
		if got := MonthIndex(tm.UnixMilli()); got != want {
			t.Fatalf("MonthIndex(%s) = %d, want %d", ts, got, want)
		}
		if got := MonthStart(want); got.Year() != u.Year() || got.Month() != u.Month() || got.Day() != 1 {
			t.Fatalf("MonthStart(%d) = %v", want, got)
		}
	}
	f("2000-01-01T00:00:00Z")
	f("2026-07-01T09:00:00+09:00")     // 2026-07-01T00:00Z: July
	f("2026-07-01T08:59:59.999+09:00") // still June in UTC
	f("2024-02-29T23:59:59.999Z")
	f("2100-03-01T00:00:00Z")
	f("1969-12-31T23:59:59.999Z")
}

func TestLabelsAndStarts(t *testing.T) {
	f := func(startMonth int, ts, wantStart, wantLabel string) {
		t.Helper()
		fy := Fiscal{StartMonth: startMonth}
		tm, err := time.Parse(time.RFC3339, ts)
		if err != nil {
			t.Fatal(err)
		}
		qmi := fy.QuarterIndex(MonthIndex(tm.UnixMilli()))
		if got := MonthStart(qmi).Format("2006-01-02"); got != wantStart {
			t.Fatalf("fy%d %s: start %s, want %s", startMonth, ts, got, wantStart)
		}
		if got := fy.Label(qmi); got != wantLabel {
			t.Fatalf("fy%d %s: label %s, want %s", startMonth, ts, got, wantLabel)
		}
	}
	f(1, "2026-08-15T00:00:00Z", "2026-07-01", "2026-Q3")
	f(1, "2026-01-01T00:00:00Z", "2026-01-01", "2026-Q1")
	f(1, "2026-12-31T23:59:59Z", "2026-10-01", "2026-Q4")
	f(4, "2026-04-01T00:00:00Z", "2026-04-01", "FY2027-Q1")
	f(4, "2026-03-31T23:59:59Z", "2026-01-01", "FY2026-Q4")
	f(4, "2027-02-10T00:00:00Z", "2027-01-01", "FY2027-Q4")
	f(2, "2026-01-31T00:00:00Z", "2025-11-01", "FY2026-Q4")
	f(12, "2026-12-01T00:00:00Z", "2026-12-01", "FY2027-Q1")
	f(12, "2026-11-30T00:00:00Z", "2026-09-01", "FY2026-Q4")
}
