package adapter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"k8s.io/klog/v2"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/metrics"
	"github.com/custom-metrics-adapter/custom-metrics-adapter/pkg/rules"
)

// reloadSettle is how long the reloader waits after a change for the
// writes that follow it (a ConfigMap update swaps a symlink and removes
// the old directory; editors write in steps).
const reloadSettle = 300 * time.Millisecond

// reloader reloads the rules file when it changes and on SIGHUP.
//
// It watches the file's directory, not the file: a ConfigMap volume
// replaces the file by swapping the ..data symlink, which a watch on the
// file itself misses. A change that leaves the content as it was is
// ignored; SIGHUP always reloads. A file that fails to load or compile
// keeps the rules that are serving. The bytes compared are the bytes
// compiled, so a change is never mistaken for the content already served.
type reloader struct {
	path    string
	compile func([]byte) (*rules.Set, error)
	apply   func(context.Context, *rules.Set)

	// watcher is nil when the directory cannot be watched (inotify limits
	// reached): then only SIGHUP reloads.
	watcher *fsnotify.Watcher
	hup     <-chan os.Signal
	last    []byte
}

// newReloader returns a reloader for path, whose content served now is
// current. hup delivers SIGHUP. A directory that cannot be watched is
// logged, not fatal: the adapter serves on and SIGHUP still reloads.
func newReloader(path string, current []byte, compile func([]byte) (*rules.Set, error), apply func(context.Context, *rules.Set), hup <-chan os.Signal) *reloader {
	r := &reloader{path: path, compile: compile, apply: apply, hup: hup, last: current}
	dirs := []string{filepath.Dir(path)}
	if real, err := filepath.EvalSymlinks(path); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	w, err := fsnotify.NewWatcher()
	if err == nil {
		for _, d := range dirs {
			if err = w.Add(d); err != nil {
				err = fmt.Errorf("%s: %w", d, err)
				_ = w.Close()
				break
			}
		}
	}
	if err != nil {
		klog.ErrorS(err, "Cannot watch the rules file for changes; it is reloaded on SIGHUP only", "path", path)
		return r
	}
	r.watcher = w
	klog.InfoS("Watching the rules file; it is reloaded when it changes and on SIGHUP", "path", path, "dirs", dirs)
	return r
}

// reloadMaxWait bounds how long a stream of changes can put a reload off.
const reloadMaxWait = 5 * time.Second

// run reloads until ctx is done.
func (r *reloader) run(ctx context.Context) {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if r.watcher != nil {
		defer func() { _ = r.watcher.Close() }()
		events, errs = r.watcher.Events, r.watcher.Errors
	}
	// A change made before the watch began (while the adapter started)
	// has no event of its own.
	r.reload(ctx, false)
	var settle <-chan time.Time
	var firstChange time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			klog.InfoS("SIGHUP: reloading the rules file", "path", r.path)
			r.reload(ctx, true)
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			klog.V(4).InfoS("Change in the rules file's directory", "event", ev.String())
			if settle == nil {
				firstChange = time.Now()
			}
			wait := reloadSettle
			if rest := reloadMaxWait - time.Since(firstChange); rest < wait {
				wait = max(rest, 0)
			}
			settle = time.After(wait)
		case err, ok := <-errs:
			if !ok {
				errs = nil
				continue
			}
			klog.ErrorS(err, "Watching the rules file", "path", r.path)
		case <-settle:
			settle = nil
			r.reload(ctx, false)
		}
	}
}

// reload reads, compiles and applies the file. Unless forced, content
// equal to what was last read is left alone.
func (r *reloader) reload(ctx context.Context, force bool) {
	content, err := os.ReadFile(r.path)
	if err == nil && !force && bytes.Equal(content, r.last) {
		return
	}
	if err != nil {
		klog.ErrorS(err, "Rules file unreadable; the rules that were serving still are", "path", r.path)
		metrics.ObserveReload(false, time.Now())
		return
	}
	r.last = content
	set, err := r.compile(content)
	if err != nil {
		klog.ErrorS(err, "Rules file rejected; the rules that were serving still are", "path", r.path)
		metrics.ObserveReload(false, time.Now())
		return
	}
	start := time.Now()
	r.apply(ctx, set)
	metrics.ObserveReload(true, time.Now())
	klog.InfoS("Reloaded the rules file", "path", r.path, "rules", len(set.Custom), "externalRules", len(set.External),
		"resourceRules", set.Resource != nil, "discovery", time.Since(start).Round(time.Millisecond))
}

// ignoreHUP logs SIGHUPs when no rules file is watched, so that they do
// not end the process.
func ignoreHUP(ctx context.Context, hup <-chan os.Signal) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
			klog.InfoS("SIGHUP ignored: no rules file is watched (--config is empty or --watch-config=false)")
		}
	}
}
