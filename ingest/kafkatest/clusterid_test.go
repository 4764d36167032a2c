package kafkatest

import (
	"encoding/base64"
	"testing"
)

// The storage tool parses its arguments: a cluster ID starting with '-'
// is taken for an option and the broker never starts (1 start in 64
// failed so in CI).
func TestNewClusterIDIsNeverAnOption(t *testing.T) {
	for range 5000 {
		id, err := newClusterID()
		if err != nil {
			t.Fatal(err)
		}
		if id[0] == '-' {
			t.Fatalf("cluster ID %q starts with '-'", id)
		}
		if b, err := base64.RawURLEncoding.DecodeString(id); err != nil || len(b) != 16 {
			t.Fatalf("cluster ID %q: not 16 bytes of URL-safe base64 (%d, %v)", id, len(b), err)
		}
	}
}
