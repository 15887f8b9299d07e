package chart

import (
	"fmt"
	"image/color"
	"io"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Curve is one configuration's replica count over time (a step line).
type Curve struct {
	Name  string
	Steps []Step
}

var curveColors = []color.Color{
	color.NRGBA{R: 44, G: 160, B: 44, A: 255},
	color.NRGBA{R: 214, G: 39, B: 40, A: 255},
	color.NRGBA{R: 31, G: 119, B: 180, A: 255},
	color.NRGBA{R: 148, G: 103, B: 189, A: 255},
	color.NRGBA{R: 255, G: 127, B: 14, A: 255},
}

// WriteCurvesPNG draws several replica curves against seconds since a load
// step (marked at 0), one colour and legend entry each: `make
// bench-scaling`'s comparison of autoscaling configurations.
func WriteCurvesPNG(w io.Writer, title, xLabel string, curves []Curve, width, height int) error {
	if width < 200 || height < 150 {
		return fmt.Errorf("chart size %dx%d: want at least 200x150 pixels", width, height)
	}
	if len(curves) == 0 {
		return fmt.Errorf("chart %q: no curves", title)
	}
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = xLabel
	p.Y.Label.Text = "replicas"
	p.Legend.Top = true
	p.Legend.Left = true
	p.Add(plotter.NewGrid())
	maxY := 1.0
	for i, c := range curves {
		if len(c.Steps) == 0 {
			continue
		}
		xys := make(plotter.XYs, len(c.Steps))
		for j, s := range c.Steps {
			xys[j] = plotter.XY{X: s.T, Y: s.Replicas}
			maxY = max(maxY, s.Replicas)
		}
		l, err := plotter.NewLine(xys)
		if err != nil {
			return fmt.Errorf("chart %q: curve %s: %w", title, c.Name, err)
		}
		l.StepStyle = plotter.PreStep
		l.Color = curveColors[i%len(curveColors)]
		l.Width = vg.Points(2)
		l.Dashes = [][]vg.Length{nil, {vg.Points(6), vg.Points(3)}, {vg.Points(2), vg.Points(2)}, {vg.Points(8), vg.Points(2), vg.Points(2), vg.Points(2)}}[i%4]
		p.Add(l)
		p.Legend.Add(c.Name, l)
	}
	step := plotter.XYs{{X: 0, Y: 0}, {X: 0, Y: maxY + 1}}
	sl, err := plotter.NewLine(step)
	if err != nil {
		return err
	}
	sl.Color = spanColor
	sl.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
	p.Add(sl)
	p.Y.Min, p.Y.Max = 0, maxY+1
	c := vgimg.NewWith(vgimg.UseWH(px(width), px(height)), vgimg.UseDPI(dpi))
	p.Draw(draw.New(c))
	if _, err := (vgimg.PngCanvas{Canvas: c}).WriteTo(w); err != nil {
		return fmt.Errorf("writing chart %q: %w", title, err)
	}
	return nil
}
