// Package chart draws the seed's picture of a load run: the latency of every
// request over time, with the replica count as a step line on a right-hand
// axis and the task boundaries marked, so scaling can be read against load.
package chart

import (
	"fmt"
	"image/color"
	"io"
	"math"
	"sort"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Point is one request: T seconds after the run began, its latency.
type Point struct {
	T, LatencyMs float64
	Failed       bool
}

// Step is one replica sample.
type Step struct {
	T        float64
	Replicas float64
}

// Span is one task.
type Span struct {
	Name       string
	Start, End float64
}

// Data is what the chart shows.
type Data struct {
	Title    string
	Requests []Point
	// Replicas is the scaled object's replica count (scale status);
	// Desired the HPA's desired count, when known.
	// A Desired step of NaN is an HPA that has not decided (before its
	// first sync, or while it cannot read its metrics): a gap, never 0.
	Replicas, Desired []Step
	Tasks             []Span
	// SLOMs, when set, is drawn as a horizontal line with the p99 of each
	// P99Window of requests, so time over the SLO can be seen.
	SLOMs     float64
	P99Window float64
}

const dpi = 96

var (
	okColor      = color.NRGBA{R: 31, G: 119, B: 180, A: 140}
	failColor    = color.NRGBA{R: 214, G: 39, B: 40, A: 220}
	replicaColor = color.NRGBA{R: 44, G: 160, B: 44, A: 255}
	desireColor  = color.NRGBA{R: 255, G: 127, B: 14, A: 255}
	spanColor    = color.NRGBA{R: 120, G: 120, B: 120, A: 255}
)

// WritePNG draws the chart as a width×height pixel PNG.
func WritePNG(w io.Writer, d Data, width, height int) error {
	if width < 200 || height < 150 {
		return fmt.Errorf("chart size %dx%d: want at least 200x150 pixels", width, height)
	}
	p := plot.New()
	p.Title.Text = d.Title
	p.X.Label.Text = "seconds since start"
	p.Y.Label.Text = "latency (ms)"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.XOffs = vg.Points(10)
	p.Legend.YOffs = -vg.Points(28) // below the task labels

	var xmax, ymax float64
	for _, r := range d.Requests {
		xmax = math.Max(xmax, r.T+r.LatencyMs/1e3)
		ymax = math.Max(ymax, r.LatencyMs)
	}
	var rmax float64
	for _, s := range append(append([]Step(nil), d.Replicas...), d.Desired...) {
		xmax = math.Max(xmax, s.T)
		if !math.IsNaN(s.Replicas) {
			rmax = math.Max(rmax, s.Replicas)
		}
	}
	for _, s := range d.Tasks {
		xmax = math.Max(xmax, s.End)
	}
	if xmax == 0 {
		xmax = 1
	}
	if ymax == 0 {
		ymax = 1
	}
	p.X.Min, p.X.Max = 0, xmax
	p.Y.Min, p.Y.Max = 0, ymax*1.12 // headroom for the task labels

	ok, failed := plotter.XYs{}, plotter.XYs{}
	for _, r := range d.Requests {
		if r.Failed {
			failed = append(failed, plotter.XY{X: r.T, Y: r.LatencyMs})
		} else {
			ok = append(ok, plotter.XY{X: r.T, Y: r.LatencyMs})
		}
	}
	for _, pts := range []struct {
		xy    plotter.XYs
		color color.Color
		shape draw.GlyphDrawer
		name  string
	}{{ok, okColor, draw.CircleGlyph{}, "request latency"}, {failed, failColor, draw.CrossGlyph{}, "failed request"}} {
		if len(pts.xy) == 0 {
			continue
		}
		sc, err := plotter.NewScatter(pts.xy)
		if err != nil {
			return fmt.Errorf("plotting latencies: %w", err)
		}
		sc.GlyphStyle = draw.GlyphStyle{Color: pts.color, Radius: vg.Points(1.2), Shape: pts.shape}
		p.Add(sc)
		p.Legend.Add(pts.name, sc)
	}

	// The p99 of each window of requests (by intended start) and the SLO.
	if d.SLOMs > 0 {
		win := d.P99Window
		if win <= 0 {
			win = 5
		}
		if p99 := WindowP99(d.Requests, win); len(p99) > 0 {
			// Hold the last window's value to its end.
			last := p99[len(p99)-1]
			p99 = append(p99, plotter.XY{X: math.Min(last.X+win, xmax), Y: last.Y})
			l, err := plotter.NewLine(p99)
			if err != nil {
				return fmt.Errorf("plotting p99: %w", err)
			}
			l.StepStyle = plotter.PostStep
			l.LineStyle = draw.LineStyle{Color: color.Black, Width: vg.Points(1.2)}
			p.Add(l)
			p.Legend.Add(fmt.Sprintf("p99 per %gs", win), l)
		}
		sl, err := plotter.NewLine(plotter.XYs{{X: 0, Y: d.SLOMs}, {X: xmax, Y: d.SLOMs}})
		if err != nil {
			return err
		}
		sl.LineStyle = draw.LineStyle{Color: failColor, Width: vg.Points(1.2), Dashes: []vg.Length{vg.Points(8), vg.Points(4)}}
		p.Add(sl)
		p.Legend.Add(fmt.Sprintf("SLO %.0f ms", d.SLOMs), sl)
		if p.Y.Max < d.SLOMs*1.2 {
			p.Y.Max = d.SLOMs * 1.2
		}
	}

	// Task boundaries: a dashed line at each start, the name above.
	var labels plotter.XYLabels
	for _, s := range d.Tasks {
		l, err := plotter.NewLine(plotter.XYs{{X: s.Start, Y: 0}, {X: s.Start, Y: p.Y.Max}})
		if err != nil {
			return fmt.Errorf("plotting task %s: %w", s.Name, err)
		}
		l.LineStyle = draw.LineStyle{Color: spanColor, Width: vg.Points(0.7), Dashes: []vg.Length{vg.Points(3), vg.Points(3)}}
		p.Add(l)
		labels.XYs = append(labels.XYs, plotter.XY{X: s.Start, Y: ymax * 1.06})
		labels.Labels = append(labels.Labels, " "+s.Name)
	}
	if len(labels.Labels) > 0 {
		lb, err := plotter.NewLabels(labels)
		if err != nil {
			return fmt.Errorf("plotting task labels: %w", err)
		}
		for i := range lb.TextStyle {
			lb.TextStyle[i].Font.Size = vg.Points(8)
			lb.TextStyle[i].Color = spanColor
		}
		p.Add(lb)
	}

	// The replica axis: integer ticks from 0 with headroom.
	rtop := math.Max(1, math.Ceil(rmax*1.15))
	if rmax >= rtop {
		rtop = rmax + 1
	}
	// The HPA's desired count first, thin and dashed, so the replicas that
	// exist, drawn last and thick, stay visible where the two agree.
	for _, st := range []struct {
		steps []Step
		style draw.LineStyle
		name  string
	}{
		{d.Desired, draw.LineStyle{Color: desireColor, Width: vg.Points(1.2), Dashes: []vg.Length{vg.Points(4), vg.Points(3)}}, "HPA desired"},
		{d.Replicas, draw.LineStyle{Color: replicaColor, Width: vg.Points(3)}, "replicas"},
	} {
		if len(st.steps) == 0 {
			continue
		}
		rl := &rightLine{steps: st.steps, top: rtop, style: st.style}
		p.Add(rl)
		p.Legend.Add(st.name+" (right axis)", rl)
	}

	img := vgimg.NewWith(vgimg.UseWH(px(width), px(height)), vgimg.UseDPI(dpi), vgimg.UseBackgroundColor(color.White))
	c := draw.New(img)
	right := vg.Points(48)
	main := draw.Crop(c, 0, -right, 0, 0)
	p.Draw(main)
	if len(d.Replicas)+len(d.Desired) > 0 {
		drawRightAxis(c, p.DataCanvas(main), rtop, "replicas")
	}

	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("writing chart PNG: %w", err)
	}
	return nil
}

