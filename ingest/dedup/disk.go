package dedup

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"unsafe"

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
	db         *pebble.DB
	dir        string
	tableBytes int64 // TableBytes
	nextID     atomic.Uint64

	mu     sync.Mutex // serialises Close with the calls that may follow it (Free, metrics)
	closed atomic.Bool
}

// DiskConfig configures the on-disk tier.
type DiskConfig struct {
	Dir string // emptied at open
	// Memory, if set, is the duplicate filters' whole memory cap (the
	// tables of every Set and this store together, --dedup-memory-mib):
	// the store takes its shares of it (storeShares) and TableBytes says
	// what is left for the tables. CacheBytes and MemtableBytes are then
	// ignored.
	Memory int64
	// Without Memory: CacheBytes is Pebble's block cache, which also
	// accounts for the memtables (Pebble reserves each memtable's size in
	// it); MemtableBytes is one memtable (two are kept).
	CacheBytes    int64
	MemtableBytes uint64
}

// The store's shares of a memory cap M (DiskConfig.Memory). Where the
// store's memory goes (BenchmarkDedupDisk's -dedupdisk.trace at 20M and 100M
// IDs and 256 MiB: peak RSS 191.9 MiB at 100M, benchmarks/README.md):
//
//   - Pebble's block cache, M/8: data, index and bloom filter blocks (all
//     of them go through the cache: Pebble pins none outside it), and the
//     memtables, whose size Pebble reserves in the cache while they live.
//     The memtables take M/64 each and at most two exist (one being
//     written, one being flushed: MemTableStopWritesThreshold 2), so
//     blocks get at least 3/32 of M. The bloom filters of 100M IDs (10
//     bits each, 120 MiB) do not fit at 256 MiB: filter blocks come and go
//     through the cache like data blocks, which bounds the memory and
//     costs a read from the OS page cache on a miss.
//   - Pebble outside the cache, 3M/8: a flush's or compaction's output
//     buffers (an sstable writer keeps the hashes of its table's bloom
//     filter, its index and a block), the iterators of a compaction's
//     inputs, the table readers of the file cache (at most maxOpenFiles)
//     and each table's metadata: 10–50 MiB live at 256 MiB. In a
//     CGO_ENABLED=0 build (the shipped one) the cache lives on the Go
//     heap, and every block a miss reads (a bloom filter block is read
//     whole) is garbage once evicted: the rest of this share is the
//     garbage collector's headroom. With M/16 (and 13/16 of M for the
//     table) GOMEMLIMIT held the heap near its live size and the GC ran
//     more often: 100k instead of 107k lookups/s at 20M IDs. Tables are
//     kept at Pebble's default target sizes (2 MiB in L0, doubling per
//     level): larger ones would not shrink the filters or the index (both
//     grow with the keys, not the files), only make each filter block,
//     read whole on a miss, larger.
//   - The tables, the rest: TableBytes, M/2, shared among the Sets with
//     LimitFor. A larger table does not make lookups cheaper once the
//     window is mostly on disk (every new ID's lookup reads the store
//     anyway), so the store's headroom comes first.
const (
	cacheShareDiv    = 8
	memtableShareDiv = 64
	overheadShareDiv = 8 // times 3
	maxOpenFiles     = 512
)

