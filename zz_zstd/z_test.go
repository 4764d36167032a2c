package zz

import (
	"fmt"
	"testing"

	"github.com/klauspost/compress/zstd"
)

func data() []byte {
	var b []byte
	for i := 0; len(b) < 1<<20; i++ {
		b = fmt.Appendf(b, `{"event_id":"0190f3a2-7c1e-7b9a-9a1e-%012x","type":"feature_used","account_id":"acct-%05d","user_id":"user-%06d@example.com","occurred_at":"2026-11-%02dT10:%02d:%02d.%03dZ","feature":"feature-%02d","ctx":{"ua":"Mozilla/5.0","ip":"10.0.%d.%d"},"x":%d}`, i*7919, i%10000, i*31%300000, i%28+1, i%60, i%60, i%1000, i%40, i%256, i%200, i)
	}
	return b
}

func BenchmarkZstd(b *testing.B) {
	enc, _ := zstd.NewWriter(nil, zstd.WithWindowSize(64<<10), zstd.WithEncoderConcurrency(1), zstd.WithZeroFrames(true))
	src := data()
	c := enc.EncodeAll(src, nil)
	b.Logf("ratio %.1f", float64(len(src))/float64(len(c)))
	for _, tc := range []struct {
		name string
		opts []zstd.DOption
	}{
		{"franz-default", []zstd.DOption{zstd.WithDecoderLowmem(true), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256 << 20)}},
		{"nolowmem", []zstd.DOption{zstd.WithDecoderLowmem(false), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256 << 20)}},
		{"nochecksum", []zstd.DOption{zstd.WithDecoderLowmem(true), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256 << 20), zstd.IgnoreChecksum(true)}},
		{"both", []zstd.DOption{zstd.WithDecoderLowmem(false), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256 << 20), zstd.IgnoreChecksum(true)}},
		{"both-dst", []zstd.DOption{zstd.WithDecoderLowmem(false), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(256 << 20), zstd.IgnoreChecksum(true)}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			d, _ := zstd.NewReader(nil, tc.opts...)
			dst := make([]byte, 0, 2<<20)
			b.SetBytes(int64(len(src)))
			for b.Loop() {
				var out []byte
				if tc.name == "both-dst" {
					out, _ = d.DecodeAll(c, dst[:0])
				} else {
					out, _ = d.DecodeAll(c, nil)
				}
				if len(out) != len(src) {
					b.Fatal("len")
				}
			}
		})
	}
}
