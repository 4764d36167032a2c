// Package schema owns usagepipe's ClickHouse objects: the fact tables the
// pipeline writes, the views analysts and scoring jobs read
// (account_quarter_rollups, account_quarter_features), and the migrations
// that create and upgrade them (usagepipe migrate).
//
// (Design notes and per-table justification: see DESIGN in this package.)
package schema