// storeShares returns the store's block cache (memtables included) and
// one memtable's size for a memory cap, and the bytes the store is charged
// with in all (cache and what Pebble allocates outside it).
func storeShares(memory int64) (cache int64, memtable uint64, charged int64) {
	cache = max(memory/cacheShareDiv, 8<<20)
	memtable = uint64(max(memory/memtableShareDiv, 2<<20))
	return cache, memtable, cache + 3*memory/overheadShareDiv
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
	cacheBytes, memtable := max(cfg.CacheBytes, 8<<20), max(cfg.MemtableBytes, 4<<20)
	var tableBytes int64
	if cfg.Memory > 0 {
		var charged int64
		cacheBytes, memtable, charged = storeShares(cfg.Memory)
		tableBytes = max(cfg.Memory-charged, 0)
	}
	cache := pebble.NewCache(cacheBytes)
	defer cache.Unref()
	opts := &pebble.Options{
		Cache: cache,
		// Pebble reserves each memtable's size in the cache while it lives,
		// so the memtables come out of the cache's bytes, not on top.
		MemTableSize:                memtable,
		MemTableStopWritesThreshold: 2,
		MaxOpenFiles:                maxOpenFiles,
		DisableWAL:                  true, // a cache: nothing must survive a crash
		Logger:                      quietLogger{},
	}
	for i := range opts.Levels {
		opts.Levels[i].FilterPolicy = bloom.FilterPolicy(10)
	}
	db, err := pebble.Open(filepath.Clean(cfg.Dir), opts)
	if err != nil {
		_ = os.RemoveAll(cfg.Dir) // what Close would remove: nothing is left behind
		return nil, fmt.Errorf("dedup disk: open %s: %w", cfg.Dir, err)
	}
	return &Disk{db: db, dir: cfg.Dir, tableBytes: tableBytes}, nil
}

// TableBytes is what DiskConfig.Memory leaves for the Sets' tables once
// the store's shares are taken (0 without Memory). Divide it among the
// Sets and turn each part into an entry limit with LimitFor.
func (d *Disk) TableBytes() int64 { return d.tableBytes }

// LimitFor is the entry limit (UseDisk, SetLimit) of a Set whose table
// must stay within bytes, at least 1024 entries. A table of S slots (a
// power of two, 24 bytes each) spills at S/2 entries, so it never grows
// beyond S; it reaches S by doubling, and while it doubles the old table
// (S/2) and the new one are both mapped, so the peak is 1.5·S·24 bytes:
// S is the largest power of two with 36·S <= bytes. Spilling does not
// shrink the table (it will fill again), so after that one doubling the
// table costs S·24 bytes, steadily.
func LimitFor(bytes int64) int {
	per := int64(unsafe.Sizeof(entry{})) * 3 / 2
	slots := int64(minSlots)
	for slots*2*per <= bytes {
		slots *= 2
	}
	return int(max(slots/2, 1024))
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

// Metrics is Pebble's metrics report (levels, caches, memory outside the Go
// heap), for diagnostics.
func (d *Disk) Metrics() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() {
		return ""
	}
	return d.db.Metrics().String()
}

// DiskMemory is what the store holds in memory, from Pebble's metrics.
type DiskMemory struct {
	Cache, CacheBlocks  int64 // block cache in use
	CacheHits, CacheMis int64
	Memtables           uint64 // in use, with the ones being flushed
	Tables              int64  // sstables, all levels
	TableBytes          int64
	OpenTables          int64 // in the file cache
	FileCache           int64 // bytes of the open tables' readers
}

// Memory returns what the store holds in memory (diagnostics).
func (d *Disk) Memory() DiskMemory {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed.Load() {
		return DiskMemory{}
	}
	m := d.db.Metrics()
	r := DiskMemory{
		Cache: m.BlockCache.Size, CacheBlocks: m.BlockCache.Count,
		CacheHits: m.BlockCache.Hits, CacheMis: m.BlockCache.Misses,
		Memtables:  m.MemTable.Size + m.MemTable.ZombieSize,
		OpenTables: m.FileCache.TableCount, FileCache: m.FileCache.Size,
	}
	for _, l := range m.Levels {
		r.Tables += l.TablesCount
		r.TableBytes += l.TablesSize
	}
	return r
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
	// Counted, not e <= toEpoch: toEpoch may be the last epoch below
	// math.MaxInt64, where e + epochMs wraps.
	for n, e := (toEpoch-fromEpoch)/epochMs, fromEpoch; n >= 0; n, e = n-1, e+epochMs {
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
