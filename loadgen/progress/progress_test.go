package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestLines(t *testing.T) {
	var buf bytes.Buffer
	clock := time.Unix(0, 0)
	l := New(&buf, false, time.Second).(*Lines)
	l.now = func() time.Time { return clock }
	l.StartTask(0, 2, "up-500", 30)
	for i := range 30 {
		clock = clock.Add(100 * time.Millisecond) // 10 req/s
		l.Done(i%10 != 0)
	}
	l.EndTask()
	want := []string{
		"task 1/2 up-500: started",
		"task 1/2 up-500: 10/30 requests, 10.0 req/s, 1 errors",
		"task 1/2 up-500: 20/30 requests, 10.0 req/s, 2 errors",
		"task 1/2 up-500: 30/30 requests, 10.0 req/s, 3 errors",
		"task 1/2 up-500: 30/30 requests, 10.0 req/s, 3 errors",
	}
	if diff := cmp.Diff(want, strings.Split(strings.TrimSpace(buf.String()), "\n")); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

func TestBar(t *testing.T) {
	var buf bytes.Buffer
	b := New(&buf, true, time.Second)
	b.StartTask(1, 3, "peak", 5)
	for range 5 {
		b.Done(false)
	}
	b.EndTask()
	b.StartTask(2, 3, "soak", 0) // open-ended: a spinner
	b.Done(true)
	b.EndTask()
	out := buf.String()
	for _, w := range []string{"task 2/3 peak, 5 errors", "5/5", "task 3/3 soak"} {
		if !strings.Contains(out, w) {
			t.Errorf("bar output %q lacks %q", out, w)
		}
	}
}
