// Command certs writes the certificates for manifests/components/certs (see
// package certgen). `make certs` runs it.
package main

import (
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/mlscale/mlscale/internal/certgen"
)

func main() {
	out := flag.String("out", "manifests/components/certs/generated", "directory to write ca.crt and the NAME.crt/NAME.key pairs into")
	validity := flag.Duration("validity", 365*24*time.Hour, "validity of the leaf certificates (the CA gets ten times as long)")
	force := flag.Bool("force", false, "regenerate even if a complete, valid set exists")
	flag.Parse()
	res, err := certgen.Generate(certgen.Options{Dir: *out, Validity: *validity, Force: *force})
	if err != nil {
		fmt.Fprintln(os.Stderr, "certs:", err)
		os.Exit(1)
	}
	if res.Kept {
		fmt.Printf("certs: %s holds a valid set; kept (use -force to replace)\n", *out)
		return
	}
	fmt.Printf("certs: wrote %d files into %s\n", len(res.Files), *out)
}
