package agent

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/sidecar/lock"
)

// DefaultSocket is where the agent listens unless told otherwise.
const DefaultSocket = contract.SocketPath

// Options are the agent's command line; the webhook writes it (webhook.AgentArgs).
type Options struct {
	Namespace, PodName, PodUID string
	Locks, Leader              []string
	Semaphores                 map[string]int
	LeaseDuration              time.Duration
	RenewDeadline              time.Duration
	RetryPeriod                time.Duration
	Grace                      time.Duration
	Socket                     string
	TCPPort                    int
	MetricsBindAddress         string
	Kubeconfig                 string
	ServiceAccount             string
	Events                     bool
	Probe                      string
	QPS                        float64
	Burst                      int
	ShutdownTimeout            time.Duration
	MaxConnections             int
	MetricsMaxConnections      int
	ProbeSocket                string
	// InstallCLI, CLISource and CLIPath: see installCLI.
	InstallCLI bool
	CLISource  string
	CLIPath    string
}

// NewOptions returns the defaults.
func NewOptions() *Options {
	return &Options{
		LeaseDuration:      contract.DefaultLeaseDuration,
		RenewDeadline:      contract.DefaultRenewDeadline,
		RetryPeriod:        contract.DefaultRetryPeriod,
		Grace:              contract.DefaultGrace,
		Socket:             DefaultSocket,
		MetricsBindAddress: ":9090",
		Events:             true,
		QPS:                50,
		Burst:              100,
		ShutdownTimeout:    5 * time.Second,
		MaxConnections:     256,
		// Two Prometheus replicas and a person with curl need three; a Pod IP
		// flooded with connections must not cost the agent its memory limit.
		MetricsMaxConnections: 16,
		InstallCLI:            true,
	}
}

type listFlag struct{ v *[]string }

func (f listFlag) String() string {
	if f.v == nil {
		return ""
	}
	return strings.Join(*f.v, ",")
}

// Set takes comma-separated names; an empty entry between commas is refused, as the
// webhook refuses it in the annotation.
func (f listFlag) Set(s string) error {
	*f.v = nil
	if strings.TrimSpace(s) == "" {
		return nil
	}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return fmt.Errorf("%q: empty lock name between commas: remove the extra comma", s)
		}
		*f.v = append(*f.v, p)
	}
	return nil
}

type semaphoresFlag struct{ v *map[string]int }

