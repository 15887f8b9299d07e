package collector

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"google.golang.org/protobuf/encoding/protowire"
)

// source is one series a pod's exposition is read for; rules that read the
// same family with the same label filter share it.
type source struct {
	series    string
	histogram bool
	labels    map[string]string
}

// obs is one source's value in one scrape. For a scalar source value is the
// sum over the matching series; for a histogram value is the count, sum the
// sum of observations, and counts the cumulative bucket counts for bounds
// (ascending, the last +Inf).
type obs struct {
	present bool
	value   float64
	sum     float64
	bounds  []float64
	counts  []float64
}

// sample is what one successful scrape of one pod contributed: a timestamp and
// one obs per source.
type sample struct {
	t   time.Time
	obs []obs
}

// extractor turns an exposition into one obs per source, skipping families no
// rule reads without keeping them.
type extractor struct {
	sources  []source
	byFamily map[string][]int
}

func newExtractor(sources []source) *extractor {
	e := &extractor{sources: sources, byFamily: make(map[string][]int)}
	for i, s := range sources {
		e.byFamily[s.series] = append(e.byFamily[s.series], i)
	}
	return e
}

// maxFamilies bounds how many families one exposition may carry, so a
// hostile or broken endpoint cannot make a scrape loop forever.
const maxFamilies = 100000

// decode reads an exposition in format (text, protobuf or OpenMetrics, as
// negotiated) into out, which must have len(e.sources) entries. prev, if not
// nil, is the pod's previous sample: bucket bounds equal to the previous
// ones are shared rather than allocated again.
func (e *extractor) decode(r io.Reader, format expfmt.Format, out []obs, prev []obs) error {
	if format.FormatType() == expfmt.TypeProtoDelim {
		// expfmt decodes delimited protobuf without a size limit: a length
		// prefix claiming 512 GB makes it allocate that much before reading a
		// byte (found by FuzzDecodeExposition). The body is already capped, so
		// read it and check every frame fits in what was actually sent.
		// The buffer is reused across scrapes: decoding copies what it keeps.
		buf := bodyBuffers.Get().(*bytes.Buffer)
		defer bodyBuffers.Put(buf)
		buf.Reset()
		if _, err := buf.ReadFrom(r); err != nil {
			return fmt.Errorf("reading exposition (%s): %w", format, err)
		}
		if err := checkDelimited(buf.Bytes()); err != nil {
			return fmt.Errorf("decoding exposition (%s): %w", format, err)
		}
		r = bytes.NewReader(buf.Bytes())
	}
	dec := expfmt.NewDecoder(r, format)
	for n := 0; ; n++ {
		if n >= maxFamilies {
			return fmt.Errorf("more than %d metric families", maxFamilies)
		}
		var mf dto.MetricFamily
		err := dec.Decode(&mf)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fmt.Errorf("decoding exposition (%s): %w", format, err)
		}
		name := mf.GetName()
		idx, ok := e.byFamily[name]
		if !ok && mf.GetType() == dto.MetricType_COUNTER {
			// OpenMetrics names a counter family without its _total suffix.
			idx, ok = e.byFamily[name+"_total"]
		}
		if !ok {
			continue
		}
		for _, i := range idx {
			e.add(&mf, i, &out[i])
		}
	}
	for i := range out {
		// Finite series can still add up to infinity; such a value means
		// nothing, so the source counts as absent in this scrape.
		if !finite(out[i].value) || !finite(out[i].sum) || slices.ContainsFunc(out[i].counts, func(c float64) bool { return !finite(c) }) {
			out[i] = obs{}
			continue
		}
		if prev != nil && i < len(prev) && slices.Equal(out[i].bounds, prev[i].bounds) {
			out[i].bounds = prev[i].bounds
		}
	}
	return nil
}

func matches(m *dto.Metric, want map[string]string) bool {
	if len(want) == 0 {
		return true
	}
	found := 0
	for _, lp := range m.GetLabel() {
		if v, ok := want[lp.GetName()]; ok {
			if v != lp.GetValue() {
				return false
			}
			found++
		}
	}
	return found == len(want)
}

func finite(v float64) bool { return !math.IsNaN(v) && !math.IsInf(v, 0) }

// add folds the family's matching series into o.
func (e *extractor) add(mf *dto.MetricFamily, i int, o *obs) {
	src := e.sources[i]
	for _, m := range mf.GetMetric() {
		if m == nil || !matches(m, src.labels) {
			continue
		}
		if src.histogram {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			count := float64(h.GetSampleCount())
			if h.SampleCountFloat != nil {
				count = h.GetSampleCountFloat()
			}
			if !finite(count) || !finite(h.GetSampleSum()) {
				continue
			}
			o.present = true
			o.value += count
			o.sum += h.GetSampleSum()
			for _, b := range h.GetBucket() {
				ub := b.GetUpperBound()
				c := float64(b.GetCumulativeCount())
				if b.CumulativeCountFloat != nil {
					c = b.GetCumulativeCountFloat()
				}
				// +Inf is taken from the count below: the text format
				// lists it, protobuf leaves it implicit.
				if math.IsNaN(ub) || math.IsInf(ub, 1) || !finite(c) {
					continue
				}
				addBucket(o, ub, c)
			}
			addBucket(o, math.Inf(1), count)
			continue
		}
		var v float64
		switch {
		case m.GetCounter() != nil:
			v = m.GetCounter().GetValue()
		case m.GetGauge() != nil:
			v = m.GetGauge().GetValue()
		case m.GetUntyped() != nil:
			v = m.GetUntyped().GetValue()
		default:
			continue
		}
		if !finite(v) {
			continue
		}
		o.present = true
		o.value += v
	}
}

// addBucket adds count c to the cumulative bucket with upper bound ub,
// keeping bounds sorted; series of one family with the same bounds (the
// normal case) find their bucket without inserting.
func addBucket(o *obs, ub, c float64) {
	i, found := slices.BinarySearch(o.bounds, ub)
	if found {
		o.counts[i] += c
		return
	}
	o.bounds = slices.Insert(o.bounds, i, ub)
	o.counts = slices.Insert(o.counts, i, c)
}

// bodyBuffers holds protobuf expositions while their frames are checked.
var bodyBuffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// checkDelimited verifies that buf is a sequence of varint-length-prefixed
// messages each of which lies wholly inside buf.
func checkDelimited(buf []byte) error {
	for off := 0; off < len(buf); {
		n, w := protowire.ConsumeVarint(buf[off:])
		if w < 0 {
			return fmt.Errorf("bad length prefix at byte %d: %w", off, protowire.ParseError(w))
		}
		off += w
		if n > uint64(len(buf)-off) {
			return fmt.Errorf("message at byte %d claims %d bytes, %d remain", off, n, len(buf)-off)
		}
		off += int(n)
	}
	return nil
}
