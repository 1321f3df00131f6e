// Package configs embeds the default config that `sabaki run` uses when no
// -config is given. The other files in this directory are examples (each one
// is checked by `sabaki validate` in the tests) and deployment files.
package configs

import _ "embed"

// Default is configs/default.yaml.
//
//go:embed default.yaml
var Default []byte
