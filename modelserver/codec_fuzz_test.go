package modelserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/valyala/fastjson"

	"github.com/mlscale/mlscale/api/ndarray"
)

const fuzzNF = 4

var seldonSeeds = []string{
	`{"data":{"ndarray":[[5.1,3.5,1.4,0.2],[1,2,3,4]]}}`,
	`{"data":{"names":["a","b","c","d"],"ndarray":[[null,NaN,-0,1e-45]]},"meta":{"puid":"x"}}`,
	`{"data":{"tensor":{"shape":[2,4],"values":[1,2,3,4,5,6,7,8]}}}`,
	`{"data":{"tensor":{"shape":[1,4],"values":[1,2,3]}}}`,
	`{"data":{"ndarray":[[1,2,3],[1,2,3,4,5]]}}`,
	`{"data":{"ndarray":[[1,"2",true,{}]]}}`,
	`{"data":{"ndarray":[[1e999,-1e999,Inf,nan]]}}`,
	`{"data":{"ndarray":[]}}`,
	`{"data":{"ndarray":[[1,2,3,4]],"tensor":{}}}`,
	`{"data":{"tftensor":{"dtype":"DT_FLOAT","tensorShape":{"dim":[{"size":"1"},{"size":"4"}]},"floatVal":[1,2,3,4]}}}`,
	`{"data":{"tftensor":{"dtype":"DT_INT64","tensor_shape":{"dim":[{"size":1},{"size":4}]},"int64Val":["1","2","3","-4"]}}}`,
	`{"data":{"tftensor":{"dtype":1,"tensorShape":{"dim":[{"size":"1"},{"size":"4"}]},"tensorContent":"AACAPwAAAEAAAEBAAACAQA=="}}}`,
	`{"strData":"x"}`,
	`[[1,2,3,4]]`,
	`{"data":{"ndarray":[[1,2,3,4]]`,
	"\x00\xff{",
	``,
}

var v2Seeds = []string{
	`{"id":"1","inputs":[{"name":"input-0","shape":[2,4],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}`,
	`{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP64","data":[[1,2,3,4],[5,6,7,8]]}],"parameters":{"content_type":"np"}}`,
	`{"inputs":[{"name":"x","shape":[1,4],"datatype":"INT32","data":[1,2.5,3,4]}]}`,
	`{"inputs":[{"name":"x","shape":[1,4],"datatype":"UINT8","data":[1,-2,3,4]}]}`,
	`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[[[1,2,3,4]]]}]}`,
	`{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4,5]}]}`,
	`{"inputs":[{"name":"x","shape":[-1,4],"datatype":"FP32","data":[]}]}`,
	`{"inputs":[{"name":"x","shape":[1e20,4],"datatype":"FP32","data":[]}]}`,
	`{"inputs":[{},{}]}`,
	`{"id":7}`,
	`{"inputs":`,
}

// checkDecoded is what every successful decode must satisfy, whatever the
// input: a positive row count, exactly rows*nf features, and the same
// float32 bits after the features are written back as JSON and decoded
// again (NaN for missing included).
func checkDecoded(t *testing.T, p *fastjson.Parser, x []float32, rows int) {
	t.Helper()
	if rows <= 0 || len(x) < rows*fuzzNF {
		t.Fatalf("decoded %d rows into %d features", rows, len(x))
	}
	x = x[:rows*fuzzNF]
	body := ndarray.AppendRequest(nil, x, rows, fuzzNF, ndarray.Null)
	y, rows2, _, err := decodeSeldon(p, body, fuzzNF, nil)
	if err != nil || rows2 != rows {
		t.Fatalf("re-decoding %s: rows %d, err %v", body, rows2, err)
	}
	for i := range x {
		a, b := x[i], y[i]
		if math.Float32bits(a) != math.Float32bits(b) && !(math.IsNaN(float64(a)) && math.IsNaN(float64(b))) &&
			!(math.IsInf(float64(a), 0) && math.IsNaN(float64(b))) { // Inf is written as null
			t.Fatalf("feature %d: %v became %v after a round trip", i, a, b)
		}
	}
}

// checkRejected: a decode error is always a 400 with a message.
func checkRejected(t *testing.T, err error) {
	t.Helper()
	var re *requestError
	if !errors.As(err, &re) || re.status != http.StatusBadRequest || re.msg == "" {
		t.Fatalf("decode error %#v is not a 400 with a message", err)
	}
}

func FuzzDecodeSeldon(f *testing.F) {
	for _, s := range seldonSeeds {
		f.Add([]byte(s))
	}
	var p fastjson.Parser // reused across inputs, as the pool reuses it
	var x []float32
	f.Fuzz(func(t *testing.T, body []byte) {
		var rows int
		var err error
		x, rows, _, err = decodeSeldon(&p, body, fuzzNF, x)
		if err != nil {
			checkRejected(t, err)
			return
		}
		checkDecoded(t, &p, x, rows)
	})
}

func FuzzDecodeV2(f *testing.F) {
	for _, s := range v2Seeds {
		f.Add([]byte(s))
	}
	var p fastjson.Parser
	var x []float32
	f.Fuzz(func(t *testing.T, body []byte) {
		var rows int
		var err error
		x, rows, _, err = decodeV2(&p, body, nil, fuzzNF, x)
		if err != nil {
			checkRejected(t, err)
			return
		}
		checkDecoded(t, &p, x, rows)
	})
}

type sumPredictor struct{}

func (sumPredictor) NumFeatures() int { return fuzzNF }
func (sumPredictor) NumOutputs() int  { return 3 }
func (sumPredictor) PredictBatch(x []float32, rows int, out []float32) error {
	for i := 0; i < rows; i++ {
		var s float32
		for _, v := range x[i*fuzzNF : (i+1)*fuzzNF] {
			s += v
		}
		out[i*3], out[i*3+1], out[i*3+2] = s, -s, 1
	}
	return nil
}

// FuzzHandler sends arbitrary bodies through the whole handler: the answer
// is always 200 or a 4xx, and always valid JSON.
func FuzzHandler(f *testing.F) {
	for _, s := range seldonSeeds {
		f.Add(false, []byte(s))
	}
	for _, s := range v2Seeds {
		f.Add(true, []byte(s))
	}
	s, err := New(Options{Predictor: sumPredictor{}, ModelName: "m", MaxBodyBytes: 1 << 16, Registry: prometheus.NewRegistry()})
	if err != nil {
		f.Fatal(err)
	}
	h := s.Handler()
	f.Fuzz(func(t *testing.T, v2 bool, body []byte) {
		path := "/api/v1.0/predictions"
		if v2 {
			path = "/v2/models/m/infer"
		}
		req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK && (rec.Code < 400 || rec.Code > 499) {
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body)
		}
		if !json.Valid(rec.Body.Bytes()) {
			t.Fatalf("answer is not JSON: %q", rec.Body)
		}
	})
}
