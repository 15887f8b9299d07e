package collector

import (
	"bytes"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
)

// FuzzDecodeExposition feeds hostile exposition text and protobuf to the
// scrape parsing path: it must return an error or sane observations, never
// panic, and never produce a NaN or infinite value the window would serve.
func FuzzDecodeExposition(f *testing.F) {
	f.Add([]byte("# TYPE mlscale_requests_total counter\nmlscale_requests_total{code=\"200\"} 12\n"), false)
	f.Add([]byte("# TYPE mlscale_batch_size histogram\nmlscale_batch_size_bucket{le=\"1\"} 2\nmlscale_batch_size_bucket{le=\"+Inf\"} 3\nmlscale_batch_size_sum 9\nmlscale_batch_size_count 3\n"), false)
	f.Add([]byte("# TYPE mlscale_batch_size histogram\nmlscale_batch_size_bucket{le=\"NaN\"} 2\nmlscale_batch_size_bucket{le=\"-Inf\"} -3\nmlscale_batch_size_sum NaN\nmlscale_batch_size_count +Inf\n"), false)
	f.Add([]byte("mlscale_inflight_requests NaN\nmlscale_inflight_requests{a=\"b\"} 1e308\nmlscale_inflight_requests{a=\"c\"} 1e308\n"), false)
	f.Add([]byte("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total -1\nprocess_cpu_seconds_total{x=\"\\\"\"} 2 123\n"), false)
	f.Add([]byte("mlscale_requests_total{code=\"200\",code=\"500\"} 1\n\x00\xff"), false)
	f.Add([]byte(strings.Repeat("a{b=\"", 1000)), false)
	f.Add([]byte{0x05, 0x0a, 0x03, 'a', 'b', 'c'}, true)
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0x0f}, true)

	m := newFakeModel(f)
	m.requests.WithLabelValues("iris", "seldon", "200").Add(3)
	m.batch.Observe(4)
	m.latency.Observe(0.02)
	for _, accept := range []string{acceptProtobuf, acceptText} {
		body, _ := getBody(m.srv.URL, accept)
		f.Add(body, accept == acceptProtobuf)
	}

	c, err := New(NewOptions(), DefaultRules(), nil)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte, proto bool) {
		format := expfmt.NewFormat(expfmt.TypeTextPlain)
		if proto {
			format = expfmt.NewFormat(expfmt.TypeProtoDelim)
		}
		out := make([]obs, len(c.ext.sources))
		if err := c.ext.decode(bytes.NewReader(data), format, out, nil); err != nil {
			return
		}
		for i, o := range out {
			if !o.present {
				continue
			}
			if !finite(o.value) || !finite(o.sum) {
				t.Fatalf("source %d: non-finite value %v sum %v", i, o.value, o.sum)
			}
			if c.ext.sources[i].histogram {
				if len(o.bounds) != len(o.counts) || !slices.IsSorted(o.bounds) || !math.IsInf(o.bounds[len(o.bounds)-1], 1) {
					t.Fatalf("source %d: bad buckets %v %v", i, o.bounds, o.counts)
				}
			}
		}
		// The window must cope with whatever was parsed, twice in a row.
		s := []sample{{t: t0, obs: out}, {t: t0.Add(time.Second), obs: out}}
		for _, name := range c.names {
			r := c.rules[name]
			if v, ok := value(&r.Rule, r.src, s, 3*time.Second, 0, time.Minute, t0.Add(time.Second)); ok && math.IsNaN(v.Value) {
				t.Fatalf("%s: NaN served", name)
			}
		}
	})
}
