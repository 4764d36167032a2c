package chaos

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/usagepipe/usagepipe/aggregate/reference"
	"github.com/usagepipe/usagepipe/ingest/gen"
)

// producer produces chunks of generated records in the background.
type producer struct {
	sc   *scenario
	cl   *kgo.Client
	base time.Time // record time of chunk 0
	t1   time.Time // record time of chunk 1
	gs   time.Time // occurred_at range start

	mu      sync.Mutex
	records []reference.Record
	chunks  int
	resends int
	sent0   bool // chunk 0 was re-sent already
	ready   chan struct{}
	stop    chan struct{}
	stopped sync.Once
	started bool
	done    chan struct{}
	err     error
}

func newProducer(sc *scenario) (*producer, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(sc.brokers...), kgo.ProducerBatchCompression(kgo.ZstdCompression()),
		kgo.ProducerBatchMaxBytes(16<<20), kgo.MaxBufferedBytes(256<<20))
	if err != nil {
		return nil, err
	}
	base := time.Now().UTC().Truncate(time.Hour).Add(-48 * time.Hour)
	q := time.Date(base.Year(), base.Month()-(base.Month()-1)%3, 1, 0, 0, 0, 0, time.UTC)
	return &producer{sc: sc, cl: cl, base: base, gs: q.AddDate(0, -6, 0), ready: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}, nil
}

// config is chunk i's generator configuration: same population, a seed
// per chunk, 2% bad and 3% duplicate records, the edge cases in chunk 0.
// Record times: chunk 0 from base (its edge cases move the clock 24.5 h);
// chunk i ≥ 1 a few seconds after the previous one, so the whole stream
// spans under 25 h (dedup window + slack) and a re-sent chunk's copies are
// compared with their originals exactly.
func (p *producer) config(i int) gen.Config {
	sz := p.sc.s.sz
	rt := p.base
	if i > 0 {
		rt = p.t1.Add(time.Duration(i-1) * (time.Duration(sz.chunkEvents)*time.Millisecond + time.Second))
	}
	return gen.Config{
		Seed: p.sc.s.seed*1000 + int64(i), Events: sz.chunkEvents,
		Accounts: sz.accounts, Users: sz.users, Features: sz.features,
		Start: p.gs, Quarters: 2, BadRatio: 0.02, DupRatio: 0.03,
		EdgeCases: i == 0, RecordTime: rt,
	}
}

// produceChunk produces chunk i (the config of chunk i; a re-send passes
// an earlier index).
func (p *producer) produceChunk(i int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	recs, _, err := gen.Produce(ctx, p.cl, p.sc.topic, gen.New(p.config(i)), true)
	p.mu.Lock()
	defer p.mu.Unlock()
	p.records = append(p.records, recs...)
	if err != nil {
		return fmt.Errorf("chunk %d: %w", i, err)
	}
	if i == 0 && p.t1.IsZero() {
		var last int64
		for _, r := range recs {
			last = max(last, r.TimestampMs)
		}
		p.t1 = time.UnixMilli(last).Add(time.Second)
		if span := p.t1.Add(time.Duration(p.sc.s.sz.maxChunks) * (time.Duration(p.sc.s.sz.chunkEvents)*time.Millisecond + time.Second)).Sub(p.base); span > 25*time.Hour-5*time.Minute {
			return fmt.Errorf("the stream would span %s of record time: more than the dedup window + slack", span)
		}
	}
	p.chunks++
	close(p.ready)
	p.ready = make(chan struct{})
	return nil
}

// next is closed when the next chunk has been produced.
func (p *producer) next() <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.ready
}

func (p *producer) start() {
	p.started = true
	go func() {
		defer close(p.done)
		rng := rand.New(rand.NewPCG(uint64(p.sc.s.seed), 7))
		for i := 1; i < p.sc.s.sz.maxChunks; i++ {
			select {
			case <-p.stop:
				return
			default:
			}
			idx := i
			if i%4 == 3 { // re-send an earlier chunk: duplicates across restarts
				idx = rng.IntN(i)
				if idx == 0 && p.sent0 {
					idx = 1 + rng.IntN(i-1)
				}
				p.sent0 = p.sent0 || idx == 0
				p.mu.Lock()
				p.resends++
				p.mu.Unlock()
			}
			if err := p.produceChunk(idx); err != nil {
				p.err = err
				return
			}
			pace := p.sc.s.sz.pace
			select {
			case <-p.stop:
				return
			case <-time.After(pace[0] + time.Duration(rng.Int64N(int64(pace[1]-pace[0])+1))):
			}
		}
	}()
}

func (p *producer) stopAndWait() {
	p.stopped.Do(func() { close(p.stop) })
	if p.started {
		<-p.done
	}
}
