package kubeapi

import (
	"testing"

	"github.com/go-logr/logr"
)

// A lock changing hands many times spends the Normal Events' rate limit; the Warning
// for a lost lock is still queued.
func TestWarningsAreNotRateLimitedWithTheChatter(t *testing.T) {
	r := (&Client{}).NewEventRecorder("p", "u", "leasehold-agent", logr.Discard())
	for range EventBurst + 5 {
		r.Record(PodEvent{Type: "Normal", Reason: "LockAcquired"})
	}
	r.Record(PodEvent{Type: "Warning", Reason: "LockLost"})
	var normal, warning int
	for len(r.queue) > 0 {
		switch ev := <-r.queue; ev.Type {
		case "Normal":
			normal++
		case "Warning":
			warning++
		}
	}
	if warning != 1 {
		t.Fatalf("the LockLost Warning was dropped behind %d Normal Events", normal)
	}
	if normal != EventBurst {
		t.Fatalf("want the burst of %d Normal Events and no more, got %d", EventBurst, normal)
	}
}
