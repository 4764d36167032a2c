package kafkatest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// Broker kinds, as in [Broker.Kind].
const (
	KindKfake  = "kfake"
	KindApache = "apache"
)

// EnvApache is the environment variable that makes [Brokers] include an
// Apache Kafka broker when set to "1".
const EnvApache = "USAGEPIPE_TEST_APACHE_KAFKA"

// Broker is a running Kafka-protocol endpoint for tests.
type Broker struct {
	// Addrs are the bootstrap host:port addresses (kgo.SeedBrokers).
	Addrs []string
	// Kind is KindKfake or KindApache; it makes a good subtest name.
	Kind string
}

// Kfake starts an in-process kfake cluster with opts (kfake.SeedTopics,
// kfake.NumBrokers, kfake.EnableSASL, kfake.TLS, …) and closes it when tb
// ends.
func Kfake(tb testing.TB, opts ...kfake.Opt) *kfake.Cluster {
	tb.Helper()
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		tb.Fatalf("kafkatest: start kfake: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// Brokers returns the brokers to run integration tests against: a fresh
// kfake cluster (closed when tb ends) and, when EnvApache is "1", the shared
// Apache Kafka broker of [Apache]. If the Apache broker is asked for but
// cannot be started, for example because its jars cannot be fetched, tb
// fails; it is not skipped.
func Brokers(tb testing.TB) []*Broker {
	tb.Helper()
	bs := []*Broker{{Addrs: Kfake(tb).ListenAddrs(), Kind: KindKfake}}
	if os.Getenv(EnvApache) == "1" {
		bs = append(bs, Apache(tb))
	}
	return bs
}

// CreateTopic creates topic with the given number of partitions and the
// broker's default replication factor, and waits until every partition has a
// leader and answers ListOffsets. opts are added to the admin client (SASL,
// TLS…). It fails tb on error, including when the topic already exists.
func CreateTopic(tb testing.TB, addrs []string, topic string, partitions int32, opts ...kgo.Opt) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := createTopic(ctx, addrs, topic, partitions, opts...); err != nil {
		tb.Fatalf("kafkatest: %v", err)
	}
}

func createTopic(ctx context.Context, addrs []string, topic string, partitions int32, opts ...kgo.Opt) error {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addrs...)}, opts...)...)
	if err != nil {
		return fmt.Errorf("create topic %q: new client: %w", topic, err)
	}
	defer cl.Close()
	adm := kadm.NewClient(cl)

	resp, err := adm.CreateTopic(ctx, partitions, -1, nil, topic)
	if err == nil {
		err = resp.Err
	}
	if err != nil {
		return fmt.Errorf("create topic %q: %w", topic, err)
	}

	var last error
	for {
		if last = topicUsable(ctx, adm, topic, partitions); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("create topic %q: not usable before the deadline: %w", topic, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// topicUsable reports why topic is not yet usable, or nil.
func topicUsable(ctx context.Context, adm *kadm.Client, topic string, partitions int32) error {
	md, err := adm.Metadata(ctx, topic)
	if err != nil {
		return err
	}
	td, ok := md.Topics[topic]
	switch {
	case !ok:
		return errors.New("topic missing from metadata")
	case td.Err != nil:
		return td.Err
	case int32(len(td.Partitions)) != partitions:
		return fmt.Errorf("metadata has %d of %d partitions", len(td.Partitions), partitions)
	}
	for _, p := range td.Partitions {
		if p.Err != nil {
			return fmt.Errorf("partition %d: %w", p.Partition, p.Err)
		}
		if p.Leader < 0 {
			return fmt.Errorf("partition %d has no leader", p.Partition)
		}
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err != nil {
		return err
	}
	if err := ends.Error(); err != nil {
		return err
	}
	if n := len(ends[topic]); int32(n) != partitions {
		return fmt.Errorf("ListOffsets answered for %d of %d partitions", n, partitions)
	}
	return nil
}

// clone returns a copy of b that the caller may change.
func (b *Broker) clone() *Broker {
	return &Broker{Addrs: slices.Clone(b.Addrs), Kind: b.Kind}
}

// FailCommit is the response of a broker that refuses every partition of
// an offset commit with code (for kfake control functions).
func FailCommit(req *kmsg.OffsetCommitRequest, code int16) *kmsg.OffsetCommitResponse {
	resp := req.ResponseKind().(*kmsg.OffsetCommitResponse)
	for _, t := range req.Topics {
		rt := kmsg.NewOffsetCommitResponseTopic()
		rt.Topic, rt.TopicID = t.Topic, t.TopicID
		for _, p := range t.Partitions {
			rp := kmsg.NewOffsetCommitResponseTopicPartition()
			rp.Partition, rp.ErrorCode = p.Partition, code
			rt.Partitions = append(rt.Partitions, rp)
		}
		resp.Topics = append(resp.Topics, rt)
	}
	return resp
}
