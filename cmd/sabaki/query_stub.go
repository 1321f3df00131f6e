package main

import (
	"fmt"
	"io"
)

// runQuery is a placeholder until the store engineer's query.go lands; delete
// this file then.
func runQuery(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "query: not built yet")
	return 1
}
