package schema

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"
)

// The duplicate filter's archive of event IDs (table dedup_ids,
// docs/design.md "Durable event IDs"): what a flush writes, how a row's
// records are encoded, and what readers ask for.

// DedupIDs is one partition's entries in the duplicate filter's archive
// (table dedup_ids, docs/design.md "Durable event IDs") from one flush: one
// per valid record the flush writes facts for, in offset order, written
// after those facts and before the progress row (an archived record is a
// counted one). Columns, not rows, and the event IDs back to back in one
// buffer: no allocation per record.
type DedupIDs struct {
	Topic     string
	TopicID   string
	Partition int32
	Offsets   []uint64
	TsMs      []int64
	Ends      []uint32 // record i's event ID is IDs[Ends[i-1]:Ends[i]] (from 0 for i = 0)
	IDs       []byte
}

// Add appends a record (id is copied).
func (d *DedupIDs) Add(off, tsMs int64, id []byte) {
	d.Offsets = append(d.Offsets, uint64(off))
	d.TsMs = append(d.TsMs, tsMs)
	d.IDs = append(d.IDs, id...)
	d.Ends = append(d.Ends, uint32(len(d.IDs)))
}

// Reset empties d, keeping its capacity.
func (d *DedupIDs) Reset() {
	d.Offsets, d.TsMs, d.Ends, d.IDs = d.Offsets[:0], d.TsMs[:0], d.Ends[:0], d.IDs[:0]
}

// Len is the number of records in d.
func (d *DedupIDs) Len() int { return len(d.Offsets) }

// EventID is record i's event ID, as a view of d.IDs (valid while d.IDs is
// not appended to).
func (d *DedupIDs) EventID(i int) string {
	lo := uint32(0)
	if i > 0 {
		lo = d.Ends[i-1]
	}
	if d.Ends[i] == lo {
		return ""
	}
	return unsafe.String(&d.IDs[lo], int(d.Ends[i]-lo))
}

// HourMs is the length of the hours dedup_ids is keyed by.
const HourMs = int64(3600 * 1000)

// HourOf is the start of ts's hour (floor division), as dedup_ids.hour.
func HourOf(ts int64) int64 {
	h := ts / HourMs * HourMs
	if h > ts {
		h -= HourMs
	}
	return h
}

// OffsetRange is the offsets [Lo, Hi) of one partition.
type OffsetRange struct{ Lo, Hi int64 }

// ArchiveHour is what dedup_ids holds of one hour of record time within an
// offset range: bounds of the offsets of its rows (ArchiveHours).
type ArchiveHour struct {
	Hour           int64
	MinOff, MaxOff int64
}

// ArchiveQuery selects the archived records of one partition of one topic
// incarnation (TopicIDs: its progress IDs, the zero ID too where it was
// read before the brokers had IDs) with offsets in Offsets and an hour of
// record time in [HourLo, HourHi).
type ArchiveQuery struct {
	Topic          string
	TopicIDs       []string
	Partition      int32
	HourLo, HourHi int64
	Offsets        OffsetRange
}

// A row of dedup_ids holds the records of one partition in one hour of
// record time, offsets ascending, encoded in its records column as, per
// record: uvarint(offset − previous offset) (the first relative to
// off_lo), uvarint(timestamp − hour), uvarint(length of the event ID), the
// event ID. One string per row: the client appends it as it is, where
// arrays cost it a boxed value per element, and ClickHouse compresses it
// as one column.

// ArchiveEncoder encodes one row's records (AppendRecord in offset order).
type ArchiveEncoder struct {
	buf  []byte
	hour int64
	last uint64
	n    int
}

// Reset starts a row of hour whose first offset is offLo, reusing the
// buffer.
func (e *ArchiveEncoder) Reset(hour int64, offLo uint64) {
	e.buf, e.hour, e.last, e.n = e.buf[:0], hour, offLo, 0
}

// Add appends a record: off at least the previous one's, tsMs within the
// row's hour.
func (e *ArchiveEncoder) Add(off uint64, tsMs int64, id string) {
	e.buf = binary.AppendUvarint(e.buf, off-e.last)
	e.buf = binary.AppendUvarint(e.buf, uint64(tsMs-e.hour))
	e.buf = binary.AppendUvarint(e.buf, uint64(len(id)))
	e.buf = append(e.buf, id...)
	e.last = off
	e.n++
}

// Len is the number of records added since Reset.
func (e *ArchiveEncoder) Len() int { return e.n }

// Bytes is the encoded row, valid until the next Reset or Add.
func (e *ArchiveEncoder) Bytes() []byte { return e.buf }

var errArchiveRow = errors.New("malformed dedup_ids row")

// DecodeArchive calls fn with each of the n records of a row of hour whose
// first offset is offLo. id is a view of b, valid during the call. A row
// that does not decode to exactly n records of IDs 1–1 MiB long within
// the hour is an error (nothing of it is trusted).
func DecodeArchive(b []byte, hour int64, offLo uint64, n int, fn func(off, tsMs int64, id string)) error {
	type rec struct {
		off, ts int64
		id      string
	}
	// Decode all first: a corrupt row reports an error before fn saw any.
	if n < 0 || n > len(b)/4 { // a record takes 4 bytes at least
		return fmt.Errorf("%w: %d records in %d bytes", errArchiveRow, n, len(b))
	}
	recs := make([]rec, 0, n)
	last := offLo
	for len(b) > 0 {
		d, k := binary.Uvarint(b)
		if k <= 0 {
			return fmt.Errorf("%w: offset of record %d", errArchiveRow, len(recs))
		}
		b = b[k:]
		t, k := binary.Uvarint(b)
		if k <= 0 || t >= uint64(HourMs) {
			return fmt.Errorf("%w: timestamp of record %d", errArchiveRow, len(recs))
		}
		b = b[k:]
		l, k := binary.Uvarint(b)
		if k <= 0 || l == 0 || l > 1<<20 || l > uint64(len(b)-k) {
			return fmt.Errorf("%w: event ID of record %d", errArchiveRow, len(recs))
		}
		b = b[k:]
		if d > 1<<63-1 || last+d > 1<<63-1 { // also no wrap-around
			return fmt.Errorf("%w: offset of record %d", errArchiveRow, len(recs))
		}
		last += d
		recs = append(recs, rec{int64(last), hour + int64(t), unsafe.String(&b[0], int(l))})
		b = b[l:]
	}
	if len(recs) != n {
		return fmt.Errorf("%w: %d records, the row says %d", errArchiveRow, len(recs), n)
	}
	for _, r := range recs {
		fn(r.off, r.ts, r.id)
	}
	return nil
}
