package chart

import (
	"bytes"
	"image/png"
	"testing"
)

func TestWriteCapacityPNG(t *testing.T) {
	c := Capacity{Title: "one pod, 500 rows per request", SLOMs: 500, SLOLabel: "p99", Knee: 2, Points: []CapacityPoint{
		{Offered: 100, Achieved: 100, P99Ms: 20}, {Offered: 150, Achieved: 149, P99Ms: 30},
		{Offered: 200, Achieved: 198, P99Ms: 90}, {Offered: 250, Achieved: 210, P99Ms: 900, Broken: true},
		{Offered: 300, Achieved: 205, P99Ms: 9000, Broken: true},
	}}
	var b bytes.Buffer
	if err := WriteCapacityPNG(&b, c, 800, 600); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if got := img.Bounds().Size(); got.X != 800 || got.Y != 600 {
		t.Errorf("size %v, want 800x600", got)
	}
	if err := WriteCapacityPNG(&b, Capacity{}, 800, 600); err == nil {
		t.Error("no points: no error")
	}
	if err := WriteCapacityPNG(&b, c, 100, 100); err == nil {
		t.Error("100x100: no error")
	}
}
