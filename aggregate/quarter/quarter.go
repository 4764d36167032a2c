// Package quarter does fiscal-quarter arithmetic in UTC (contract section 3).
//
// Months are counted as a month index, year*12 + (month-1), which makes
// quarter boundaries plain integer arithmetic. Everything here is a pure
// function; it is safe for concurrent use and exports no metrics.
package quarter

import (
	"fmt"
	"time"
)

// Fiscal is a fiscal calendar: the first month (1–12) of the fiscal year.
type Fiscal struct {
	StartMonth int
}

// Validate reports a start month outside 1–12.
func (f Fiscal) Validate() error {
	if f.StartMonth < 1 || f.StartMonth > 12 {
		return fmt.Errorf("fiscal year start month must be 1–12, got %d", f.StartMonth)
	}
	return nil
}

// MonthIndex returns year*12 + (month-1) of the UTC month containing ms.
func MonthIndex(ms int64) int32 {
	y, m, _ := civil(floorDiv(ms, 86_400_000))
	return int32(y*12 + (m - 1))
}

// MonthStart returns the first day of month index mi as a UTC time.
func MonthStart(mi int32) time.Time {
	return time.Date(int(floorDiv(int64(mi), 12)), time.Month(mod(int64(mi), 12)+1), 1, 0, 0, 0, 0, time.UTC)
}

// QuarterIndex returns the month index of the first month of the quarter
// that contains month index mi.
func (f Fiscal) QuarterIndex(mi int32) int32 {
	return mi - int32(mod(int64(mi)-int64(f.StartMonth-1), 3))
}

// Start returns quarter_start for the quarter containing ms.
func (f Fiscal) Start(ms int64) time.Time { return MonthStart(f.QuarterIndex(MonthIndex(ms))) }

// Label returns the quarter label of the quarter starting at month index qmi:
// "2026-Q3" for a calendar fiscal year, "FY2027-Q1" otherwise, the fiscal
// year named by the calendar year in which it ends.
func (f Fiscal) Label(qmi int32) string {
	fyStart := qmi - int32(mod(int64(qmi)-int64(f.StartMonth-1), 12))
	q := (qmi-fyStart)/3 + 1
	endYear := floorDiv(int64(fyStart+11), 12)
	if f.StartMonth == 1 {
		return fmt.Sprintf("%d-Q%d", endYear, q)
	}
	return fmt.Sprintf("FY%d-Q%d", endYear, q)
}

func floorDiv(a, b int64) int64 {
	q := a / b
	if (a%b != 0) && ((a < 0) != (b < 0)) {
		q--
	}
	return q
}

func mod(a, b int64) int64 {
	m := a % b
	if m < 0 {
		m += b
	}
	return m
}

// civil converts days since 1970-01-01 to a proleptic Gregorian date
// (Howard Hinnant's days_from_civil inverse); it does not allocate.
func civil(days int64) (year, month, day int) {
	z := days + 719468
	era := floorDiv(z, 146097)
	doe := z - era*146097
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	y := yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	d := doy - (153*mp+2)/5 + 1
	m := mp + 3
	if mp >= 10 {
		m = mp - 9
	}
	if m <= 2 {
		y++
	}
	return int(y), int(m), int(d)
}
