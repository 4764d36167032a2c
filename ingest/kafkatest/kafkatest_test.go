package kafkatest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
)

func TestMain(m *testing.M) { kafkatest.Main(m) }

// TestRoundTrip produces keyed records, consumes them with a read-committed
// consumer group, commits, and checks that the group's committed offsets are
// the end offsets, on every broker of kafkatest.Brokers.
func TestRoundTrip(t *testing.T) {
	for _, b := range kafkatest.Brokers(t) {
		t.Run(b.Kind, func(t *testing.T) {
			t.Parallel()
			testRoundTrip(t, b.Addrs)
		})
	}
}

func testRoundTrip(t *testing.T, addrs []string) {
	const (
		n          = 1000
		partitions = 3
	)
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	topic, group := uniqueName(t, "roundtrip"), uniqueName(t, "group")
	kafkatest.CreateTopic(t, addrs, topic, partitions)

	producer := newClient(t, kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic))
	recs := make([]*kgo.Record, n)
	for i := range recs {
		recs[i] = &kgo.Record{Key: fmt.Appendf(nil, "key-%04d", i), Value: fmt.Appendf(nil, "value-%04d", i)}
	}
	if err := producer.ProduceSync(ctx, recs...).FirstErr(); err != nil {
		t.Fatalf("produce: %v", err)
	}

	consumer := newClient(t,
		kgo.SeedBrokers(addrs...),
		kgo.ConsumerGroup(group),
		kgo.ConsumeTopics(topic),
		kgo.FetchIsolationLevel(kgo.ReadCommitted()),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()),
		kgo.DisableAutoCommit(),
	)
	seen := make(map[string]string, n)
	perPartition := make(map[int32]int)
	for len(seen) < n {
		fs := consumer.PollFetches(ctx)
		if err := fs.Err0(); err != nil {
			t.Fatalf("poll after %d records: %v", len(seen), err)
		}
		for _, e := range fs.Errors() {
			t.Fatalf("fetch %s/%d: %v", e.Topic, e.Partition, e.Err)
		}
		fs.EachRecord(func(r *kgo.Record) {
			if _, dup := seen[string(r.Key)]; dup {
				t.Errorf("key %s consumed twice", r.Key)
			}
			seen[string(r.Key)] = string(r.Value)
			perPartition[r.Partition]++
		})
	}
	if err := consumer.CommitUncommittedOffsets(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	consumer.Close()

	if len(seen) != n {
		t.Errorf("consumed %d distinct keys, want %d", len(seen), n)
	}
	for i := range n {
		if k, want := fmt.Sprintf("key-%04d", i), fmt.Sprintf("value-%04d", i); seen[k] != want {
			t.Errorf("%s: value %q, want %q", k, seen[k], want)
		}
	}
	if len(perPartition) != partitions {
		t.Errorf("records in %d partitions (%v), want all %d", len(perPartition), perPartition, partitions)
	}

	adm := kadm.NewClient(producer)
	committed, err := adm.FetchOffsets(ctx, group)
	if err == nil {
		err = committed.Error()
	}
	if err != nil {
		t.Fatalf("fetch committed offsets: %v", err)
	}
	ends, err := adm.ListEndOffsets(ctx, topic)
	if err == nil {
		err = ends.Error()
	}
	if err != nil {
		t.Fatalf("list end offsets: %v", err)
	}
	var total int64
	for p := range int32(partitions) {
		end, _ := ends.Lookup(topic, p)
		c, _ := committed.Lookup(topic, p)
		total += end.Offset
		if c.At != end.Offset || end.Offset != int64(perPartition[p]) {
			t.Errorf("partition %d: committed %d, end %d, consumed %d; want all equal", p, c.At, end.Offset, perPartition[p])
		}
	}
	if total != n {
		t.Errorf("end offsets add up to %d, want %d", total, n)
	}
	t.Logf("consumed %d records, per partition %v, in %v", len(seen), perPartition, time.Since(start).Round(time.Millisecond))
}

// TestKfakeSecurity checks that kfake enforces SASL/SCRAM-SHA-256 and TLS:
// a client with the right credentials and CA produces, one without fails.
func TestKfakeSecurity(t *testing.T) {
	ca := newCA(t)
	good := kgo.SASL(scram.Auth{User: "alice", Pass: "s3cret"}.AsSha256Mechanism())
	wrongPass := kgo.SASL(scram.Auth{User: "alice", Pass: "guess"}.AsSha256Mechanism())
	trustCA := kgo.DialTLSConfig(&tls.Config{RootCAs: ca.pool, MinVersion: tls.VersionTLS12})
	systemRoots := kgo.DialTLSConfig(&tls.Config{MinVersion: tls.VersionTLS12})
	sasl := []kfake.Opt{kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-256", "alice", "s3cret")}
	withTLS := kfake.TLS(&tls.Config{Certificates: []tls.Certificate{ca.server}, MinVersion: tls.VersionTLS12})

	f := func(name string, cluster []kfake.Opt, ok, denied []kgo.Opt) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			addrs := kafkatest.Kfake(t, cluster...).ListenAddrs()
			kafkatest.CreateTopic(t, addrs, "secured", 1, ok...)
			if err := produceOne(addrs, "secured", ok); err != nil {
				t.Errorf("produce with credentials: %v", err)
			}
			if err := produceOne(addrs, "secured", denied); err == nil {
				t.Errorf("produce without credentials succeeded")
			}
		})
	}
	f("sasl-scram-sha-256", sasl, []kgo.Opt{good}, []kgo.Opt{wrongPass})
	f("tls", []kfake.Opt{withTLS}, []kgo.Opt{trustCA}, []kgo.Opt{systemRoots})
	f("sasl-over-tls", slices.Concat(sasl, []kfake.Opt{withTLS}), []kgo.Opt{good, trustCA}, []kgo.Opt{wrongPass, trustCA})
}

// produceOne produces one record and returns the outcome within 3 seconds.
func produceOne(addrs []string, topic string, opts []kgo.Opt) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(addrs...), kgo.DefaultProduceTopic(topic)}, opts...)...)
	if err != nil {
		return err
	}
	defer cl.Close()
	return cl.ProduceSync(ctx, &kgo.Record{Key: []byte("k"), Value: []byte("v")}).FirstErr()
}

func newClient(t *testing.T, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// uniqueName returns a topic or group name for t that no other run uses, as
// the Apache broker is shared by the whole test binary.
func uniqueName(t *testing.T, prefix string) string {
	name := strings.NewReplacer("/", ".", " ", "_").Replace(t.Name())
	return fmt.Sprintf("%s.%s.%d", prefix, name, time.Now().UnixNano())
}

type testCA struct {
	pool   *x509.CertPool  // trusts the CA
	server tls.Certificate // for 127.0.0.1 and localhost, signed by the CA
}

// newCA makes a throwaway CA and a server certificate it signed.
func newCA(t *testing.T) testCA {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kafkatest CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kfake"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	return testCA{pool: pool, server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}}
}
