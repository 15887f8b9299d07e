// Package cli is what the commands' mains share, so that each behaves the
// same: flags are parsed with ContinueOnError (a test calls run(args) and
// gets an error back), -h prints the usage and exits 0, a stray positional
// argument is an error, and an error exits 1 after "name: error" on stderr.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
)

// FlagSet returns the flag set of the command name. On -h it prints usage,
// when not empty, and then the flags' defaults.
func FlagSet(name, usage string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	if usage != "" {
		fs.Usage = func() { fmt.Fprint(fs.Output(), usage); fs.PrintDefaults() }
	}
	return fs
}

// Parse parses args into fs and refuses positional arguments. After -h it
// returns flag.ErrHelp, which Main takes as success.
func Parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	return nil
}

// Main runs run on the command line's arguments and exits with ExitCode of
// its error, printing the error as "name: error" on stderr unless it is
// flag.ErrHelp.
func Main(name string, run func(args []string) error) {
	err := run(os.Args[1:])
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
	}
	os.Exit(ExitCode(err))
}

// ExitCode is 0 for nil and flag.ErrHelp (the usage was asked for), 130
// for context.Canceled (interrupted, as a shell reports Ctrl-C) and 1 for
// any other error.
func ExitCode(err error) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, context.Canceled):
		return 130
	}
	return 1
}