func (f semaphoresFlag) String() string {
	if f.v == nil || *f.v == nil {
		return ""
	}
	parts := make([]string, 0, len(*f.v))
	for n, size := range *f.v {
		parts = append(parts, n+"="+strconv.Itoa(size))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (f semaphoresFlag) Set(s string) error {
	m, err := ParseSemaphores(s)
	if err != nil {
		return err
	}
	*f.v = m
	return nil
}

// ParseSemaphores parses "name=N,name=N" (the --semaphores flag, and the
// leasehold.io/semaphores annotation), by the contract's rules (contract.CheckSemaphore).
func ParseSemaphores(s string) (map[string]int, error) {
	out := map[string]int{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			return nil, fmt.Errorf("%q: empty entry between commas: remove the extra comma", s)
		}
		name, n, ok := strings.Cut(p, "=")
		name = strings.TrimSpace(name)
		size, err := strconv.Atoi(strings.TrimSpace(n))
		switch {
		case !ok || name == "":
			return nil, fmt.Errorf("%q is not name=N (e.g. report=3: at most 3 holders of report at once)", p)
		case err != nil:
			return nil, fmt.Errorf("%q: %w (e.g. %s=3)", p, contract.ErrSemaphoreSize, name)
		}
		if err := contract.CheckSemaphore(name, size); err != nil {
			return nil, fmt.Errorf("%q: %w (e.g. %s=3)", p, err, name)
		}
		if _, dup := out[name]; dup {
			return nil, fmt.Errorf("semaphore %q is listed twice: list each name once", name)
		}
		out[name] = size
	}
	return out, nil
}

// BindFlags adds the options to fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "Namespace of the Pod and of its Leases (downward API metadata.namespace).")
	fs.StringVar(&o.PodName, "pod-name", o.PodName, "Name of the Pod (downward API metadata.name).")
	fs.StringVar(&o.PodUID, "pod-uid", o.PodUID, "UID of the Pod (downward API metadata.uid); holder identity is <pod-name>_<pod-uid>.")
	fs.Var(listFlag{&o.Locks}, "locks", "Comma-separated on-demand mutex lock names.")
	fs.Var(listFlag{&o.Leader}, "leader", "Comma-separated leader lock names, held continuously.")
	fs.Var(semaphoresFlag{&o.Semaphores}, "semaphores", "Comma-separated counting locks, name=N: up to N holders at once, each on a slot Lease name.1 .. name.N.")
	fs.DurationVar(&o.LeaseDuration, "lease-duration", o.LeaseDuration, "How long others wait after the last renew before taking a lock.")
	fs.DurationVar(&o.RenewDeadline, "renew-deadline", o.RenewDeadline, "How long a hold is relied on after the last successful write.")
	fs.DurationVar(&o.RetryPeriod, "retry-period", o.RetryPeriod, "Time between retries after a failed write.")
	fs.DurationVar(&o.Grace, "grace", o.Grace, "How long a hold may stay in jeopardy (renew-deadline passed while the API server was unavailable) before it is lost; 0 = no jeopardy.")
	fs.StringVar(&o.Socket, "socket", o.Socket, "Unix socket to serve the API on (mode 0660).")
	fs.IntVar(&o.TCPPort, "tcp-port", o.TCPPort, "Also serve the API on 127.0.0.1:<port>; 0 = off.")
	fs.StringVar(&o.MetricsBindAddress, "metrics-bind-address", o.MetricsBindAddress,
		"Address of the Prometheus metrics endpoint, GET /metrics only (\":9090\": every address of the Pod; \"127.0.0.1:9090\": loopback only); \"0\" or empty = off.")
	fs.StringVar(&o.Kubeconfig, "kubeconfig", o.Kubeconfig, "Kubeconfig file; empty = in-cluster configuration.")
	fs.StringVar(&o.ServiceAccount, "service-account", o.ServiceAccount, "ServiceAccount named in RBAC error messages (default: read from the in-cluster token).")
	fs.BoolVar(&o.Events, "events", o.Events, "Record Kubernetes Events on the Pod for acquired / lost / released.")
	fs.StringVar(&o.Probe, "probe", o.Probe, "Probe mode: GET this path (e.g. /healthz) on --socket, exit 0 on 2xx, 1 otherwise.")
	fs.Float64Var(&o.QPS, "kube-api-qps", o.QPS, "Client-side rate limit towards the API server (requests per second).")
	fs.IntVar(&o.Burst, "kube-api-burst", o.Burst, "Client-side burst towards the API server.")
	fs.IntVar(&o.MaxConnections, "max-connections", o.MaxConnections, "Connections served at once (socket and TCP together); beyond, a client gets 503 at once.")
	fs.IntVar(&o.MetricsMaxConnections, "metrics-max-connections", o.MetricsMaxConnections, "Connections to the metrics endpoint served at once "+
		"(counted apart from --max-connections); beyond, a client gets 503 at once. Each idle connection is closed after "+MetricsIdleTimeout.String()+".")
	fs.StringVar(&o.ProbeSocket, "probe-socket", o.ProbeSocket, "Unix socket (mode 0600) serving only /healthz and /readyz, for exec probes "+
		"(--probe=/healthz --socket=<this>); outside --max-connections, so a flood of clients cannot fail the probes. Empty = off.")
	fs.BoolVar(&o.InstallCLI, "install-cli", o.InstallCLI, "At start, copy the leasehold client to --cli-path, for every container of the Pod "+
		"(the webhook points LEASEHOLD_CLI at it); a client that cannot be copied is logged, not fatal.")
	fs.StringVar(&o.CLISource, "cli-source", o.CLISource, "The leasehold client to copy (default: "+CLIName+" beside the agent's own executable).")
	fs.StringVar(&o.CLIPath, "cli-path", o.CLIPath, "Where to put the leasehold client, in the volume shared with the Pod's containers "+
		"(default: bin/"+CLIName+" in the directory of --socket).")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", o.ShutdownTimeout, "How long SIGTERM handling may take to release holds.")
}

// cliPath is --cli-path, or its default beside the socket.
func (o *Options) cliPath() string {
	if o.CLIPath != "" {
		return o.CLIPath
	}
	return filepath.Join(filepath.Dir(o.Socket), "bin", CLIName)
}

// MetricsOn says whether the metrics endpoint is on.
func (o *Options) MetricsOn() bool { return o.MetricsBindAddress != "" && o.MetricsBindAddress != "0" }

// Identity is the holder identity: unique per Pod incarnation.
func (o *Options) Identity() string { return lock.Identity(o.PodName, o.PodUID) }

// validateLocks applies the contract's rules to the declared names, as the webhook
// does to the annotations: each a valid Lease name, declared once across --locks,
// --leader and --semaphores, and no lock named like a semaphore's slot Lease.
func (o *Options) validateLocks() []error {
	var errs []error
	seen := map[string]string{}
	declare := func(flag, name string) {
		if first, dup := seen[name]; dup {
			errs = append(errs, fmt.Errorf("%s: %q is also declared by %s: declare each lock once", flag, name, first))
			return
		}
		seen[name] = flag
	}
	for _, l := range []struct {
		flag  string
		names []string
	}{{"--locks", o.Locks}, {"--leader", o.Leader}} {
		for _, name := range l.names {
			if err := contract.CheckLockName(name); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", l.flag, err))
				continue
			}
			declare(l.flag, name)
		}
	}
	sems := make([]string, 0, len(o.Semaphores))
	for name := range o.Semaphores {
		sems = append(sems, name)
	}
	sort.Strings(sems)
	for _, name := range sems {
		if err := contract.CheckSemaphore(name, o.Semaphores[name]); err != nil {
			errs = append(errs, fmt.Errorf("--semaphores: %w", err))
			continue
		}
		declare("--semaphores", name)
	}
	for _, name := range sems {
		for i := 1; i <= o.Semaphores[name]; i++ {
			if flag, clash := seen[contract.SlotName(name, i)]; clash && flag != "--semaphores" {
				errs = append(errs, fmt.Errorf("--semaphores: slot %d of %s is the Lease %q, which %s also declares: rename the lock or the semaphore",
					i, name, contract.SlotName(name, i), flag))
			}
		}
	}
	return errs
}

