// Package scalebench measures what Leasehold costs the one API server and etcd of a
// cluster when every annotated Pod runs an agent: `make bench-scale` starts a real
// kube-apiserver + etcd (envtest), then 100, 300 and 1,000 agent processes (the real
// leasehold-agent binary, one per simulated Pod, each with its own identity, connection
// and watches), and client-go leader electors at the same steps for comparison. It
// measures the steady state (Lease writes per second, watches, the API server's CPU and
// memory, the agents' own memory, mutex handover), the cold start of every agent at
// once, a restart of kube-apiserver under the largest fleet (etcd stays), and how the
// watches' periodic re-opening spreads out after that restart. The results go into
// BENCHMARKS.md between markers.
//
// The benchmark is behind the build tag scalebench: it needs minutes and most of a
// small machine, so `go test ./...` and `make bench` do not run it.
package scalebench
