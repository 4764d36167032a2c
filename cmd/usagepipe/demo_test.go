package main

import (
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/usagepipe/usagepipe/schema"
)

// TestShellQuote: a quoted string reaches a command as one argument,
// unchanged, through a real shell.
func TestShellQuote(t *testing.T) {
	f := func(s, want string) {
		t.Helper()
		q := shellQuote(s)
		if q != want {
			t.Errorf("shellQuote(%q) = %s, want %s", s, q, want)
		}
		out, err := osexec.Command("sh", "-c", "printf %s "+q).Output()
		if err != nil || string(out) != s {
			t.Errorf("sh got %q (%v), want %q", out, err, s)
		}
	}
	f("./bin/usagepipe", "./bin/usagepipe")
	f("--data-dir=/tmp/a b", "'--data-dir=/tmp/a b'")
	f("WHERE quarter = '2026-Q4'", `"WHERE quarter = '2026-Q4'"`)
	f(`it's $HOME`, `'it'\''s $HOME'`)
	f("", "''")
}

func TestPrintAtRisk(t *testing.T) {
	q3, q4 := time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC), time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	row := func(account string, qs time.Time, purchased, assigned, activeAssigned uint64) schema.Rollup {
		r := schema.Rollup{AccountID: account, QuarterStart: qs, Quarter: "2026-Q3", SeatsPurchased: purchased, SeatsAssigned: assigned, ActiveAssignedUsers: activeAssigned}
		if qs.Equal(q4) {
			r.Quarter = "2026-Q4"
		}
		if purchased > 0 {
			r.SeatUtilization = float64(assigned) / float64(purchased)
		}
		if assigned > 0 {
			r.ActivationRate = float64(activeAssigned) / float64(assigned)
		}
		return r
	}
	rows := []schema.Rollup{
		row("shelfware", q3, 100, 80, 70), row("shelfware", q4, 100, 70, 63), // 70% assigned, 10 points fewer
		row("idle", q3, 50, 50, 40), row("idle", q4, 50, 50, 10), // 20% active, 60 points fewer
		row("healthy", q3, 1000, 990, 900), row("healthy", q4, 1200, 1190, 1100),
		row("newcomer", q4, 20, 5, 5),                      // new this quarter
		row("tiny", q3, 3, 1, 0), row("tiny", q4, 3, 1, 0), // below minRiskSeats: counted, not listed
	}
	var b strings.Builder
	if got := printAtRisk(&b, rows, 2); got != "2026-Q4" {
		t.Errorf("latest quarter %q", got)
	}
	out := b.String()
	t.Log("\n" + out)
	util, act, ok := strings.Cut(out, "Lowest activation")
	if !ok || !strings.Contains(util, "Lowest seat utilization") {
		t.Fatalf("want the utilization table, then the activation table:\n%s", out)
	}
	f := func(table, account string, fields ...string) {
		t.Helper()
		for _, line := range strings.Split(table, "\n") {
			if got := strings.Fields(line); len(got) > 0 && got[0] == account {
				if strings.Join(got[:len(fields)], " ") != strings.Join(fields, " ") {
					t.Errorf("%s: got %v, want %v…", account, got, fields)
				}
				return
			}
		}
		t.Errorf("%s not listed in\n%s", account, table)
	}
	// The two lowest of each, in order, with their changes.
	f(util, "newcomer", "newcomer", "20", "5", "25.0%", "new")
	f(util, "shelfware", "shelfware", "100", "70", "70.0%", "-10.0", "63", "90.0%", "+2.5")
	f(act, "idle", "idle", "50", "50", "100.0%", "0.0", "10", "20.0%", "-60.0")
	f(act, "shelfware", "shelfware", "100", "70", "70.0%", "-10.0", "63", "90.0%", "+2.5")
	if strings.Index(util, "newcomer") > strings.Index(util, "shelfware") || strings.Index(act, "idle") > strings.Index(act, "shelfware") {
		t.Errorf("not lowest first:\n%s", out)
	}
	if strings.Contains(out, "tiny") || strings.Contains(util, "healthy") {
		t.Errorf("lists an account of fewer than %d seats, or more than 2 rows:\n%s", minRiskSeats, out)
	}
	if want := "5 accounts with seats in 2026-Q4: 3 to 1200 seats (median 50); 3 below 80% utilization, 2 below 50% activation, 1 new since 2026-Q3"; !strings.Contains(out, want) {
		t.Errorf("summary missing %q:\n%s", want, out)
	}
}
