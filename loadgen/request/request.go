// Package request builds what the load client sends: the prediction URL for a
// protocol (direct, or through a Seldon/Istio gateway as the seed's client
// built it) and request bodies made of rows, generated from a seed before the
// clock starts so runs repeat and encoding never competes with sending.
package request

import (
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/mlscale/mlscale/api/ndarray"
)

// Protocol is a prediction API.
type Protocol string

const (
	// Seldon is Seldon Core's v1 REST protocol: POST .../api/v1.0/predictions
	// with {"data":{"ndarray":[[...],...]}}.
	Seldon Protocol = "seldon"
	// V2 is the Open Inference Protocol: POST /v2/models/{name}/infer.
	V2 Protocol = "v2"
)

// Target says where predictions go.
type Target struct {
	// URL is either the full prediction URL (when Namespace/Deployment are
	// empty) or the gateway's base URL.
	URL string
	// Namespace and Deployment select a SeldonDeployment behind a gateway:
	// {URL}/seldon/{Namespace}/{Deployment}/...
	Namespace, Deployment string
	Protocol              Protocol
	// Model is the v2 model name.
	Model string
}

// Endpoint returns the URL to POST predictions to.
func (t Target) Endpoint() (string, error) {
	if t.URL == "" {
		return "", errors.New("no target URL")
	}
	u, err := url.Parse(t.URL)
	if err != nil {
		return "", fmt.Errorf("parsing target URL: %w", err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("target URL %q: want http(s)://host[:port][/path]", t.URL)
	}
	gateway := t.Namespace != "" || t.Deployment != ""
	if gateway && (t.Namespace == "" || t.Deployment == "") {
		return "", errors.New("a gateway target needs both namespace and deployment")
	}
	if !gateway {
		return u.String(), nil
	}
	var p string
	switch t.Protocol {
	case Seldon, "":
		p = "/api/v1.0/predictions"
	case V2:
		if t.Model == "" {
			return "", errors.New("protocol v2 needs a model name")
		}
		p = "/v2/models/" + url.PathEscape(t.Model) + "/infer"
	default:
		return "", fmt.Errorf("unknown protocol %q (want seldon or v2)", t.Protocol)
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + "/seldon/" + url.PathEscape(t.Namespace) + "/" + url.PathEscape(t.Deployment) + p
	return u.String(), nil
}

// DirectEndpoint returns the model server's own prediction URL for base (for
// example http://127.0.0.1:9000).
func DirectEndpoint(base string, p Protocol, model string) (string, error) {
	base = strings.TrimSuffix(base, "/")
	switch p {
	case Seldon, "":
		return base + "/api/v1.0/predictions", nil
	case V2:
		if model == "" {
			return "", errors.New("protocol v2 needs a model name")
		}
		return base + "/v2/models/" + url.PathEscape(model) + "/infer", nil
	}
	return "", fmt.Errorf("unknown protocol %q (want seldon or v2)", p)
}

// ParseProtocol validates a protocol name.
func ParseProtocol(s string) (Protocol, error) {
	switch p := Protocol(s); p {
	case Seldon, V2:
		return p, nil
	}
	return "", fmt.Errorf("unknown protocol %q (want seldon or v2)", s)
}

// Rows is a source of feature rows.
type Rows interface {
	// Fill writes rows*Features() values row-major into dst.
	Fill(dst []float64, rows int)
	Features() int
}

// Random draws integer feature values uniformly from [Min, Max], as the seed
// did (1..4), from a seeded generator so runs repeat.
type Random struct {
	rng      *rand.Rand
	features int
	min, max int
}

// NewRandom returns a Random source; stream separates independent sequences
// from one seed (one per task, so a task's data does not depend on the
// tasks before it).
func NewRandom(seed, stream uint64, features, vmin, vmax int) *Random {
	return &Random{rng: rand.New(rand.NewPCG(seed, stream)), features: features, min: vmin, max: vmax}
}

func (r *Random) Features() int { return r.features }

func (r *Random) Fill(dst []float64, rows int) {
	n := r.max - r.min + 1
	for i := range dst[:rows*r.features] {
		dst[i] = float64(r.min + r.rng.IntN(n))
	}
}

// Table cycles through rows read from a CSV.
type Table struct {
	data     []float64
	features int
	next     int // next row
}

// ReadCSV reads rows of numbers; a first line that does not parse as numbers
// is taken as a header. Every row must have the same number of columns.
func ReadCSV(path string) (*Table, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening rows CSV: %w", err)
	}
	defer f.Close()
	t, err := parseCSV(f)
	if err != nil {
		return nil, fmt.Errorf("rows CSV %s: %w", path, err)
	}
	return t, nil
}

func parseCSV(r io.Reader) (*Table, error) {
	cr := csv.NewReader(r)
	cr.ReuseRecord = true
	t := &Table{}
	for line := 1; ; line++ {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		row := make([]float64, len(rec))
		var perr error
		for i, s := range rec {
			if row[i], perr = strconv.ParseFloat(strings.TrimSpace(s), 64); perr != nil {
				break
			}
		}
		if perr != nil {
			if line == 1 {
				continue // header
			}
			return nil, fmt.Errorf("line %d: %w", line, perr)
		}
		if t.features == 0 {
			t.features = len(row)
		} else if len(row) != t.features {
			return nil, fmt.Errorf("line %d: %d columns, want %d", line, len(row), t.features)
		}
		t.data = append(t.data, row...)
	}
	if len(t.data) == 0 {
		return nil, errors.New("no rows")
	}
	return t, nil
}

func (t *Table) Features() int { return t.features }

func (t *Table) Fill(dst []float64, rows int) {
	n := len(t.data) / t.features
	for i := range rows {
		r := (t.next + i) % n
		copy(dst[i*t.features:(i+1)*t.features], t.data[r*t.features:(r+1)*t.features])
	}
	t.next = (t.next + rows) % n
}

// Encode renders rows (row-major, features columns) as a request body.
func Encode(p Protocol, x []float64, rows, features int) []byte {
	b := make([]byte, 0, 64+len(x)*4)
	switch p {
	case V2:
		b = append(b, `{"inputs":[{"name":"input-0","shape":[`...)
		b = strconv.AppendInt(b, int64(rows), 10)
		b = append(b, ',')
		b = strconv.AppendInt(b, int64(features), 10)
		b = append(b, `],"datatype":"FP32","data":`...)
		b = ndarray.AppendFlat(b, x[:rows*features], ndarray.Bare)
		b = append(b, "}]}"...)
	default:
		b = ndarray.AppendRequest(b, x, rows, features, ndarray.Bare)
	}
	return b
}

// PoolBytes is a sensible memory budget for one task's pre-built bodies.
const PoolBytes = 64 << 20

// Bodies pre-builds up to want distinct bodies of rows rows each (fewer when
// they would exceed budget bytes; requests then reuse them in turn). At least
// one body is always built.
func Bodies(src Rows, p Protocol, rows, want, budget int) [][]byte {
	x := make([]float64, rows*src.Features())
	var out [][]byte
	size := 0
	for len(out) < max(1, want) {
		src.Fill(x, rows)
		b := Encode(p, x, rows, src.Features())
		if len(out) > 0 && size+len(b) > budget {
			break
		}
		size += len(b)
		out = append(out, b)
	}
	return out
}
