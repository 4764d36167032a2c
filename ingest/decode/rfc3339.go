package decode

// ParseRFC3339Ms parses an RFC 3339 timestamp to UTC epoch milliseconds
// without allocating.
//
// The accepted form is YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM): 'T' or 't'
// between date and time, 'Z' or 'z' for UTC, a fraction of one or more
// digits (RFC 3339 sets no limit) truncated toward the earlier millisecond,
// and an offset of at most ±23:59.
// Month, day-in-month (leap years included), hour 00–23, minute 00–59 and
// second 00–59 are checked; a leap second (:60) is not accepted. For inputs
// with an upper-case 'T' and 'Z' it accepts a subset of what
// time.Parse(time.RFC3339Nano, …) accepts and agrees with it on the instant.
func ParseRFC3339Ms(b []byte) (ms int64, ok bool) {
	ms, _, ok = parseRFC3339(b)
	return ms, ok
}

// parseRFC3339 is ParseRFC3339Ms, also reporting whether the fraction had
// non-zero digits beyond the millisecond (sub: the instant is after ms, which
// matters where ms is exactly a limit).
func parseRFC3339(b []byte) (ms int64, sub, ok bool) {
	// "2006-01-02T15:04:05" is 19 bytes; a zone designator needs at least one more.
	if len(b) < 20 {
		return 0, false, false
	}
	if b[4] != '-' || b[7] != '-' || (b[10] != 'T' && b[10] != 't') || b[13] != ':' || b[16] != ':' {
		return 0, false, false
	}
	y1, ok1 := digits2(b, 0)
	y2, ok2 := digits2(b, 2)
	month, ok3 := digits2(b, 5)
	day, ok4 := digits2(b, 8)
	hour, ok5 := digits2(b, 11)
	minute, ok6 := digits2(b, 14)
	sec, ok7 := digits2(b, 17)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6 && ok7) {
		return 0, false, false
	}
	year := y1*100 + y2
	if month < 1 || month > 12 || day < 1 || day > daysIn(month, year) || hour > 23 || minute > 59 || sec > 59 {
		return 0, false, false
	}

	i := 19
	var frac int64 // milliseconds
	if b[i] == '.' {
		i++
		start := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		n := i - start
		if n < 1 {
			return 0, false, false
		}
		for k := range 3 {
			frac *= 10
			if k < n {
				frac += int64(b[start+k] - '0')
			}
		}
		for k := 3; k < n; k++ {
			sub = sub || b[start+k] != '0'
		}
		if i == len(b) {
			return 0, false, false
		}
	}

	var offset int64 // seconds east of UTC
	switch b[i] {
	case 'Z', 'z':
		i++
	case '+', '-':
		if len(b)-i != 6 || b[i+3] != ':' {
			return 0, false, false
		}
		oh, okh := digits2(b, i+1)
		om, okm := digits2(b, i+4)
		if !okh || !okm || oh > 23 || om > 59 {
			return 0, false, false
		}
		offset = (oh*60 + om) * 60
		if b[i] == '-' {
			offset = -offset
		}
		i += 6
	default:
		return 0, false, false
	}
	if i != len(b) {
		return 0, false, false
	}

	secs := daysFromCivil(year, month, day)*86400 + hour*3600 + minute*60 + sec - offset
	// frac ≥ 0, so this is the floor of the instant in milliseconds even
	// before 1970.
	return secs*1000 + frac, sub, true
}

// digits2 parses the two ASCII digits at b[i:i+2].
func digits2(b []byte, i int) (int64, bool) {
	hi, lo := b[i]-'0', b[i+1]-'0'
	return int64(hi)*10 + int64(lo), hi < 10 && lo < 10
}

func isLeap(y int64) bool { return y%4 == 0 && (y%100 != 0 || y%400 == 0) }

func daysIn(month, year int64) int64 {
	switch month {
	case 2:
		if isLeap(year) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil returns the days since 1970-01-01 of a proleptic Gregorian
// date (Howard Hinnant's days_from_civil).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	if y < 0 && y%400 != 0 {
		era--
	}
	yoe := y - era*400 // [0, 399]
	mp := (m + 9) % 12 // March = 0
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}
