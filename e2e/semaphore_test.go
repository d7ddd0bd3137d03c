//go:build e2e

package e2e

import (
	"context"
	"regexp"
	"sort"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/leasehold/leasehold/sidecar/lock"
)

var slotLine = regexp.MustCompile(`(?m) on slot=report\.[12]$`)

// Three Pods share leasehold.io/semaphores: report=2 and loop over `leasehold run
// report`: never more than two are inside at once, two often are, and each slot's
// tokens rise.
func TestSemaphoreOnRealPods(t *testing.T) {
	ns := newNamespace(t, true)
	const script = `while true; do
  leasehold run --wait=60s report -- sh -c 'echo "enter token=$LEASEHOLD_TOKEN pod=$HOSTNAME"; echo "on slot=$LEASEHOLD_SLOT"; sleep 1; echo "exit token=$LEASEHOLD_TOKEN pod=$HOSTNAME"'
done`
	pods := []string{"report-a", "report-b", "report-c"}
	for _, name := range pods {
		createPod(t, ns, appPod(name, map[string]string{"leasehold.io/semaphores": "report=2"}, script))
	}
	var all []interval
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		all = all[:0]
		for _, p := range pods {
			raw, err := cs.CoreV1().Pods(ns).GetLogs(p, &corev1.PodLogOptions{Container: "app", Timestamps: true}).DoRaw(ctx)
			if err != nil {
				return false, nil
			}
			all = append(all, sections(t, string(raw))...)
		}
		return len(all) >= 15, nil
	})
	if err != nil {
		for _, p := range pods {
			t.Logf("%s:\n%s", p, describe(ns, p))
		}
		t.Fatalf("want 15 critical sections within 120s, got %d", len(all))
	}

	// At most two inside at once (a line is stamped when the runtime reads it, up to
	// stampSkew late), and two at once for most of the run.
	type edge struct {
		at    time.Time
		delta int
	}
	var edges []edge
	for _, s := range all {
		edges = append(edges, edge{s.enter, +1}, edge{s.exit.Add(-stampSkew), -1})
	}
	sort.Slice(edges, func(i, j int) bool {
		if edges[i].at.Equal(edges[j].at) {
			return edges[i].delta < edges[j].delta
		}
		return edges[i].at.Before(edges[j].at)
	})
	inside, most := 0, 0
	var two time.Duration
	for i, e := range edges {
		inside += e.delta
		most = max(most, inside)
		if inside > 2 {
			t.Errorf("%d holders inside at %s, semaphore report=2", inside, e.at.Format(time.StampMicro))
		}
		if inside == 2 && i+1 < len(edges) {
			two += edges[i+1].at.Sub(e.at)
		}
	}
	if most < 2 {
		t.Errorf("never two holders at once in %d sections: the semaphore let in one at a time", len(all))
	}
	t.Logf("%d sections from %d Pods; two inside for %s in total", len(all), len(pods), two.Round(time.Millisecond))

	// Tokens rise per slot (token % 100 is the slot).
	bySlot := map[int64][]interval{}
	for _, s := range all {
		bySlot[s.token%lock.SlotTokenBase] = append(bySlot[s.token%lock.SlotTokenBase], s)
	}
	for slot, ss := range bySlot {
		if slot < 1 || slot > 2 {
			t.Errorf("token %d names slot %d of a semaphore of 2", ss[0].token, slot)
		}
		sort.Slice(ss, func(i, j int) bool { return ss[i].enter.Before(ss[j].enter) })
		for i := 1; i < len(ss); i++ {
			if ss[i].token <= ss[i-1].token {
				t.Errorf("slot %d: token %d then %d", slot, ss[i-1].token, ss[i].token)
			}
			if ss[i].enter.Before(ss[i-1].exit.Add(-stampSkew)) {
				t.Errorf("slot %d: holders with tokens %d and %d overlap", slot, ss[i-1].token, ss[i].token)
			}
		}
	}
	// leasehold run names the slot to the command.
	if log := logs(t, ns, pods[0], "app"); !slotLine.MatchString(log) {
		t.Errorf("no LEASEHOLD_SLOT=report.1 or report.2 in %s's log:\n%s", pods[0], log)
	}
	// The slot Leases are there, stamped with their semaphore.
	for i := 1; i <= 2; i++ {
		l, err := cs.CoordinationV1().Leases(ns).Get(context.Background(), lock.SlotName("report", i), metav1.GetOptions{})
		if err != nil || l.Annotations[lock.AnnotationSemaphore] != "report" {
			t.Errorf("slot Lease %s: %v %v", lock.SlotName("report", i), err, l)
		}
	}
}
