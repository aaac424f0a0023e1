package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

// version is stamped at build time from git by `make build`:
//
//	-ldflags "-X main.version=$(git describe --tags --always --dirty)"
//
// Empty in a plain `go build`, when the build information is used instead.
var version string

// versionString is the stamped version, else the main module's version
// from the build information (a tagged `go install`, or the pseudo-version
// that go build derives from the checkout's commit, +dirty when modified),
// else the commit alone.
func versionString() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	var rev, dirty string
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				dirty = "-dirty"
			}
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	return "devel-" + rev + dirty
}

func versionCmd(args []string, stdout io.Writer) error {
	if len(args) > 0 {
		return errUsage
	}
	fmt.Fprintf(stdout, "broker %s (%s %s/%s)\n", versionString(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return nil
}
