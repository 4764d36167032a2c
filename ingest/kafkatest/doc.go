// Package kafkatest gives tests real Kafka protocol peers: an in-process
// kfake cluster ([Kfake]) and a single-node KRaft Apache Kafka broker
// ([Apache]) run from the jars on Maven Central. [Brokers] returns the peers
// an integration test should run against: kfake always, and Apache Kafka too
// when USAGEPIPE_TEST_APACHE_KAFKA=1 (make test sets it).
//
// # Apache Kafka
//
// The version and the jars are pinned in apache/pom.xml. fetch-kafka.sh
// copies them with `mvn dependency:copy-dependencies` into
// ${USAGEPIPE_KAFKA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/usagepipe}/kafka-<version>-<pom hash>/libs
// once; later runs start the broker without Maven. Both files are embedded in
// the package, so a test binary runs the same script wherever it runs.
//
// The broker is started at most once per test binary, on the first call to
// [Apache], and shared by all tests of that binary: give every test its own
// topics and group names. It listens on free 127.0.0.1 ports, keeps its data
// in a fresh temporary directory, runs with -Xmx512m, and is stopped (and
// its directory removed) when the tests end by [Main], which the test
// package's TestMain must call:
//
//	func TestMain(m *testing.M) { kafkatest.Main(m) }
//
// or, under a harness that calls os.Exit itself, by [Runner]:
//
//	func TestMain(m *testing.M) { chtest.Main(kafkatest.Runner(m)) }
//
// The broker runs with auto.create.topics.enable=false; create topics with
// [CreateTopic].
//
// # Concurrency
//
// All functions may be called from parallel tests. The first [Apache] call
// blocks other callers until the broker is ready or has failed; a failure is
// remembered and reported to every later caller.
//
// The package exports no metrics.
package kafkatest
