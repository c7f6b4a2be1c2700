package adapter

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
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
// keeps the rules that are serving.
type reloader struct {
	path  string
	load  func() (*rules.Set, error)
	apply func(context.Context, *rules.Set)

	watcher *fsnotify.Watcher
	hup     chan os.Signal
	last    []byte
}

func newReloader(path string, load func() (*rules.Set, error), apply func(context.Context, *rules.Set)) (*reloader, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watching %s for changes: %w", path, err)
	}
	dirs := []string{filepath.Dir(path)}
	if real, err := filepath.EvalSymlinks(path); err == nil && filepath.Dir(real) != dirs[0] {
		dirs = append(dirs, filepath.Dir(real))
	}
	for _, d := range dirs {
		if err := w.Add(d); err != nil {
			_ = w.Close()
			return nil, fmt.Errorf("watching %s for changes of %s: %w", d, path, err)
		}
	}
	r := &reloader{path: path, load: load, apply: apply, watcher: w, hup: make(chan os.Signal, 1)}
	r.last, _ = os.ReadFile(path)
	signal.Notify(r.hup, syscall.SIGHUP)
	klog.InfoS("Watching the rules file; it is reloaded when it changes and on SIGHUP", "path", path, "dirs", dirs)
	return r, nil
}

// run reloads until ctx is done.
func (r *reloader) run(ctx context.Context) {
	defer signal.Stop(r.hup)
	defer func() { _ = r.watcher.Close() }()
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.hup:
			klog.InfoS("SIGHUP: reloading the rules file", "path", r.path)
			r.reload(ctx, true)
		case ev, ok := <-r.watcher.Events:
			if !ok {
				return
			}
			klog.V(4).InfoS("Change in the rules file's directory", "event", ev.String())
			settle = time.After(reloadSettle)
		case err, ok := <-r.watcher.Errors:
			if !ok {
				return
			}
			klog.ErrorS(err, "Watching the rules file", "path", r.path)
		case <-settle:
			settle = nil
			r.reload(ctx, false)
		}
	}
}

// reload loads the file and applies it. Unless forced, an unchanged file
// is left alone.
func (r *reloader) reload(ctx context.Context, force bool) {
	content, err := os.ReadFile(r.path)
	if err == nil && !force && bytes.Equal(content, r.last) {
		return
	}
	r.last = content
	if err != nil {
		klog.ErrorS(err, "Rules file unreadable; the rules that were serving still are", "path", r.path)
		metrics.ObserveReload(false, time.Now())
		return
	}
	set, err := r.load()
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
