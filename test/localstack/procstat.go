package localstack

import "github.com/prometheus/procfs"

// CPUSeconds is the user and system CPU time a process has used so far
// (utime + stime of /proc/PID/stat), 0 when it cannot be read.
func CPUSeconds(pid int) float64 {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0
	}
	st, err := p.Stat()
	if err != nil {
		return 0
	}
	return st.CPUTime()
}

// Memory is a process' resident memory now (VmRSS of /proc/PID/status) and
// its anonymous part (RssAnon), in bytes; zeros when it cannot be read.
func Memory(pid int) (rss, anon int64) {
	p, err := procfs.NewProc(pid)
	if err != nil {
		return 0, 0
	}
	st, err := p.NewStatus()
	if err != nil {
		return 0, 0
	}
	return int64(st.VmRSS), int64(st.RssAnon)
}
