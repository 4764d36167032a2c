package main

// Temporary: pins the chosen dependencies in go.mod while the packages that
// use them are written. Removed once every one has a real importer.
import (
	_ "github.com/ClickHouse/clickhouse-go/v2"
	_ "github.com/klauspost/compress/zstd"
	_ "github.com/oklog/run"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/prometheus/client_golang/prometheus/promhttp"
	_ "github.com/twmb/franz-go/pkg/kadm"
	_ "github.com/twmb/franz-go/pkg/kfake"
	_ "github.com/twmb/franz-go/pkg/kgo"
	_ "github.com/twmb/franz-go/pkg/kmsg"
	_ "github.com/twmb/franz-go/plugin/kprom"
	_ "github.com/twmb/franz-go/plugin/kslog"
	_ "github.com/valyala/fastjson"
)

func main() {}
