package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"
	"github.com/cockroachdb/pebble/v2/bloom"
)

// Disk is the filters' on-disk tier, shared by every Set of a process: the
// hours a Set cannot keep in its memory budget are moved here (spilled)
// instead of being forgotten. It is an embedded Pebble store in a directory
// of its own that is emptied when opened: like the tables, it is a cache
// rebuilt from Kafka, never a source of truth, so a lost or stale disk only
// costs re-reads.
//
// Keys are set ID (8 bytes) | epoch (8) | ID hash (16), where an epoch is a
// span of record time as long as the window (whole hours), so a window
// meets at most three epochs: a lookup is at most three point reads, most of
// them answered by the bloom filters without touching data blocks. The
// value is the entries' timestamps (8 bytes each), appended by Pebble's
// concatenating merge operator. Disk is safe for concurrent use by Sets
// owned by different goroutines.
type Disk struct {
	db     *pebble.DB
	dir    string
	nextID atomic.Uint64

	mu     sync.Mutex // serialises Close with the calls that may follow it (Free, metrics)
	closed atomic.Bool
}

// DiskConfig configures the on-disk tier.
type DiskConfig struct {
	Dir string // emptied at open
	// CacheBytes is Pebble's block cache (bloom filters and index blocks
	// first); MemtableBytes its write buffer (two are kept).
	CacheBytes    int64
	MemtableBytes uint64
}

// OpenDisk empties cfg.Dir and opens a store there.
func OpenDisk(cfg DiskConfig) (*Disk, error) {
	if cfg.Dir == "" {
		return nil, errors.New("dedup disk: no directory")
	}
	if err := os.RemoveAll(cfg.Dir); err != nil {
		return nil, fmt.Errorf("dedup disk: empty %s: %w", cfg.Dir, err)
	}
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("dedup disk: %w", err)
	}
	cache := pebble.NewCache(max(cfg.CacheBytes, 8<<20))
	defer cache.Unref()
	opts := &pebble.Options{
		Cache:                       cache,
		MemTableSize:                max(cfg.MemtableBytes, 4<<20),
		MemTableStopWritesThreshold: 2,
		DisableWAL:                  true, // a cache: nothing must survive a crash
		Logger:                      quietLogger{},
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(filepath.Clean(cfg.Dir), opts)
	if err != nil {
		return nil, fmt.Errorf("dedup disk: open %s: %w", cfg.Dir, err)
	}
	return &Disk{db: db, dir: cfg.Dir}, nil
}

// Close closes the store and removes its directory.
func (d *Disk) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Swap(true) {
		return nil
	}
	err := d.db.Close()
	if rerr := os.RemoveAll(d.dir); err == nil {
		err = rerr
	}
	return err
}

// Bytes is the store's size on disk (all levels and the memtables).
func (d *Disk) Bytes() int64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() {
		return 0
	}
	m := d.db.Metrics()
	return int64(m.DiskSpaceUsage()) + int64(m.MemTable.Size)
}

func (d *Disk) newID() uint64 { return d.nextID.Add(1) }

const diskKeyLen = 32

func diskKey(buf *[diskKeyLen]byte, set uint64, epoch int64, k Key) []byte {
	binary.BigEndian.PutUint64(buf[0:], set)
	binary.BigEndian.PutUint64(buf[8:], uint64(epoch))
	binary.BigEndian.PutUint64(buf[16:], k.h1)
	binary.BigEndian.PutUint64(buf[24:], k.h2)
	return buf[:]
}

// lookup reports whether the store holds, for set and k, a timestamp in
// [lo, hi] among the epochs from..to.
func (d *Disk) lookup(set uint64, k Key, fromEpoch, toEpoch int64, epochMs, lo, hi int64) (bool, error) {
	var buf [diskKeyLen]byte
	for e := fromEpoch; e <= toEpoch; e += epochMs {
		v, closer, err := d.db.Get(diskKey(&buf, set, e, k))
		if errors.Is(err, pebble.ErrNotFound) {
			continue
		}
		if err != nil {
			return false, fmt.Errorf("dedup disk: get: %w", err)
		}
		found := false
		for i := 0; i+8 <= len(v); i += 8 {
			if ts := int64(binary.BigEndian.Uint64(v[i:])); ts >= lo && ts <= hi {
				found = true
				break
			}
		}
		closer.Close()
		if found {
			return true, nil
		}
	}
	return false, nil
}

// spillBatch writes entries of one Set.
type spillBatch struct {
	b   *pebble.Batch
	set uint64
}

func (d *Disk) newSpill(set uint64) *spillBatch { return &spillBatch{b: d.db.NewBatch(), set: set} }

func (s *spillBatch) add(epoch int64, k Key, ts int64) error {
	var buf [diskKeyLen]byte
	var v [8]byte
	binary.BigEndian.PutUint64(v[:], uint64(ts))
	return s.b.Merge(diskKey(&buf, s.set, epoch, k), v[:], nil)
}

func (s *spillBatch) commit() error {
	defer s.b.Close()
	if err := s.b.Commit(pebble.NoSync); err != nil {
		return fmt.Errorf("dedup disk: write: %w", err)
	}
	return nil
}

// dropEpochs deletes set's keys of epochs [from, to).
func (d *Disk) dropEpochs(set uint64, from, to int64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() {
		return nil
	}
	var a, b [diskKeyLen]byte
	lo := diskKey(&a, set, from, Key{})
	hi := diskKey(&b, set, to, Key{})
	if err := d.db.DeleteRange(lo, hi, pebble.NoSync); err != nil {
		return fmt.Errorf("dedup disk: delete: %w", err)
	}
	return nil
}

// dropSet deletes every key of set.
func (d *Disk) dropSet(set uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() {
		return nil // the directory goes with the store
	}
	var a, b [diskKeyLen]byte
	lo := diskKey(&a, set, 0, Key{})
	lo = lo[:8]
	hi := diskKey(&b, set+1, 0, Key{})
	hi = hi[:8]
	if err := d.db.DeleteRange(lo, hi, pebble.NoSync); err != nil {
		return fmt.Errorf("dedup disk: delete: %w", err)
	}
	return nil
}

// quietLogger keeps Pebble's informational lines out of usagepipe's log.
type quietLogger struct{}

func (quietLogger) Infof(string, ...any)  {}
func (quietLogger) Errorf(string, ...any) {}
func (quietLogger) Fatalf(format string, args ...any) {
	panic(fmt.Sprintf(format, args...))
}