// WindowP99 is the p99 latency of the requests starting in each window of
// win seconds, as (window start, p99) points; empty windows are left out.
func WindowP99(reqs []Point, win float64) plotter.XYs {
	buckets := map[int][]float64{}
	for _, r := range reqs {
		b := int(r.T / win)
		buckets[b] = append(buckets[b], r.LatencyMs)
	}
	keys := make([]int, 0, len(buckets))
	for k := range buckets {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	out := make(plotter.XYs, 0, len(keys))
	for _, k := range keys {
		v := buckets[k]
		sort.Float64s(v)
		i := int(math.Ceil(0.99*float64(len(v)))) - 1
		out = append(out, plotter.XY{X: float64(k) * win, Y: v[max(0, i)]})
	}
	return out
}

func px(n int) vg.Length { return vg.Length(n) * vg.Inch / dpi }

// rightLine draws a step line in its own vertical scale (0..top), shown by
// the right-hand axis, sharing the plot's time axis.
type rightLine struct {
	steps []Step
	top   float64
	style draw.LineStyle
}

func (r *rightLine) Plot(c draw.Canvas, p *plot.Plot) {
	x, _ := p.Transforms(&c)
	y := func(v float64) vg.Length { return c.Min.Y + vg.Length(v/r.top)*(c.Max.Y-c.Min.Y) }
	// Runs of known values, each held until the next sample; a NaN
	// (unknown) ends a run and leaves a gap.
	var runs [][]vg.Point
	var pts []vg.Point
	flush := func() {
		if len(pts) == 1 {
			pts = append(pts, vg.Point{X: pts[0].X + vg.Points(2), Y: pts[0].Y})
		}
		if len(pts) > 0 {
			runs = append(runs, pts)
		}
		pts = nil
	}
	for i, s := range r.steps {
		if math.IsNaN(s.Replicas) {
			if len(pts) > 0 { // hold the last value until this sample
				pts = append(pts, vg.Point{X: x(s.T), Y: pts[len(pts)-1].Y})
			}
			flush()
			continue
		}
		if len(pts) > 0 && i > 0 {
			pts = append(pts, vg.Point{X: x(s.T), Y: y(r.steps[i-1].Replicas)})
		}
		pts = append(pts, vg.Point{X: x(s.T), Y: y(s.Replicas)})
	}
	flush()
	for _, run := range runs {
		c.StrokeLines(r.style, c.ClipLinesXY(run)...)
	}
}

// Thumbnail draws the legend entry.
func (r *rightLine) Thumbnail(c *draw.Canvas) {
	y := c.Center().Y
	c.StrokeLine2(r.style, c.Min.X, y, c.Max.X, y)
}

func drawRightAxis(c draw.Canvas, da draw.Canvas, top float64, label string) {
	ls := draw.LineStyle{Color: color.Black, Width: vg.Points(0.5)}
	x0 := da.Max.X + vg.Points(5)
	c.StrokeLine2(ls, x0, da.Min.Y, x0, da.Max.Y)
	ts := plot.New().Y.Tick.Label
	step := math.Max(1, math.Ceil(top/8))
	for v := 0.0; v <= top; v += step {
		y := da.Min.Y + vg.Length(v/top)*(da.Max.Y-da.Min.Y)
		c.StrokeLine2(ls, x0, y, x0+vg.Points(4), y)
		ts.XAlign, ts.YAlign = draw.XLeft, draw.YCenter
		c.FillText(ts, vg.Point{X: x0 + vg.Points(6), Y: y}, fmt.Sprintf("%g", v))
	}
	lt := plot.New().Y.Label.TextStyle
	lt.Rotation = -math.Pi / 2
	lt.XAlign, lt.YAlign = draw.XCenter, draw.YTop
	c.FillText(lt, vg.Point{X: c.Max.X - vg.Points(2), Y: (da.Min.Y + da.Max.Y) / 2}, label)
}
