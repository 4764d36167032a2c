package dedup

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// TestOpenDiskFailureLeavesNoDirectory: OpenDisk empties and creates its
// directory before Pebble opens the store; when Pebble refuses (here: a
// memtable past its 4 GiB limit, refused before anything is allocated),
// the directory goes too, as Close would remove it. The consumer makes a
// fresh temporary directory per run, so a leftover would pile up in
// --dedup-dir with every failed start.
func TestOpenDiskFailureLeavesNoDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "store")
	d, err := OpenDisk(DiskConfig{Dir: dir, MemtableBytes: 8 << 30})
	if err == nil {
		_ = d.Close()
		t.Fatal("OpenDisk with an 8 GiB memtable: no error")
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("after %v: %s still there (stat: %v)", err, dir, serr)
	}

	// The same directory opens and closes cleanly afterwards.
	d, err = OpenDisk(DiskConfig{Dir: dir})
	if err != nil {
		t.Fatalf("OpenDisk: %v", err)
	}
	if err := d.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, serr := os.Stat(dir); !errors.Is(serr, fs.ErrNotExist) {
		t.Fatalf("after Close: %s still there (stat: %v)", dir, serr)
	}
}

// TestSpillFarAheadFirst: what goes to disk, and what is read from it, when
// records are stamped ahead of the clock (docs/design.md, "Records stamped
// ahead of the clock"; window 1h, at most 500 entries in memory, 100
// records an hour, the clock following the stream).
//   - "far burst": 1900 records stamped ten years ahead, then on-time
//     records. The far hour is spilled first (the hours written to least
//     recently went first before, and its last touch is its own time): no
//     on-time record needs the disk.
//   - "a producer 3h ahead": every record 3h ahead of the clock. The hours
//     it writes are after the watermark but are the live ones: they stay.
//   - "empty epochs between": an old hour and the far hour spilled; records
//     whose window reaches neither do not read the disk (the spilled
//     hours' span lies around them).
func TestSpillFarAheadFirst(t *testing.T) {
	const h = int64(time.Hour / time.Millisecond)
	const ts0 = int64(1_795_000_000_000) // 2026-11-18
	far := ts0 + 10*365*24*h
	disk, err := OpenDisk(DiskConfig{Dir: t.TempDir() + "/dedup"})
	if err != nil {
		t.Fatal(err)
	}
	defer disk.Close()
	type rec struct {
		id        string
		ts, clock int64
		counted   bool // its disk lookups are counted
	}
	stream := func(prefix string, from, to int64, ahead int64, counted bool) (out []rec) {
		for ts := from; ts < to; ts += h / 100 {
			out = append(out, rec{fmt.Sprint(prefix, ts), ts, ts - ahead, counted})
		}
		return out
	}
	burst := func(n int, clock int64) (out []rec) {
		for i := range n {
			out = append(out, rec{fmt.Sprint("far", i), far + int64(i), clock, false})
		}
		return out
	}
	for _, tc := range []struct {
		name    string
		recs    []rec
		maxRead int // disk lookups by counted records, at most
	}{
		{"far burst", append(burst(1900, ts0), stream("e", ts0, ts0+200*h, 0, true)...), 0},
		{"a producer 3h ahead", stream("e", ts0, ts0+200*h, 3*h, true), 0},
		{"empty epochs between", append(append(append(
			stream("a", ts0, ts0+h/100*600, 0, false)[:600:600], // hour 0 over the limit: spilled
			burst(1900, ts0+h)...),
			stream("b", ts0+h, ts0+2*h, 0, false)...),
			stream("c", ts0+2*h, ts0+3*h, 0, true)...), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := New(time.Hour)
			s.UseDisk(disk, 500)
			defer s.Free()
			read := int64(0)
			for off, r := range tc.recs {
				if r.id[0] == 'a' {
					r.ts = ts0 + int64(off) // 600 records inside hour 0
				}
				s.SetClock(r.clock)
				before := DiskLookups()
				if s.Check([]byte(r.id), r.ts, int64(off)) {
					t.Fatalf("record %d: a new id is a duplicate", off)
				}
				if err := s.Err(); err != nil {
					t.Fatal(err)
				}
				if r.counted {
					read += DiskLookups() - before
				}
			}
			if s.DiskEntries() == 0 {
				t.Fatal("nothing was spilled: the case tests nothing")
			}
			if read > int64(tc.maxRead) {
				t.Errorf("%d disk lookups by on-time records, want at most %d", read, tc.maxRead)
			}
		})
	}
}
