package chaos

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/usagepipe/usagepipe/ingest/kafkatest"
	"github.com/usagepipe/usagepipe/schema/chcluster"
)

var (
	sizeFlag    = flag.String("chaos.size", "", "suite size: ci (≤ 12 min on 2 cores) or full (≤ 30 min; writes RESULTS.md); unset: TestChaos is skipped")
	brokersFlag = flag.String("chaos.brokers", "kfake,apache", "comma-separated brokers to run against: kfake, apache")
	seedFlag    = flag.Int64("chaos.seed", 0, "random seed of timings, targets and data (0: from the clock; the log prints it)")
	binFlag     = flag.String("chaos.bin", "", "usagepipe binary (default: bin/usagepipe at the module root, else built into a temp dir)")
	chFlag      = flag.String("chaos.clickhouse", "server", "ClickHouse to run against: server (one private clickhouse-server) or cluster (schema/chcluster: ZooKeeper and 3 nodes, shard 1 with replicas s1r1 and s1r2, shard 2 with s2r1)")
)

func TestMain(m *testing.M) { kafkatest.Main(m) }

// size is how much chaos one broker's run gets.
type size struct {
	name         string
	chunkEvents  int              // random records per chunk
	maxChunks    int              // chunks at most (the producer stops earlier when the plan ends)
	pace         [2]time.Duration // pause between chunks
	accounts     int
	users        int
	features     int
	kills        int           // SIGKILLs in the plan (a fault window adds one)
	outages      int           // ClickHouse outages (SIGKILL, then SIGTERM; on a cluster: a replica, then a shard, at least one of each)
	outageFor    time.Duration // how long ClickHouse (the node) stays down
	faultWindows int           // kfake fault windows
	faultFor     time.Duration
	zombies      int
	gap          [2]time.Duration // pause between steps
	budget       time.Duration    // the chaos plan of one broker
	drain        time.Duration    // the final --until-caught-up run
	session      time.Duration    // consumer session timeout when it can be set
}

var sizes = map[string]size{
	"ci": {
		name: "ci", chunkEvents: 2000, maxChunks: 80, pace: [2]time.Duration{time.Second, 3 * time.Second},
		accounts: 300, users: 6000, features: 12,
		kills: 10, outages: 1, outageFor: 7 * time.Second, faultWindows: 1, faultFor: 8 * time.Second, zombies: 1,
		gap: [2]time.Duration{500 * time.Millisecond, 2 * time.Second}, budget: 5 * time.Minute, drain: 3 * time.Minute, session: 10 * time.Second,
	},
	"full": {
		name: "full", chunkEvents: 6000, maxChunks: 200, pace: [2]time.Duration{time.Second, 3 * time.Second},
		accounts: 2000, users: 60000, features: 30,
		kills: 20, outages: 2, outageFor: 8 * time.Second, faultWindows: 3, faultFor: 10 * time.Second, zombies: 2,
		gap: [2]time.Duration{time.Second, 3 * time.Second}, budget: 11 * time.Minute, drain: 5 * time.Minute, session: 10 * time.Second,
	},
}

// suite is what the broker runs share.
type suite struct {
	sz            size
	seed          int64
	bin           string
	binDesc       string             // where the binary came from, for RESULTS.md
	sessionFlag   bool               // the binary has --kafka-session-timeout
	rebalanceFlag bool               // the binary has --kafka-rebalance-timeout
	ch            *chServer          // the server (-chaos.clickhouse=server)
	cl            *chcluster.Cluster // the cluster (-chaos.clickhouse=cluster)
	dir           string             // logs of every process
}

