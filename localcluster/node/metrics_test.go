package node

import (
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/procfs"

	"github.com/mlscale/mlscale/internal/testenv"
)

// A pod's CPU is its whole process tree's: here the work is done by a
// grandchild of the container's main process.
func TestTreeUsageCountsDescendants(t *testing.T) {
	cmd := exec.Command("sh", "-c", `sh -c 'i=0; while [ $i -lt 300000 ]; do i=$((i+1)); done; sleep 30' & sleep 30`)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		testenv.RequireOrSkip(t, "no sh: "+err.Error())
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	})
	fs, err := procfs.NewDefaultFS()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var u Usage
	for time.Now().Before(deadline) {
		usage, err := TreeUsage(fs, []int{cmd.Process.Pid})
		if err != nil {
			t.Fatal(err)
		}
		u = usage[cmd.Process.Pid]
		if u.CPUSeconds >= 0.1 {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if u.CPUSeconds < 0.1 {
		t.Errorf("tree CPU %.3fs: the busy grandchild is not counted", u.CPUSeconds)
	}
	if u.WorkingSetBytes < 100<<10 {
		t.Errorf("tree working set %.0f bytes, want the shells' resident memory", u.WorkingSetBytes)
	}
	own, _ := TreeUsage(fs, []int{1 << 30})
	if len(own) != 0 {
		t.Errorf("a pid that does not exist has usage %v", own)
	}
}
