package chart

import (
	"bytes"
	"image/png"
	"math"
	"testing"
)

func seedLike() Data {
	var d Data
	t := 0.0
	for i, size := range []float64{500, 1000, 5000, 10000, 5000, 1000, 500} {
		s := Span{Name: "task", Start: t}
		for j := 0; j < 50; j++ {
			lat := size / 20 * (1 + 0.3*math.Sin(float64(j)))
			d.Requests = append(d.Requests, Point{T: t, LatencyMs: lat, Failed: j == 7 && i == 3})
			t += lat / 1e3 / 4
		}
		s.End = t
		d.Tasks = append(d.Tasks, s)
	}
	for x := 0.0; x < t+30; x += 1 {
		r := 1.0
		if x > t/3 {
			r = 4
		}
		d.Replicas = append(d.Replicas, Step{T: x, Replicas: r})
		d.Desired = append(d.Desired, Step{T: x, Replicas: r + 1})
	}
	d.Title = "seed"
	return d
}

func TestWritePNG(t *testing.T) {
	tests := []struct {
		name string
		data Data
		w, h int
	}{
		{"seed-like run", seedLike(), 1200, 600},
		{"no replica samples", Data{Requests: []Point{{T: 0.1, LatencyMs: 3}}, Tasks: []Span{{Name: "a", End: 1}}}, 800, 400},
		{"nothing recorded (cancelled at once)", Data{}, 640, 480},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			if err := WritePNG(&buf, tc.data, tc.w, tc.h); err != nil {
				t.Fatal(err)
			}
			img, err := png.Decode(&buf)
			if err != nil {
				t.Fatalf("not a PNG: %v", err)
			}
			if b := img.Bounds(); b.Dx() != tc.w || b.Dy() != tc.h {
				t.Errorf("size %dx%d, want %dx%d", b.Dx(), b.Dy(), tc.w, tc.h)
			}
			// Something was drawn: more than a blank canvas.
			colors := map[uint32]bool{}
			b := img.Bounds()
			for y := b.Min.Y; y < b.Max.Y; y += 3 {
				for x := b.Min.X; x < b.Max.X; x += 3 {
					r, g, bl, _ := img.At(x, y).RGBA()
					colors[r>>8<<16|g>>8<<8|bl>>8] = true
				}
			}
			if len(colors) < 5 {
				t.Errorf("only %d colours: chart looks empty", len(colors))
			}
		})
	}
	if err := WritePNG(&bytes.Buffer{}, Data{}, 10, 10); err == nil {
		t.Error("tiny chart: no error")
	}
}

// Unknown desired counts (NaN) are gaps, the SLO and the windowed p99 are
// drawn; WindowP99 takes the 99th percentile of each window.
func TestWritePNGUnknownDesiredAndSLO(t *testing.T) {
	d := seedLike()
	for i := range d.Desired[:5] {
		d.Desired[i].Replicas = math.NaN()
	}
	d.SLOMs = 500
	var b bytes.Buffer
	if err := WritePNG(&b, d, 800, 400); err != nil {
		t.Fatal(err)
	}
	if _, err := png.Decode(&b); err != nil {
		t.Fatal(err)
	}
	var reqs []Point
	for i := 0; i < 100; i++ {
		reqs = append(reqs, Point{T: 0.01 * float64(i), LatencyMs: float64(i + 1)})
	}
	reqs = append(reqs, Point{T: 7, LatencyMs: 3})
	got := WindowP99(reqs, 5)
	if len(got) != 2 || got[0].Y != 99 || got[1].X != 5 || got[1].Y != 3 {
		t.Errorf("WindowP99 = %v, want [(0, 99) (5, 3)]", got)
	}
}
