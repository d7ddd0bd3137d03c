package client_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/leasehold/leasehold/sidecar/client"
)

// The examples run against a real agent (TestMain in main_test.go): a leasehold-agent
// process with locks db-migration and nightly-report and leader lock scheduler, on a
// real kube-apiserver and etcd, its socket in $LEASEHOLD_SOCKET as in a Pod.

// Run a critical section under a lock, the way `leasehold run` does: the hold is tied
// to the connection, so it ends when Close is called or the process dies.
func Example() {
	ctx := context.Background()
	c := client.FromEnv() // $LEASEHOLD_SOCKET, set by the webhook in every container

	h, err := c.HoldConnection(ctx, "db-migration", time.Minute, 0)
	if err != nil {
		fmt.Println("not acquired:", err)
		return
	}
	defer h.Close()
	fmt.Println("held:", h.State.Held, "token:", h.State.Token)
	// ... migrate, passing h.State.Token to the database as a fence ...

	// Output: held: true token: 1
}

// Acquire with a ttl, then release with the fencing token. A second release with the
// same token is stale: it changes nothing and gets 409 StaleToken.
func ExampleClient_Acquire() {
	ctx := context.Background()
	c := client.FromEnv()

	s, err := c.Acquire(ctx, "nightly-report", 30*time.Second, 10*time.Minute)
	if err != nil {
		fmt.Println("not acquired:", err)
		return
	}
	fmt.Println("held:", s.Held, "token:", s.Token)

	after, err := c.Release(ctx, "nightly-report", s.Token)
	fmt.Println("released:", err == nil && !after.Held)

	_, err = c.Release(ctx, "nightly-report", s.Token)
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println("again:", e.Status, e.Reason)
	}
	// Output:
	// held: true token: 1
	// released: true
	// again: 409 StaleToken
}

// Am I the leader? A leader lock (leasehold.io/leader) is held by the agent while the
// Pod lives; Acquire waits until this Pod leads, State says whether it does now.
func ExampleClient_State() {
	ctx := context.Background()
	c := client.FromEnv()

	if _, err := c.Acquire(ctx, "scheduler", 30*time.Second, 0); err != nil {
		fmt.Println("not the leader:", err)
		return
	}
	s, err := c.State(ctx, "scheduler")
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("mode:", s.Mode, "leader:", s.Held)
	// Output: mode: leader leader: true
}

// Errors carry the HTTP status: here 404, a lock not declared in the Pod's annotations.
func ExampleError() {
	ctx := context.Background()
	c := client.FromEnv()

	_, err := c.Acquire(ctx, "not-declared", 0, 0)
	var e *client.Error
	if errors.As(err, &e) {
		fmt.Println(e.Status, e.Lock)
	}
	// Output: 404 not-declared
}
