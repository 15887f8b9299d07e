package chart

import (
	"bytes"
	"image/png"
	"testing"
)

func TestWriteCurvesPNG(t *testing.T) {
	curves := []Curve{
		{Name: "a", Steps: []Step{{T: -10, Replicas: 1}, {T: 12, Replicas: 4}, {T: 60, Replicas: 4}}},
		{Name: "b", Steps: []Step{{T: -10, Replicas: 1}, {T: 45, Replicas: 2}, {T: 60, Replicas: 2}}},
		{Name: "empty"},
	}
	var buf bytes.Buffer
	if err := WriteCurvesPNG(&buf, "step", "seconds since the step", curves, 640, 360); err != nil {
		t.Fatal(err)
	}
	img, err := png.Decode(&buf)
	if err != nil {
		t.Fatalf("not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() != 640 || b.Dy() != 360 {
		t.Errorf("size %dx%d, want 640x360", b.Dx(), b.Dy())
	}
	for _, bad := range []struct {
		curves []Curve
		w, h   int
	}{{curves, 100, 100}, {nil, 640, 360}} {
		if err := WriteCurvesPNG(&bytes.Buffer{}, "x", "t", bad.curves, bad.w, bad.h); err == nil {
			t.Errorf("%d curves at %dx%d: no error", len(bad.curves), bad.w, bad.h)
		}
	}
}
