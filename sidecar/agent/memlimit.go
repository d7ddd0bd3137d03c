package agent

import (
	"fmt"
	"math"
	"runtime/debug"
	"strconv"
	"strings"

	"github.com/leasehold/leasehold/internal/contract"
)

// MemoryLimitFraction is the share of the container's memory limit that the agent gives
// the Go runtime as its soft memory limit (what GOMEMLIMIT sets): 80 %, so that the
// runtime collects garbage harder well before the kernel would kill the agent, and 20 %
// (12.8 MiB of the default 64 Mi) is left for what the runtime does not count: memory
// freed but not yet returned to the kernel, and the page cache charged to the container
// (the copy of the leasehold client it writes at start).
const MemoryLimitFraction = 0.8

// SetMemoryLimit sets the Go runtime's soft memory limit from the environment, as
// cmd/leasehold-agent calls it before anything else:
//   - GOMEMLIMIT set (by an operator): the runtime has applied it already; it wins, and
//     nothing is changed;
//   - else $LEASEHOLD_MEMORY_LIMIT (the container's memory limit in bytes, which the
//     webhook passes with the downward API's limits.memory): MemoryLimitFraction of it;
//   - else (an agent run by hand, no limit known): nothing is set.
//
// It returns the limit in bytes (0: none set by it), where it came from, and an error
// for a $LEASEHOLD_MEMORY_LIMIT that is not a positive whole number of bytes.
func SetMemoryLimit(getenv func(string) string) (int64, string, error) {
	if v := getenv("GOMEMLIMIT"); v != "" {
		return debug.SetMemoryLimit(-1), "GOMEMLIMIT", nil
	}
	v := strings.TrimSpace(getenv(contract.EnvMemoryLimit))
	if v == "" {
		return 0, "", nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n <= 0 {
		return 0, "", fmt.Errorf("$%s=%q is not the container's memory limit in bytes: "+
			"set it with the downward API (resourceFieldRef limits.memory, divisor 1), as the webhook does, or unset it", contract.EnvMemoryLimit, v)
	}
	limit := int64(math.Floor(float64(n) * MemoryLimitFraction))
	debug.SetMemoryLimit(limit)
	return limit, contract.EnvMemoryLimit, nil
}
