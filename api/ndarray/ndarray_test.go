package ndarray

import (
	"encoding/json"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	nan  = math.NaN()
	inf  = math.Inf(1)
	negZ = math.Copysign(0, -1)
)

// The expected bodies are the bytes the model server's answer writer and
// the load client wrote before they shared this package.
func TestAppend(t *testing.T) {
	x32 := []float32{1, 0.25, -1e-7, float32(nan), float32(inf), float32(-inf), 3.4028235e38, 1e-45, float32(negZ), 123456789, 0.1, 16777216}
	x64 := []float64{1, 0.25, -1e-7, nan, inf, -inf, math.MaxFloat64, 5e-324, negZ, 123456789, 0.1, 1e21}
	tests := []struct {
		name string
		got  []byte
		want string
	}{
		{"float32 rows, null: the server's answer", AppendRows(nil, x32, 4, 3, Null),
			`[[1,0.25,-1e-07],[null,null,null],[3.4028235e+38,1e-45,-0],[1.2345679e+08,0.1,1.6777216e+07]]`},
		{"float32 flat, null: the server's tensor values", AppendFlat(nil, x32, Null),
			`[1,0.25,-1e-07,null,null,null,3.4028235e+38,1e-45,-0,1.2345679e+08,0.1,1.6777216e+07]`},
		{"float64 request, bare: the load client's body", AppendRequest(nil, x64, 4, 3, Bare),
			`{"data":{"ndarray":[[1,0.25,-1e-07],[NaN,+Inf,-Inf],[1.7976931348623157e+308,5e-324,-0],[1.23456789e+08,0.1,1e+21]]}}`},
		{"float64 flat, bare: the load client's v2 data", AppendFlat(nil, x64, Bare),
			`[1,0.25,-1e-07,NaN,+Inf,-Inf,1.7976931348623157e+308,5e-324,-0,1.23456789e+08,0.1,1e+21]`},
		{"float64 rows, null", AppendRows(nil, x64[3:6], 1, 3, Null), `[[null,null,null]]`},
		{"float32 request, bare", AppendRequest(nil, x32[3:6], 3, 1, Bare), `{"data":{"ndarray":[[NaN],[+Inf],[-Inf]]}}`},
		{"only the first rows*cols values", AppendRows(nil, x64, 2, 2, Null), `[[1,0.25],[-1e-07,null]]`},
		{"one column", AppendRows(nil, []float32{2, 3}, 2, 1, Null), `[[2],[3]]`},
		{"no rows", AppendRows(nil, x32, 0, 3, Null), `[]`},
		{"empty flat", AppendFlat[float64](nil, nil, Null), `[]`},
		{"appends to what is there", AppendRows([]byte(`{"ndarray":`), []float64{4}, 1, 1, Null), `{"ndarray":[[4]]`},
		{"number float32 shortest", AppendNumber(nil, float32(0.1), Null), `0.1`},
		{"number float64 shortest", AppendNumber(nil, float64(float32(0.1)), Null), `0.10000000149011612`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if string(tc.got) != tc.want {
				t.Errorf("got  %s\nwant %s", tc.got, tc.want)
			}
		})
	}
}

// With Null the output is JSON that reads back as the same values, the
// non-finite ones as null.
func TestNullIsJSON(t *testing.T) {
	x := []float32{1.5, float32(nan), -2, float32(inf), 7e-10, 3}
	var got struct {
		Data struct {
			NDArray [][]*float32 `json:"ndarray"`
		} `json:"data"`
	}
	b := AppendRequest(nil, x, 3, 2, Null)
	if err := json.Unmarshal(b, &got); err != nil {
		t.Fatalf("%s is not JSON: %v", b, err)
	}
	p := func(f float32) *float32 { return &f }
	want := [][]*float32{{p(1.5), nil}, {p(-2), nil}, {p(7e-10), p(3)}}
	if diff := cmp.Diff(want, got.Data.NDArray); diff != "" {
		t.Errorf("read back (-want +got):\n%s", diff)
	}
}

// The model server writes every answer with AppendRows into a reused
// buffer: that must not allocate.
func TestAppendRowsReusedBufferDoesNotAllocate(t *testing.T) {
	x := make([]float32, 300)
	for i := range x {
		x[i] = float32(i) / 7
	}
	buf := AppendRows(nil, x, 100, 3, Null)
	if n := testing.AllocsPerRun(100, func() { buf = AppendRows(buf[:0], x, 100, 3, Null) }); n != 0 {
		t.Errorf("AppendRows into a reused buffer: %v allocations, want 0", n)
	}
}

func BenchmarkAppendRows(b *testing.B) {
	const rows = 10000
	x := make([]float32, rows*3)
	for i := range x {
		x[i] = float32(i%97) / 13
	}
	var buf []byte
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendRows(buf[:0], x, rows, 3, Null)
	}
	b.ReportMetric(float64(rows)*float64(b.N)/b.Elapsed().Seconds(), "rows/s")
}
