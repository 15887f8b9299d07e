package chart

import (
	"fmt"
	"image/color"
	"io"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// CapacityPoint is one step of a capacity ramp.
type CapacityPoint struct {
	// Offered and Achieved are requests/s; P99Ms the step's latency at the
	// SLO's quantile.
	Offered, Achieved, P99Ms float64
	Broken                   bool
}

// Capacity is what `loadgen tune` measured for one mix.
type Capacity struct {
	Title  string
	Points []CapacityPoint
	// Knee is the index of the knee in Points (-1: none); SLOMs the bound.
	Knee     int
	SLOMs    float64
	SLOLabel string
}

var kneeColor = color.NRGBA{R: 214, G: 39, B: 40, A: 255}

// WriteCapacityPNG draws two panels against offered load: achieved
// throughput (with the ideal "answered = offered" diagonal) above, latency
// with the SLO line below, the knee marked in both.
func WriteCapacityPNG(w io.Writer, c Capacity, width, height int) error {
	if width < 200 || height < 300 {
		return fmt.Errorf("chart size %dx%d: want at least 200x300 pixels", width, height)
	}
	if len(c.Points) == 0 {
		return fmt.Errorf("capacity chart %q: no steps", c.Title)
	}
	var xmax, tmax, lmax float64
	thr, lat, bad := plotter.XYs{}, plotter.XYs{}, plotter.XYs{}
	for _, p := range c.Points {
		xmax, tmax, lmax = math.Max(xmax, p.Offered), math.Max(tmax, p.Achieved), math.Max(lmax, p.P99Ms)
		thr = append(thr, plotter.XY{X: p.Offered, Y: p.Achieved})
		lat = append(lat, plotter.XY{X: p.Offered, Y: p.P99Ms})
		if p.Broken {
			bad = append(bad, plotter.XY{X: p.Offered, Y: p.P99Ms})
		}
	}
	xmax *= 1.05
	top := plot.New()
	top.Title.Text = c.Title
	top.Y.Label.Text = "answered requests/s"
	top.X.Min, top.X.Max = 0, xmax
	top.Y.Min, top.Y.Max = 0, math.Max(tmax, xmax)*1.05
	top.Add(plotter.NewGrid())
	top.Legend.Top, top.Legend.Left = true, true
	ideal, _ := plotter.NewLine(plotter.XYs{{X: 0, Y: 0}, {X: xmax, Y: xmax}})
	ideal.LineStyle = draw.LineStyle{Color: spanColor, Width: vg.Points(0.7), Dashes: []vg.Length{vg.Points(3), vg.Points(3)}}
	top.Add(ideal)
	top.Legend.Add("answered = offered", ideal)
	tl, tp, err := plotter.NewLinePoints(thr)
	if err != nil {
		return fmt.Errorf("capacity chart: %w", err)
	}
	tl.Color, tp.Color = replicaColor, replicaColor
	top.Add(tl, tp)
	top.Legend.Add("answered", tl, tp)

	bottom := plot.New()
	bottom.X.Label.Text = "offered requests/s"
	bottom.Y.Label.Text = c.SLOLabel + " latency (ms)"
	bottom.X.Min, bottom.X.Max = 0, xmax
	bottom.Y.Min, bottom.Y.Max = 0, math.Max(lmax, c.SLOMs)*1.1
	// A step far past the knee can be seconds: clip the axis at 4x the SLO
	// so the part that matters stays readable; the points beyond are drawn
	// at the top edge.
	if c.SLOMs > 0 && bottom.Y.Max > 4*c.SLOMs {
		bottom.Y.Max = 4 * c.SLOMs
		for i := range lat {
			lat[i].Y = math.Min(lat[i].Y, bottom.Y.Max)
		}
		for i := range bad {
			bad[i].Y = math.Min(bad[i].Y, bottom.Y.Max)
		}
		bottom.Title.Text = fmt.Sprintf("(latencies above %.0f ms drawn at the top)", bottom.Y.Max)
		bottom.Title.TextStyle.Font.Size = vg.Points(8)
	}
	bottom.Add(plotter.NewGrid())
	bottom.Legend.Top, bottom.Legend.Left = true, true
	ll, lp, err := plotter.NewLinePoints(lat)
	if err != nil {
		return fmt.Errorf("capacity chart: %w", err)
	}
	ll.Color, lp.Color = okColor, okColor
	bottom.Add(ll, lp)
	bottom.Legend.Add(c.SLOLabel, ll, lp)
	if len(bad) > 0 {
		bs, _ := plotter.NewScatter(bad)
		bs.GlyphStyle = draw.GlyphStyle{Color: failColor, Radius: vg.Points(4), Shape: draw.CrossGlyph{}}
		bottom.Add(bs)
		bottom.Legend.Add("SLO broken", bs)
	}
	if c.SLOMs > 0 {
		sl, _ := plotter.NewLine(plotter.XYs{{X: 0, Y: c.SLOMs}, {X: xmax, Y: c.SLOMs}})
		sl.LineStyle = draw.LineStyle{Color: failColor, Width: vg.Points(1), Dashes: []vg.Length{vg.Points(6), vg.Points(3)}}
		bottom.Add(sl)
		bottom.Legend.Add(fmt.Sprintf("SLO %.0f ms", c.SLOMs), sl)
	}
	if c.Knee >= 0 && c.Knee < len(c.Points) {
		k := c.Points[c.Knee]
		for _, p := range []*plot.Plot{top, bottom} {
			kl, _ := plotter.NewLine(plotter.XYs{{X: k.Offered, Y: 0}, {X: k.Offered, Y: p.Y.Max}})
			kl.LineStyle = draw.LineStyle{Color: kneeColor, Width: vg.Points(1.5)}
			p.Add(kl)
			if p == top {
				p.Legend.Add(fmt.Sprintf("knee: %.1f req/s", k.Offered), kl)
			}
		}
	}
	img := vgimg.NewWith(vgimg.UseWH(px(width), px(height)), vgimg.UseDPI(dpi), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Points(8), PadY: vg.Points(8), PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(12)}
	canvases := plot.Align([][]*plot.Plot{{top}, {bottom}}, tiles, dc)
	top.Draw(canvases[0][0])
	bottom.Draw(canvases[1][0])
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(w); err != nil {
		return fmt.Errorf("writing capacity chart: %w", err)
	}
	return nil
}
