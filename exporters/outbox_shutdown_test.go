package exporters

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sabakiio/sabaki/metric"
)

// TestOutboxRunAfterShutdownBegan: Shutdown called before Run got going
// sends the queue itself; a Run starting meanwhile must not start a second
// sending loop, which would send the window in flight a second time (seen as
// every minute posted twice in TestMackerelEndToEnd under load).
func TestOutboxRunAfterShutdownBegan(t *testing.T) {
	env := newOutboxEnv(t)
	var mu sync.Mutex
	sends := map[time.Time]int{}
	inExport := make(chan struct{}, 1)
	release := make(chan struct{})
	exp := exporterFunc{name: "t", export: func(ctx context.Context, w *metric.Window) error {
		mu.Lock()
		sends[w.Start]++
		first := len(sends) == 1 && sends[w.Start] == 1
		mu.Unlock()
		if first {
			inExport <- struct{}{}
			<-release
		}
		return nil
	}}
	o := env.open(exp, nil)
	for i := range 3 {
		mustEnqueue(t, o, testWindow(t0.Add(time.Duration(i)*time.Minute), 1))
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		shut <- o.Shutdown(ctx)
	}()
	<-inExport // Shutdown's own loop is sending the first window
	ran := make(chan error, 1)
	go func() { ran <- o.Run(context.Background()) }()
	select {
	case err := <-ran:
		if err == nil {
			t.Error("Run after Shutdown began returned nil, want an error")
		}
	case <-time.After(200 * time.Millisecond):
		// Run is sending too: let both finish, the counts below fail.
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for start, n := range sends {
		if n != 1 {
			t.Errorf("window %s sent %d times, want once", fmtTime(start), n)
		}
	}
	if len(sends) != 3 {
		t.Errorf("%d windows sent, want 3", len(sends))
	}
}