// Validate checks the options for serving (not for probe mode).
func (o *Options) Validate() error {
	var errs []error
	if o.Namespace == "" {
		errs = append(errs, errors.New("--namespace is required (downward API metadata.namespace)"))
	} else if e := validation.IsDNS1123Label(o.Namespace); len(e) > 0 {
		errs = append(errs, fmt.Errorf("--namespace=%q is not a namespace name: %s", o.Namespace, strings.Join(e, "; ")))
	}
	if o.PodName == "" {
		errs = append(errs, errors.New("--pod-name is required (downward API metadata.name)"))
	}
	if o.PodUID == "" {
		errs = append(errs, errors.New("--pod-uid is required (downward API metadata.uid)"))
	}
	if len(o.Locks)+len(o.Leader)+len(o.Semaphores) == 0 {
		errs = append(errs, errors.New("declare at least one lock with --locks, --leader or --semaphores"))
	}
	errs = append(errs, o.validateLocks()...)
	for _, t := range []struct {
		timing contract.Timing
		d      time.Duration
	}{{contract.LeaseDuration, o.LeaseDuration}, {contract.RenewDeadline, o.RenewDeadline}, {contract.RetryPeriod, o.RetryPeriod}, {contract.Grace, o.Grace}} {
		var te *contract.TimingError
		if errors.As(contract.CheckAgentTiming(t.timing, t.d), &te) {
			errs = append(errs, fmt.Errorf("--%s=%s %s", te.Timing, te.Value, te.Rule()))
		}
	}
	for _, rule := range contract.BrokenTimingRules(o.LeaseDuration, o.RenewDeadline, o.RetryPeriod) {
		switch rule {
		case contract.LeaseAboveRenew:
			errs = append(errs, fmt.Errorf("--lease-duration=%s must be greater than --renew-deadline=%s, %s",
				o.LeaseDuration, o.RenewDeadline, rule.Why()))
		case contract.RenewAboveRetry:
			errs = append(errs, fmt.Errorf("--renew-deadline=%s must be greater than %v x --retry-period=%s, %s",
				o.RenewDeadline, contract.JitterFactor, o.RetryPeriod, rule.Why()))
		}
	}
	if o.TCPPort != 0 && contract.CheckTCPPort(int64(o.TCPPort)) != nil {
		errs = append(errs, fmt.Errorf("--tcp-port=%d must be from %d to %d (the agent runs without privileges), or 0 for off",
			o.TCPPort, contract.MinTCPPort, contract.MaxTCPPort))
	}
	if o.Socket == "" {
		errs = append(errs, errors.New("--socket must not be empty"))
	}
	if o.ProbeSocket != "" && o.ProbeSocket == o.Socket {
		errs = append(errs, fmt.Errorf("--probe-socket=%s must differ from --socket", o.ProbeSocket))
	}
	if o.MetricsOn() {
		host, port, err := net.SplitHostPort(o.MetricsBindAddress)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("--metrics-bind-address=%q is not host:port: use \":9090\" (every address), \"127.0.0.1:9090\" (loopback) or \"0\" (off)", o.MetricsBindAddress))
		case perr != nil || n < 1 || n > 65535:
			errs = append(errs, fmt.Errorf("--metrics-bind-address=%q: port %q is not a number from 1 to 65535", o.MetricsBindAddress, port))
		case host != "" && net.ParseIP(host) == nil && host != "localhost":
			errs = append(errs, fmt.Errorf("--metrics-bind-address=%q: host %q is not an IP address: use \":%s\" for every address of the Pod", o.MetricsBindAddress, host, port))
		case o.TCPPort != 0 && n == o.TCPPort:
			errs = append(errs, fmt.Errorf("--metrics-bind-address=%q uses the port of --tcp-port=%d: choose another port", o.MetricsBindAddress, o.TCPPort))
		}
	}
	if o.MaxConnections < 1 {
		errs = append(errs, fmt.Errorf("--max-connections=%d must be at least 1", o.MaxConnections))
	}
	if o.MetricsMaxConnections < 1 {
		errs = append(errs, fmt.Errorf("--metrics-max-connections=%d must be at least 1", o.MetricsMaxConnections))
	}
	return errors.Join(errs...)
}
