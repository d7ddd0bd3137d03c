package chaos

import (
	"math/rand/v2"
	"time"
)

// Step is one fault of the schedule. Everything random about it is drawn from the seed
// when the schedule is made; what it hits also depends on who holds the locks when it
// runs (the holder of the mutex, when there is one, is the usual target).
type Step struct {
	// Gap is the pause before the fault.
	Gap  time.Duration
	Kind FaultKind
	// Pick chooses a target in [0, 1) when no holder decides.
	Pick float64
	// Leader aims the fault at the leader lock (its holder, its Lease) instead of the
	// mutex, for the kinds that can aim at either (partition, lease-rewrite).
	Leader bool
	// Extra is added to the least length of a stop (lease-duration) or a partition
	// (renew-deadline).
	Extra time.Duration
	// NewPod: a killed agent comes back as a new Pod (new name and UID, new client
	// loops) rather than as a restarted container of the same Pod.
	NewPod bool
}

// Schedule returns the fault schedule of a seed: each call of the returned function
// gives the next step. The first len(FaultKinds) steps are every kind once, in an
// order drawn from the seed, so that even a short run has each; then kinds are drawn
// at random (an API server restart, the slowest, half as often). The same seed gives
// the same steps.
func Schedule(seed uint64) func() Step {
	rng := rand.New(rand.NewPCG(seed, 0x6c656173656877)) // "leasehw"
	first := append([]FaultKind(nil), FaultKinds...)
	rng.Shuffle(len(first), func(i, j int) { first[i], first[j] = first[j], first[i] })
	weights := map[FaultKind]float64{FaultAPIRestart: 0.5}
	var total float64
	for _, k := range FaultKinds {
		if _, ok := weights[k]; !ok {
			weights[k] = 1
		}
		total += weights[k]
	}
	n := 0
	return func() Step {
		var kind FaultKind
		if n < len(first) {
			kind = first[n]
		} else {
			x := rng.Float64() * total
			for _, k := range FaultKinds {
				if x -= weights[k]; x < 0 {
					kind = k
					break
				}
			}
			if kind == "" {
				kind = FaultKinds[len(FaultKinds)-1]
			}
		}
		n++
		return Step{
			Gap:    500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond))),
			Kind:   kind,
			Pick:   rng.Float64(),
			Leader: rng.IntN(2) == 0,
			Extra:  500*time.Millisecond + time.Duration(rng.Int64N(int64(2500*time.Millisecond))),
			NewPod: rng.IntN(2) == 0,
		}
	}
}
