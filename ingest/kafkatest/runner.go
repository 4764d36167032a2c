package kafkatest

import "testing"

// Runner wraps m so that running it also stops the shared Apache broker,
// for composition with other harnesses:
//
//	func TestMain(m *testing.M) { chtest.Main(kafkatest.Runner(m)) }
func Runner(m *testing.M) interface{ Run() int } { return runner{m} }

type runner struct{ m *testing.M }

func (r runner) Run() int { return run(r.m) }
