package ingest

import (
	"context"
	"testing"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

// TestTopicChangedComparesEveryPartition: after the topic was re-created,
// a rebalance may set up a new partition under the new topic ID while the
// client still fetches an older one under the old ID. The instance must
// see the change (it compared the last assignment's ID only, and stalled
// on the old partition's fetch errors; found by an audit).
func TestTopicChangedComparesEveryPartition(t *testing.T) {
	addrs := kafkatest.Kfake(t).ListenAddrs()
	kafkatest.CreateTopic(t, addrs, "recreated", 2)
	cfg := Defaults()
	cfg.Brokers, cfg.Topic, cfg.DLQTopic, cfg.Group = addrs, "recreated", "recreated-dlq", "g"
	// The client joins the group at once: an assignment during the test
	// must not change the partitions it sets (nor call a nil Writer: a
	// CI run panicked there).
	c, err := New(cfg, blockedWriter{}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.cl.Close()
	ctx := context.Background()
	id, err := c.fetchTopicID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		parts     map[int32]string // partition → the topic ID it was assigned with
		lastID    string           // the last assignment's ID
		wantMoved bool
	}{
		{"every partition under the topic's ID", map[int32]string{0: id, 1: id}, id, false},
		{"one partition still under the old ID", map[int32]string{0: "old", 1: id}, id, true},
		{"every partition under the old ID", map[int32]string{0: "old"}, "old", true},
		{"no partition", nil, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.mu.Lock()
			c.parts = map[int32]*partState{}
			for p, pid := range tc.parts {
				c.parts[p] = &partState{p: p, topicID: pid}
			}
			c.topicID = tc.lastID
			c.mu.Unlock()
			if got := c.topicChanged(ctx); got != tc.wantMoved {
				t.Errorf("topicChanged = %v, want %v", got, tc.wantMoved)
			}
		})
	}
}

// blockedWriter is a Writer whose first read at an assignment waits until
// the assignment's context ends (the client closes): the assignment never
// gets further. Nothing else of it is called.
type blockedWriter struct{ Writer }

func (blockedWriter) Incarnation(ctx context.Context, _, _ string) (string, error) {
	<-ctx.Done()
	return "", ctx.Err()
}
