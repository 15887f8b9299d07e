// Package progress tells the person at the terminal how a run is going: a
// progress bar (tasks done, current rate, errors) on a terminal, plain log
// lines otherwise so CI logs and files stay readable.
package progress

import (
	"fmt"
	"io"
	"time"

	"github.com/schollz/progressbar/v3"
)

// Reporter receives a run's progress; calls come from one goroutine.
type Reporter interface {
	// StartTask begins task index (0-based) of count; scheduled is the
	// planned request count, 0 if unknown.
	StartTask(index, count int, name string, scheduled int64)
	// Done counts one finished request.
	Done(ok bool)
	// EndTask closes the current task.
	EndTask()
}

// New returns a bar when terminal is true, else a Lines reporter printing
// every interval.
func New(w io.Writer, terminal bool, interval time.Duration) Reporter {
	if terminal {
		return &Bar{w: w}
	}
	return &Lines{w: w, every: interval, now: time.Now}
}

// Bar draws a progressbar/v3 bar per task.
type Bar struct {
	w            io.Writer
	bar          *progressbar.ProgressBar
	label        string
	errs         int64
	errsShown    int64
	lastDescribe time.Time
}

func (b *Bar) StartTask(index, count int, name string, scheduled int64) {
	b.label = fmt.Sprintf("task %d/%d %s", index+1, count, name)
	b.errs, b.errsShown = 0, 0
	max := scheduled
	if max <= 0 {
		max = -1 // spinner: the task ends on time, not on count
	}
	b.bar = progressbar.NewOptions64(max,
		progressbar.OptionSetWriter(b.w),
		progressbar.OptionSetDescription(b.label),
		progressbar.OptionShowCount(),
		progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("req"),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetWidth(30),
		progressbar.OptionOnCompletion(func() { fmt.Fprintln(b.w) }),
	)
}

func (b *Bar) Done(ok bool) {
	if b.bar == nil {
		return
	}
	if !ok {
		b.errs++
		// Re-describing costs a render; do it at most a few times a second.
		if now := time.Now(); now.Sub(b.lastDescribe) > 200*time.Millisecond {
			b.lastDescribe = now
			b.errsShown = b.errs
			b.bar.Describe(fmt.Sprintf("%s, %d errors", b.label, b.errs))
		}
	}
	_ = b.bar.Add(1)
}

func (b *Bar) EndTask() {
	if b.bar == nil {
		return
	}
	if b.errs != b.errsShown {
		b.bar.Describe(fmt.Sprintf("%s, %d errors", b.label, b.errs))
	}
	_ = b.bar.Finish()
	if b.bar.GetMax64() < 0 {
		fmt.Fprintln(b.w)
	}
	b.bar = nil
}

// Lines prints a status line at most every interval and one per task end.
type Lines struct {
	w           io.Writer
	every       time.Duration
	now         func() time.Time
	label       string
	scheduled   int64
	done, errs  int64
	start, last time.Time
	doneAtLast  int64
}

func (l *Lines) StartTask(index, count int, name string, scheduled int64) {
	l.label = fmt.Sprintf("task %d/%d %s", index+1, count, name)
	l.scheduled, l.done, l.errs, l.doneAtLast = scheduled, 0, 0, 0
	l.start = l.now()
	l.last = l.start
	fmt.Fprintf(l.w, "%s: started\n", l.label)
}

func (l *Lines) Done(ok bool) {
	l.done++
	if !ok {
		l.errs++
	}
	if now := l.now(); now.Sub(l.last) >= l.every {
		rate := float64(l.done-l.doneAtLast) / now.Sub(l.last).Seconds()
		l.print(rate)
		l.last, l.doneAtLast = now, l.done
	}
}

func (l *Lines) EndTask() {
	rate := float64(l.done) / max(l.now().Sub(l.start).Seconds(), 1e-9)
	l.print(rate)
}

func (l *Lines) print(rate float64) {
	of := ""
	if l.scheduled > 0 {
		of = fmt.Sprintf("/%d", l.scheduled)
	}
	fmt.Fprintf(l.w, "%s: %d%s requests, %.1f req/s, %d errors\n", l.label, l.done, of, rate, l.errs)
}
