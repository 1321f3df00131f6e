// Command sabaki is the metrics aggregation agent: `sabaki run` is the daemon,
// the other subcommands validate its config and read its store.
package main

import (
	"fmt"
	"io"
	"os"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

const usage = `sabaki: metrics aggregation agent

Usage:
  sabaki run      [-config FILE] [-log-level LEVEL]   run the agent (embedded default config without -config)
  sabaki validate -config FILE                         check a config file, print every problem
  sabaki query    -metric M [flags]                    read the store (sabaki query -h)
  sabaki backfill -source NAME [-from 42d]             import the history a source still holds into the store
  sabaki export capacity [-from 90d] [-format html]    capacity-planning report from the store (sabaki export -h)
  sabaki health   [-addr HOST:PORT | -config FILE]      exit 0 when a running agent is ready (for HEALTHCHECK)
  sabaki version                                       print version, commit and Go version
  sabaki help                                          print this help

Run "sabaki COMMAND -h" for the flags of a command.
`

// run dispatches to a subcommand and returns the process exit code: 0 on
// success, 1 on failure, 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		return runAgent(rest, stdout, stderr)
	case "validate":
		return runValidate(rest, stdout, stderr)
	case "query":
		return runQuery(rest, stdout, stderr)
	case "backfill":
		return runBackfill(rest, stdout, stderr)
	case "export":
		return runExport(rest, stdout, stderr)
	case "health":
		return runHealth(rest, stdout, stderr)
	case "version", "-version", "--version":
		return runVersion(rest, stdout, stderr)
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "sabaki: unknown command %q\n\n%s", cmd, usage)
	return 2
}