func TestChaos(t *testing.T) {
	if *sizeFlag == "" {
		t.Skip("the chaos suite runs only when asked: -chaos.size=ci or -chaos.size=full (make chaos-ci, make chaos)")
	}
	sz, ok := sizes[*sizeFlag]
	if !ok {
		t.Fatalf("-chaos.size=%q: want ci or full", *sizeFlag)
	}
	s := &suite{sz: sz, seed: *seedFlag}
	if s.seed == 0 {
		s.seed = time.Now().UnixNano() % 1_000_000
	}
	t.Logf("chaos size %s, seed %d (rerun with -chaos.seed=%d)", sz.name, s.seed, s.seed)
	began := time.Now()

	var err error
	if s.dir, err = os.MkdirTemp("", "usagepipe-chaos-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("process logs kept in %s", s.dir)
		} else {
			os.RemoveAll(s.dir)
		}
	})
	s.bin, s.binDesc = binary(t, s.dir)
	if s.sessionFlag, err = helpHas(s.bin, "kafka-session-timeout"); err != nil {
		t.Fatal(err)
	}
	if s.rebalanceFlag, err = helpHas(s.bin, "kafka-rebalance-timeout"); err != nil {
		t.Fatal(err)
	}
	if !s.sessionFlag {
		t.Logf("NOTE: %s has no --kafka-session-timeout: instances keep the 45 s default (kfake: the suite shortens it in JoinGroup; Apache: zombie pauses and dead-member waits take 45 s+)", s.bin)
	}

	ctx := context.Background()
	chDir := filepath.Join(s.dir, "clickhouse")
	switch *chFlag {
	case "server":
		if s.ch, err = startCH(ctx, chDir); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.ch.down(false) })
		t.Logf("ClickHouse 18.16 at %s (data %s)", s.ch.addr(), chDir)
	case "cluster":
		t0 := time.Now()
		sctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		s.cl, err = chcluster.Start(sctx, chDir)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(s.cl.Stop)
		var nodes []string
		for _, n := range s.cl.Nodes() {
			nodes = append(nodes, fmt.Sprintf("%s (shard %d) at %s", n.Replica, n.Shard, n.Addr))
		}
		t.Logf("ClickHouse 18.16 cluster %s started in %s: ZooKeeper at %s, %s (data %s)", s.cl.Name, time.Since(t0).Round(100*time.Millisecond), s.cl.ZooKeeper, strings.Join(nodes, ", "), chDir)
		t.Logf("cluster mode: outages alternate a replica outage (SIGKILL s1r1, restarted after outageFor) and a shard outage (stop s2r1, restarted after outageFor); in-flush kills and the zombie look for INSERTs on every node; the final comparison reads on every node")
	default:
		t.Fatalf("-chaos.clickhouse=%q: want server or cluster", *chFlag)
	}

	var all []*figures
	for _, kind := range strings.Split(*brokersFlag, ",") {
		kind = strings.TrimSpace(kind)
		t.Run(kind, func(t *testing.T) {
			var brokers []string
			var cluster *kfake.Cluster
			switch kind {
			case kafkatest.KindKfake:
				cluster = kafkatest.Kfake(t)
				brokers = cluster.ListenAddrs()
			case kafkatest.KindApache:
				brokers = kafkatest.Apache(t).Addrs
			default:
				t.Fatalf("-chaos.brokers: unknown broker %q (want kfake or apache)", kind)
			}
			f := runBroker(t, s, kind, brokers, cluster)
			all = append(all, f)
		})
	}
	t.Logf("chaos suite (%s, ClickHouse %s) took %s", sz.name, s.chMode(), time.Since(began).Round(time.Second))
	for _, f := range all {
		t.Logf("figures (%s, ClickHouse %s):\n%s", f.broker, s.chMode(), f.table([]*figures{f}))
	}
	if sz.name == "full" && len(all) > 0 {
		results := "RESULTS.md"
		if s.cl != nil {
			results = "RESULTS-cluster.md"
		}
		if err := writeResults(results, s, all, t.Failed(), time.Since(began)); err != nil {
			t.Errorf("write %s: %v", results, err)
		}
	}
}

// binary returns the usagepipe binary: -chaos.bin, bin/usagepipe at the
// module root (what `make build` produces), or a fresh build in dir.
func binary(t *testing.T, dir string) (path, desc string) {
	t.Helper()
	if *binFlag != "" {
		return *binFlag, *binFlag + " (-chaos.bin)"
	}
	root, err := moduleRoot()
	if err != nil {
		t.Fatal(err)
	}
	if p := filepath.Join(root, "bin", "usagepipe"); fileExists(p) {
		// A copy: a `make build` during the run must not change it.
		b, err := os.ReadFile(p)
		if err == nil {
			err = os.WriteFile(filepath.Join(dir, "usagepipe"), b, 0o755)
		}
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(p)
		t.Logf("binary: copy of %s", p)
		return filepath.Join(dir, "usagepipe"), fmt.Sprintf("bin/usagepipe built %s", st.ModTime().UTC().Format("2006-01-02 15:04 MST"))
	}
	p := filepath.Join(dir, "usagepipe")
	cmd := exec.Command("go", "build", "-o", p, "./cmd/usagepipe")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/usagepipe: %v\n%s", err, out)
	}
	t.Logf("binary: built %s", p)
	return p, "built from the working tree by the test"
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if fileExists(filepath.Join(dir, "go.mod")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the test's directory")
		}
		dir = parent
	}
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// Plan steps.
type stepKind int

const (
	stepKill stepKind = iota
	stepJoin
	stepLeave
	stepOutage
	stepFaults
	stepZombie
)

type killMode int

const (
	killRandom     killMode = iota // a small random delay after a chunk was produced
	killInFlush                    // while the instance has an INSERT running in ClickHouse
	killAfterFlush                 // right after its flush counter moved: between ClickHouse's ack and the Kafka commit
)

func (m killMode) String() string {
	return [...]string{"after-chunk", "in-flush", "after-flush"}[m]
}

type step struct {
	kind stepKind
	mode killMode
	n    int // which outage / fault window / zombie
}

// plan spreads the kills evenly around the other steps: a join, then per
// round a fault window (kfake), a ClickHouse outage, a leave, a zombie and
// a join.
func plan(sz size, withFaults bool) []step {
	specials := []step{{kind: stepJoin}}
	for i := range max(sz.outages, sz.zombies, sz.faultWindows) {
		if withFaults && i < sz.faultWindows {
			specials = append(specials, step{kind: stepFaults, n: i})
		}
		if i < sz.outages {
			specials = append(specials, step{kind: stepOutage, n: i})
		}
		specials = append(specials, step{kind: stepLeave})
		if i < sz.zombies {
			specials = append(specials, step{kind: stepZombie, n: i})
		}
		specials = append(specials, step{kind: stepJoin})
	}
	modes := []killMode{killRandom, killInFlush, killAfterFlush, killInFlush}
	var out []step
	k, slots := 0, len(specials)+1
	for i := range slots {
		for range sz.kills*(i+1)/slots - sz.kills*i/slots {
			out = append(out, step{kind: stepKill, mode: modes[k%len(modes)]})
			k++
		}
		if i < len(specials) {
			out = append(out, specials[i])
		}
	}
	return out
}
