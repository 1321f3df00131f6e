package main

import (
	"fmt"
	"io"
)

func runAgent(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "run: not built yet")
	return 1
}
