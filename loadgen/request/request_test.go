package request

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestEndpoint(t *testing.T) {
	tests := []struct {
		name    string
		target  Target
		want    string
		wantErr string
	}{
		{"direct", Target{URL: "http://127.0.0.1:9000/api/v1.0/predictions"}, "http://127.0.0.1:9000/api/v1.0/predictions", ""},
		{"seed gateway", Target{URL: "http://10.0.0.1", Namespace: "model", Deployment: "iris-model-autoscale", Protocol: Seldon},
			"http://10.0.0.1/seldon/model/iris-model-autoscale/api/v1.0/predictions", ""},
		{"gateway with base path and v2", Target{URL: "http://gw:8080/x/", Namespace: "m", Deployment: "d", Protocol: V2, Model: "iris"},
			"http://gw:8080/x/seldon/m/d/v2/models/iris/infer", ""},
		{"v2 without model", Target{URL: "http://gw", Namespace: "m", Deployment: "d", Protocol: V2}, "", "needs a model name"},
		{"half a gateway", Target{URL: "http://gw", Namespace: "m"}, "", "both namespace and deployment"},
		{"no scheme", Target{URL: "ftp://127.0.0.1:9000"}, "", "want http(s)://"},
		{"empty", Target{}, "", "no target URL"},
		{"bad protocol", Target{URL: "http://gw", Namespace: "m", Deployment: "d", Protocol: "grpc"}, "", "unknown protocol"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.target.Endpoint()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got %s, want %s", got, tc.want)
			}
		})
	}
}

func TestEncode(t *testing.T) {
	x := []float64{1, 2, 3, 4, 4, 3, 2.5, 1}
	seldon := Encode(Seldon, x, 2, 4)
	var s struct {
		Data struct {
			Ndarray [][]float64 `json:"ndarray"`
		} `json:"data"`
	}
	if err := json.Unmarshal(seldon, &s); err != nil {
		t.Fatalf("seldon body %s: %v", seldon, err)
	}
	if diff := cmp.Diff([][]float64{{1, 2, 3, 4}, {4, 3, 2.5, 1}}, s.Data.Ndarray); diff != "" {
		t.Errorf("seldon (-want +got):\n%s", diff)
	}
	v2 := Encode(V2, x, 2, 4)
	var v struct {
		Inputs []struct {
			Name     string    `json:"name"`
			Shape    []int     `json:"shape"`
			Datatype string    `json:"datatype"`
			Data     []float64 `json:"data"`
		} `json:"inputs"`
	}
	if err := json.Unmarshal(v2, &v); err != nil {
		t.Fatalf("v2 body %s: %v", v2, err)
	}
	if len(v.Inputs) != 1 || !cmp.Equal(v.Inputs[0].Shape, []int{2, 4}) || v.Inputs[0].Datatype != "FP32" || !cmp.Equal(v.Inputs[0].Data, x) {
		t.Errorf("v2 body %s", v2)
	}
}

// The bodies are the bytes the load client has always sent, a rows CSV's
// NaN and infinities included (written as strconv writes them, which the
// model server reads as those values).
func TestEncodeBytes(t *testing.T) {
	x := []float64{1, 0.25, -1e-7, math.NaN(), math.Inf(1), math.Inf(-1), math.MaxFloat64, 5e-324, math.Copysign(0, -1), 123456789, 0.1, 1e21}
	for _, tc := range []struct {
		p    Protocol
		want string
	}{
		{Seldon, `{"data":{"ndarray":[[1,0.25,-1e-07],[NaN,+Inf,-Inf],[1.7976931348623157e+308,5e-324,-0],[1.23456789e+08,0.1,1e+21]]}}`},
		{V2, `{"inputs":[{"name":"input-0","shape":[4,3],"datatype":"FP32","data":[1,0.25,-1e-07,NaN,+Inf,-Inf,1.7976931348623157e+308,5e-324,-0,1.23456789e+08,0.1,1e+21]}]}`},
	} {
		if got := Encode(tc.p, x, 4, 3); string(got) != tc.want {
			t.Errorf("%s body\ngot  %s\nwant %s", tc.p, got, tc.want)
		}
	}
}

func TestRandomRepeatsAndStaysInRange(t *testing.T) {
	a, b := make([]float64, 4000), make([]float64, 4000)
	NewRandom(42, 3, 4, 1, 4).Fill(a, 1000)
	NewRandom(42, 3, 4, 1, 4).Fill(b, 1000)
	if !cmp.Equal(a, b) {
		t.Fatal("same seed gave different rows")
	}
	seen := map[float64]int{}
	for _, v := range a {
		seen[v]++
	}
	if len(seen) != 4 || seen[1] == 0 || seen[4] == 0 || seen[0] != 0 || seen[5] != 0 {
		t.Errorf("value counts %v, want every value of 1..4 and nothing else", seen)
	}
	NewRandom(42, 4, 4, 1, 4).Fill(b, 1000)
	if cmp.Equal(a, b) {
		t.Error("different streams gave the same rows")
	}
}

func TestReadCSV(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "rows.csv")
	if err := os.WriteFile(p, []byte("a,b,c\n1,2,3\n4,5,6\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tab, err := ReadCSV(p)
	if err != nil {
		t.Fatal(err)
	}
	x := make([]float64, 9)
	tab.Fill(x, 3)
	if diff := cmp.Diff([]float64{1, 2, 3, 4, 5, 6, 1, 2, 3}, x); diff != "" {
		t.Errorf("rows cycle (-want +got):\n%s", diff)
	}
	tab.Fill(x[:3], 1)
	if x[0] != 4 {
		t.Errorf("next fill starts at %v, want the row after the last one used (4)", x[:3])
	}
	for name, body := range map[string]string{"ragged": "1,2\n3\n", "text": "1,2\nx,y\n", "empty": "h\n"} {
		if _, err := parseCSV(strings.NewReader(body)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestBodiesPool(t *testing.T) {
	bodies := Bodies(NewRandom(1, 1, 4, 1, 4), Seldon, 10, 5, PoolBytes)
	if len(bodies) != 5 {
		t.Fatalf("%d bodies, want 5", len(bodies))
	}
	if !strings.HasPrefix(string(bodies[0]), `{"data":{"ndarray":[[`) || string(bodies[0]) == string(bodies[1]) {
		t.Errorf("bodies %q and %q: want distinct seldon bodies", bodies[0], bodies[1])
	}
	// A 10-row body is about 100 bytes: a 250-byte budget holds two.
	if n := len(Bodies(NewRandom(1, 1, 4, 1, 4), Seldon, 10, 5, 250)); n != 2 {
		t.Errorf("%d bodies within 250 bytes, want 2", n)
	}
	if n := len(Bodies(NewRandom(1, 1, 4, 1, 4), Seldon, 10, 5, 1)); n != 1 {
		t.Errorf("%d bodies within 1 byte, want at least one", n)
	}
}

func FuzzParseCSV(f *testing.F) {
	f.Add("a,b\n1,2\n3,4\n")
	f.Add("1,2,3\n")
	f.Add("\"1\",2\n3,\"x\n")
	f.Fuzz(func(t *testing.T, s string) {
		tab, err := parseCSV(strings.NewReader(s))
		if err != nil {
			return
		}
		if tab.Features() <= 0 || len(tab.data)%tab.Features() != 0 {
			t.Fatalf("table of %d values with %d features", len(tab.data), tab.Features())
		}
		x := make([]float64, 3*tab.Features())
		tab.Fill(x, 3)
	})
}
