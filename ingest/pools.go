package ingest

import (
	"sync"

	"github.com/twmb/franz-go/pkg/kgo"
)

// fetchPools lends franz-go the buffers fetched batches are decompressed
// into and the Record structs they are decoded into (kgo.WithPools), so a
// backfill reuses the same memory batch after batch instead of allocating
// (and page-faulting) its whole decompressed stream. processPartition
// recycles every record once it is done with it; a record kept longer (a
// dead letter) is copied first.
type fetchPools struct {
	bytes sync.Pool // *[]byte
	recs  sync.Pool // *[]kgo.Record
}

var (
	_ kgo.PoolDecompressBytes = (*fetchPools)(nil)
	_ kgo.PoolRecords         = (*fetchPools)(nil)
)

// GetDecompressBytes returns a pooled buffer; when its capacity is too
// small the decompressor grows it, and the grown one comes back on Put.
func (p *fetchPools) GetDecompressBytes(_ []byte, _ kgo.CompressionCodecType) []byte {
	if b, ok := p.bytes.Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return nil
}

func (p *fetchPools) PutDecompressBytes(b []byte) { p.bytes.Put(&b) }

func (p *fetchPools) GetRecords(n int) []kgo.Record {
	if r, ok := p.recs.Get().(*[]kgo.Record); ok && cap(*r) >= n {
		return (*r)[:n]
	}
	return make([]kgo.Record, n)
}

func (p *fetchPools) PutRecords(r []kgo.Record) { p.recs.Put(&r) }
