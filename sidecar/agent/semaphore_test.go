package agent_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/leasehold/leasehold/sidecar/lock"
)

// A semaphore report=2 declared by three agents (three Pods): two hold at once, the
// third waits and gets the first freed slot; tokens grow per slot; release and renew
// name a hold by its token; the slot Leases are stamped with their semaphore.
func TestSemaphoreLetsNHoldersIn(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "sem-a", "--semaphores=report=2")
	b := startAgent(t, "sem-b", "--semaphores=report=2")
	c := startAgent(t, "sem-c", "--semaphores=report=2")

	sa, err := a.c.Acquire(ctx, "report", 0, 0)
	if err != nil || !sa.Held || sa.Token < 1 || sa.Slot == "" || sa.Mode != lock.ModeSemaphore || sa.Size != 2 {
		t.Fatalf("A try: want held on a slot with a token, got %+v, %v", sa, err)
	}
	sb, err := b.c.Acquire(ctx, "report", 0, 0)
	if err != nil || !sb.Held || sb.Slot == sa.Slot {
		t.Fatalf("B try: want held on the other slot than A's %s, got %+v, %v", sa.Slot, sb, err)
	}
	if _, err := c.c.Acquire(ctx, "report", 0, 0); status(err) != http.StatusConflict {
		t.Fatalf("C try while both slots are held: want 409, got %v", err)
	}
	if _, err := c.c.Acquire(ctx, "report", 300*time.Millisecond, 0); status(err) != http.StatusRequestTimeout {
		t.Fatalf("C wait 300ms while both slots are held: want 408, got %v", err)
	}
	// A second client of A's Pod also gets 409: the semaphore counts Pods' holds, and
	// both slots are taken.
	if _, err := a.c.Acquire(ctx, "report", 0, 0); status(err) != http.StatusConflict {
		t.Fatalf("A's second client: want 409, got %v", err)
	}

	// The holds last across renewals.
	time.Sleep(2 * leaseDuration)
	for _, x := range []struct {
		p *agentProc
		s lock.State
	}{{a, sa}, {b, sb}} {
		if s := x.p.state("report"); !s.Held || s.Slot != x.s.Slot || s.Token != x.s.Token {
			t.Fatalf("%s after 2 lease durations: want still holding %s token %d, got %+v", x.p.pod, x.s.Slot, x.s.Token, s)
		}
	}
	st := c.state("report")
	if st.Held || len(st.Slots) != 2 {
		t.Fatalf("C's view: want not held with 2 slots, got %+v", st)
	}
	holders := map[string]bool{}
	for _, s := range st.Slots {
		holders[s.Holder] = true
	}
	if !holders[a.identity()] || !holders[b.identity()] {
		t.Fatalf("C's view of the slots: want holders %s and %s, got %+v", a.identity(), b.identity(), st.Slots)
	}
	for _, slot := range []string{lock.SlotName("report", 1), lock.SlotName("report", 2)} {
		lease, err := kube.CoordinationV1().Leases("default").Get(ctx, slot, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if lease.Annotations[lock.AnnotationMode] != "semaphore" || lease.Annotations[lock.AnnotationSemaphore] != "report" ||
			lease.Labels[lock.LabelManagedBy] != lock.ManagedBy {
			t.Fatalf("slot Lease %s not stamped as report's slot: %+v", slot, lease.ObjectMeta)
		}
	}

	// Renew and release go by token; a wrong token changes nothing.
	if _, err := a.c.Renew(ctx, "report", sa.Token, time.Minute); err != nil {
		t.Fatalf("A renew: %v", err)
	}
	if _, err := a.c.Release(ctx, "report", sa.Token+100); status(err) != http.StatusConflict {
		t.Fatalf("A release with a wrong token: want 409, got %v", err)
	}
	var wg sync.WaitGroup
	var sc lock.State
	var cerr error
	wg.Go(func() { sc, cerr = c.c.Acquire(ctx, "report", 10*time.Second, 0) })
	time.Sleep(100 * time.Millisecond)
	start := time.Now()
	if _, err := a.c.Release(ctx, "report", sa.Token); err != nil {
		t.Fatalf("A release: %v", err)
	}
	wg.Wait()
	if cerr != nil || !sc.Held || sc.Slot != sa.Slot || sc.Token <= sa.Token {
		t.Fatalf("C after A's release: want %s with a token > %d, got %+v, %v", sa.Slot, sa.Token, sc, cerr)
	}
	t.Logf("A's released slot was taken by C's waiter %s after the release call began", time.Since(start).Round(time.Millisecond))
	if s := b.state("report"); !s.Held || s.Slot != sb.Slot {
		t.Fatalf("B kept its slot through the handover: got %+v", s)
	}
	if _, err := a.c.Release(ctx, "report", sa.Token); status(err) != http.StatusConflict {
		t.Fatalf("A release again: want 409 stale token, got %v", err)
	}
}

// One Pod may hold several slots (one per local client) and releases each by its own
// token; a killed holder's slot is free after lease-duration.
func TestSemaphoreSlotsOfOnePodAndAKilledHolder(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	a := startAgent(t, "sem-one-a", "--semaphores=batch=2")
	b := startAgent(t, "sem-one-b", "--semaphores=batch=2")
	s1, err := a.c.Acquire(ctx, "batch", 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	s2, err := a.c.Acquire(ctx, "batch", 0, 0)
	if err != nil || s2.Slot == s1.Slot || s2.Token == s1.Token || s1.Token%lock.SlotTokenBase == 0 {
		t.Fatalf("A's second client: want the other slot with another token than %+v, got %+v, %v", s1, s2, err)
	}
	if _, err := a.c.Release(ctx, "batch", s2.Token); err != nil {
		t.Fatalf("release of the second hold: %v", err)
	}
	if s := a.state("batch"); !s.Held || s.Slot != s1.Slot {
		t.Fatalf("A still holds its first slot: got %+v", s)
	}
	a.signal(9)
	<-a.exited
	start := time.Now()
	got, err := b.c.Acquire(ctx, "batch", 10*time.Second, 0)
	if err != nil {
		t.Fatalf("B waits for a slot: %v", err)
	}
	// B gets the free slot at once; the killed holder's slot only after lease-duration.
	got2, err := b.c.Acquire(ctx, "batch", 10*time.Second, 0)
	if err != nil || got2.Slot != s1.Slot || got.Slot == got2.Slot {
		t.Fatalf("B's second client: want the killed holder's slot %s, got %+v, %v", s1.Slot, got2, err)
	}
	if d := time.Since(start); d < leaseDuration-500*time.Millisecond {
		t.Fatalf("the killed holder's slot was taken %s after the kill, before lease-duration %s", d, leaseDuration)
	}
}
