package lock

import (
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	coordinationv1 "k8s.io/api/coordination/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/leasehold/leasehold/internal/contract"
)

// A Lease created with leaseDurationSeconds 2^31-1 (where no admission policy refused
// it: a namespace that did not opt in) is waited out for contract.MaxLeaseDuration at
// most, not 68 years; the cap is logged. The agent's takeover removes the squatter's
// ownerReferences and finalizers, so that nobody can have the garbage collector delete
// the Lease it now holds.
func TestSquattedLeaseDurationIsCapped(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	clk := clocktesting.NewFakeClock(now)
	squatter, dur, tr := "squatter", int32(math.MaxInt32), int32(4)
	renewed := metav1.NewMicroTime(now)
	c := &memClient{rv: 7, lease: &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: "db", Namespace: "ns", ResourceVersion: "7",
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "ConfigMap", Name: "mine", UID: "0f8e2a4c-1111-4a4a-9c9c-123456789abc"}},
			Finalizers:      []string{"example.com/keep"}},
		Spec: coordinationv1.LeaseSpec{HolderIdentity: &squatter, LeaseDurationSeconds: &dur, LeaseTransitions: &tr,
			RenewTime: &renewed, AcquireTime: &renewed},
	}}
	var mu sync.Mutex
	var logs []string
	log := funcr.New(func(prefix, args string) { mu.Lock(); logs = append(logs, args); mu.Unlock() }, funcr.Options{})
	l, err := New(Config{
		Namespace: "ns", Name: "db", Identity: "pod_uid", Mode: ModeMutex,
		LeaseDuration: 15 * time.Second, RenewDeadline: 10 * time.Second, RetryPeriod: 2 * time.Second,
		Client: c, Clock: clk, Log: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { l.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	if !pollUntil(time.Millisecond, 5*time.Second, l.Synced) {
		t.Fatal("lock never synced")
	}

	_, _, err = l.Acquire(context.Background(), AcquireOptions{})
	var held *HeldError
	if !errors.As(err, &held) || held.Holder != squatter || held.ValidFor != contract.MaxLeaseDuration {
		t.Fatalf("try on a Lease with leaseDurationSeconds 2^31-1: want held by %s for %s (contract.MaxLeaseDuration), got %v",
			squatter, contract.MaxLeaseDuration, err)
	}
	clk.Step(contract.MaxLeaseDuration - time.Second)
	if _, _, err := l.Acquire(context.Background(), AcquireOptions{}); !errors.As(err, &held) || held.ValidFor != time.Second {
		t.Fatalf("1s before contract.MaxLeaseDuration ran out: want held for 1s, got %v", err)
	}
	clk.Step(time.Second)
	_, s, err := l.Acquire(context.Background(), AcquireOptions{})
	if err != nil || s.Token != 5 || s.Holder != "pod_uid" {
		t.Fatalf("contract.MaxLeaseDuration after the squatter's last write: want acquired with token 5, got %+v %v", s, err)
	}
	c.mu.Lock()
	owners, finalizers := c.lease.OwnerReferences, c.lease.Finalizers
	c.mu.Unlock()
	if len(owners) != 0 || len(finalizers) != 0 {
		t.Errorf("the agent's takeover kept ownerReferences %v and finalizers %v; want none", owners, finalizers)
	}

	mu.Lock()
	defer mu.Unlock()
	capped := 0
	for _, line := range logs {
		if strings.Contains(line, "Capped the lease duration") && strings.Contains(line, `"leaseDurationSeconds"=2147483647`) {
			capped++
		}
	}
	if capped != 1 {
		t.Errorf("want the capped leaseDurationSeconds logged once, got %d times in:\n%s", capped, strings.Join(logs, "\n"))
	}
}
