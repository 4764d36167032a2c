#!/usr/bin/env bash
# fetch-kafka.sh puts Apache Kafka's broker jars (apache/pom.xml: kafka_2.13
# and its runtime dependencies, from Maven Central) into a cache directory and
# prints that libs directory as its only line on stdout. It is idempotent:
# once the directory exists it prints it without running Maven.
#
# kafkatest.Apache runs this same script (embedded in the test binary), so
# .ci/run can call it first to warm the cache.
#
#   USAGEPIPE_KAFKA_CACHE  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/usagepipe)
#   MAVEN_OPTS, MAVEN_ARGS passed to mvn as usual
#
# The directory is named kafka-<version>-<hash of apache/pom.xml>, so editing
# the pom downloads afresh. Concurrent runs are serialised with flock(1); a
# download goes to a temporary directory that is renamed into place only when
# complete.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
pom="$here/apache/pom.xml"
[ -f "$pom" ] || { echo "fetch-kafka.sh: $pom not found" >&2; exit 1; }

version=$(sed -n 's:.*<kafka\.version>\(.*\)</kafka\.version>.*:\1:p' "$pom")
[ -n "$version" ] || { echo "fetch-kafka.sh: no <kafka.version> in $pom" >&2; exit 1; }
hash=$(sha256sum "$pom" | cut -c1-12)
root=${USAGEPIPE_KAFKA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/usagepipe}
dir="$root/kafka-$version-$hash"
libs="$dir/libs"

if [ ! -d "$libs" ]; then
	command -v mvn >/dev/null || { echo "fetch-kafka.sh: mvn not found on PATH (Debian: apt-get install maven)" >&2; exit 1; }
	mkdir -p "$dir"
	exec 9>"$dir/lock"
	flock 9
	if [ ! -d "$libs" ]; then
		tmp=$(mktemp -d "$dir/libs.tmp.XXXXXX")
		trap 'rm -rf "$tmp"' EXIT
		start=$(date +%s)
		# mvn -q reports errors on stdout; stdout is reserved for the result.
		if ! mvn -B -q -Dstyle.color=never -f "$pom" dependency:copy-dependencies \
			-DoutputDirectory="$tmp" >&2; then
			echo "fetch-kafka.sh: mvn could not fetch org.apache.kafka:kafka_2.13:$version and its dependencies (is Maven Central reachable?)" >&2
			exit 1
		fi
		if [ ! -f "$tmp/kafka_2.13-$version.jar" ]; then
			echo "fetch-kafka.sh: mvn finished but $tmp/kafka_2.13-$version.jar is missing" >&2
			exit 1
		fi
		mv "$tmp" "$libs"
		trap - EXIT
		echo "fetch-kafka.sh: fetched Kafka $version jars into $libs in $(($(date +%s) - start))s" >&2
	fi
fi
echo "$libs"
