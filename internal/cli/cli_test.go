package cli

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantN   int
		wantErr string // "" no error; "help" flag.ErrHelp
	}{
		{"flags", []string{"--n=3"}, 3, ""},
		{"nothing", nil, 1, ""},
		{"help", []string{"-h"}, 1, "help"},
		{"unknown flag", []string{"--m=1"}, 1, "flag provided but not defined: -m"},
		{"positional argument", []string{"--n=2", "extra"}, 2, `unexpected arguments ["extra"]`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fs := FlagSet("cmd", "Usage: cmd [flags]\n")
			var out bytes.Buffer
			fs.SetOutput(&out)
			n := fs.Int("n", 1, "a number")
			err := Parse(fs, tc.args)
			switch {
			case tc.wantErr == "help":
				if !errors.Is(err, flag.ErrHelp) {
					t.Fatalf("err = %v, want flag.ErrHelp", err)
				}
				if s := out.String(); !strings.HasPrefix(s, "Usage: cmd [flags]\n") || !strings.Contains(s, "a number") {
					t.Errorf("usage printed:\n%s", s)
				}
			case tc.wantErr == "":
				if err != nil {
					t.Fatal(err)
				}
			case err == nil || !strings.Contains(err.Error(), tc.wantErr):
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if *n != tc.wantN {
				t.Errorf("n = %d, want %d", *n, tc.wantN)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want int
	}{
		{nil, 0},
		{flag.ErrHelp, 0},
		{fmt.Errorf("wrapped: %w", flag.ErrHelp), 0},
		{context.Canceled, 130},
		{fmt.Errorf("running: %w", context.Canceled), 130},
		{errors.New("listening on :9000: address in use"), 1},
		{context.DeadlineExceeded, 1},
	} {
		if got := ExitCode(tc.err); got != tc.want {
			t.Errorf("ExitCode(%v) = %d, want %d", tc.err, got, tc.want)
		}
	}
}
