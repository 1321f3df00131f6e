package main

import (
	"flag"
	"fmt"
	"io"
)

// runValidate implements `sabaki validate -config FILE [FILE...]`: the same
// loading code as `run`, printing "FILE: ok" or every problem as
// FILE:LINE:COL: path: message. Exit 1 when any file has a problem.
func runValidate(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("validate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	file := fs.String("config", "", "config `FILE` to check (more files may follow as arguments)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "Usage: sabaki validate -config FILE [FILE...]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	files := fs.Args()
	if *file != "" {
		files = append([]string{*file}, files...)
	}
	if len(files) == 0 {
		fs.Usage()
		return 2
	}
	code := 0
	for _, f := range files {
		_, ps := loadConfig(f)
		if len(ps) == 0 {
			fmt.Fprintf(stdout, "%s: ok\n", f)
			continue
		}
		code = 1
		for _, p := range ps {
			fmt.Fprintln(stderr, formatProblem(f, p))
		}
	}
	return code
}
