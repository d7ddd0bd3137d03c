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
	// Pick chooses a target in [0, 1) when no holder decides; for a blip (which has no
	// target) it places the blip's length between renew-deadline and lease-duration.
	Pick float64
	// Leader aims the fault at the leader lock (its holder, its Lease) instead of the
	// mutex, for the kinds that can aim at either (partition, lease-rewrite).
	Leader bool
	// Extra is added to the least length of a stop (lease-duration), a partition
	// (renew-deadline) or a blip-long (lease-duration).
	Extra time.Duration
	// NewPod: a killed agent comes back as a new Pod (new name and UID, new client
	// loops) rather than as a restarted container of the same Pod.
	NewPod bool
}

// MaxExtra bounds Step.Extra: a step's Extra is in [500ms, MaxExtra].
const MaxExtra = 3 * time.Second

// BlipLength is how long a fault of kind blip or blip-long cuts every agent off from
// the API server, with the agents' lease-duration ld and renew-deadline rd: a blip lasts
// renew-deadline plus 15 to 85 % (Pick) of the way to lease-duration, so that every hold
// passes its renew-deadline without a write (it goes into jeopardy) and the outage stays
// shorter than lease-duration; a blip-long lasts lease-duration plus Extra, at most
// lease-duration + MaxExtra (the agents' grace period must be longer than that).
func (st Step) BlipLength(ld, rd time.Duration) time.Duration {
	if st.Kind == FaultBlipLong {
		return ld + st.Extra
	}
	return rd + time.Duration((0.15+0.7*st.Pick)*float64(ld-rd))
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
			Extra:  500*time.Millisecond + time.Duration(rng.Int64N(int64(MaxExtra-500*time.Millisecond))),
			NewPod: rng.IntN(2) == 0,
		}
	}
}
