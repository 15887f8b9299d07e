// Command gen writes the Grafana dashboard JSON (go generate ./manifests/grafana/).
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/mlscale/mlscale/manifests/grafana"
)

func main() {
	out := flag.String("out", "mlscale.json", "file to write")
	flag.Parse()
	b, err := grafana.JSON()
	if err == nil {
		err = os.WriteFile(*out, b, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}
