package chaos

import "golang.org/x/sys/unix"

// Now is the time on the machine's CLOCK_MONOTONIC, in nanoseconds. Every process of
// a run (the test, the client loops) reads this one clock, so their records can be put
// on one time line. time.Now's monotonic reading cannot: it counts from a point that
// differs per process.
func Now() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		panic("read CLOCK_MONOTONIC: " + err.Error())
	}
	return ts.Nano()
}
