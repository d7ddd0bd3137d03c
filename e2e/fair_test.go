//go:build e2e

package e2e

import (
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"
)

// Three Pods loop over `leasehold run` on one mutex, asking again the moment they
// release: the waiters queue across Pods, so the lock goes round (A B C A B C ...):
// no Pod holds it twice while another waits, and the sections never overlap.
func TestMutexGoesRoundOnRealPods(t *testing.T) {
	ns := newNamespace(t, true)
	const script = `while true; do
  leasehold run --wait=60s turns -- sh -c 'echo "enter token=$LEASEHOLD_TOKEN pod=$HOSTNAME"; sleep 0.3; echo "exit token=$LEASEHOLD_TOKEN pod=$HOSTNAME"'
done`
	pods := []string{"turns-a", "turns-b", "turns-c"}
	for _, name := range pods {
		createPod(t, ns, appPod(name, map[string]string{"leasehold.io/locks": "turns"}, script))
	}
	var all []interval
	err := wait.PollUntilContextTimeout(context.Background(), time.Second, 120*time.Second, true, func(ctx context.Context) (bool, error) {
		all = all[:0]
		running := 0
		for _, p := range pods {
			raw, err := cs.CoreV1().Pods(ns).GetLogs(p, &corev1.PodLogOptions{Container: "app", Timestamps: true}).DoRaw(ctx)
			if err != nil {
				return false, nil
			}
			s := sections(t, string(raw))
			if len(s) > 0 {
				running++
			}
			all = append(all, s...)
		}
		// Counted once all three take turns: before that the lock goes round fewer Pods.
		return running == len(pods) && len(all) >= 24, nil
	})
	if err != nil {
		for _, p := range pods {
			t.Logf("%s:\n%s", p, describe(ns, p))
		}
		t.Fatalf("want 24 critical sections from all three Pods within 120s, got %d", len(all))
	}
	checkExclusive(t, all)
	sort.Slice(all, func(i, j int) bool { return all[i].token < all[j].token })
	// From the first section after every Pod has had one, each window of three
	// consecutive holds has three different Pods.
	start, seen := 0, map[string]bool{}
	for i, s := range all {
		seen[s.pod] = true
		if len(seen) == len(pods) {
			start = i + 1
			break
		}
	}
	var order []string
	for _, s := range all[start:] {
		order = append(order, s.pod[len(s.pod)-1:])
	}
	for i := start + 2; i < len(all); i++ {
		if w := all[i-2 : i+1]; w[0].pod == w[1].pod || w[1].pod == w[2].pod || w[0].pod == w[2].pod {
			t.Errorf("tokens %d, %d, %d went to %s, %s, %s: a Pod held the lock again while another waited",
				w[0].token, w[1].token, w[2].token, w[0].pod, w[1].pod, w[2].pod)
		}
	}
	t.Logf("%d sections; holders in token order after the start: %s", len(all), strings.Join(order, ""))
}
