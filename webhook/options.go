package webhook

import (
	"flag"
	"fmt"
	"net"
	"strconv"

	"github.com/leasehold/leasehold/internal/contract"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// Names shared with the agent: internal/contract holds them for both sides.
const (
	// AgentContainerName is the name of the injected container.
	AgentContainerName = "leasehold-agent"
	// AgentBinary is the agent's path in the image.
	AgentBinary = "/usr/local/bin/leasehold-agent"
	// SocketVolumeName is the emptyDir that carries the agent's Unix socket.
	SocketVolumeName = "leasehold-socket"
	// SocketDir is where SocketVolumeName is mounted in every container.
	SocketDir = contract.SocketDir
	// SocketPath is the agent's socket.
	SocketPath = contract.SocketPath
	// ProbeSocketPath is the agent's socket for the kubelet's exec probes alone.
	ProbeSocketPath = contract.ProbeSocketPath
	// CLIPath is where the agent puts its leasehold client, in the socket volume, so
	// that every container of the Pod can run it whatever its image: the agent's
	// default, bin/leasehold beside its --socket. It is not passed as --cli-path, so
	// that this webhook's Pods still start with an agent image older than the flag
	// (sidecar/agent's TestInjectedAgentInstallsTheClient runs the injected agent and
	// the client at LEASEHOLD_CLI).
	CLIPath = contract.CLIPath
	// EnvSocket and EnvURL tell app containers where the agent is; EnvCLI where the
	// leasehold client is: "$LEASEHOLD_CLI" run LOCK -- COMMAND works in any image
	// that has a shell.
	EnvSocket = contract.EnvSocket
	EnvURL    = contract.EnvURL
	EnvCLI    = contract.EnvCLI
	// EnvMemoryLimit gives the agent its container's memory limit (downward API).
	EnvMemoryLimit = contract.EnvMemoryLimit
	// AgentUID is the user the agent runs as, and its group unless --socket-group
	// says otherwise.
	AgentUID = contract.AgentUID

	// DefaultAgentImage is the one project image.
	DefaultAgentImage = "leasehold.local/leasehold:dev"
)

// Options configure the injection. Every field has a command-line flag (BindFlags).
type Options struct {
	// AgentImage is the image of the injected container.
	AgentImage string
	// AgentImagePullPolicy is its pull policy.
	AgentImagePullPolicy corev1.PullPolicy
	// CPURequest, MemoryRequest, CPULimit, MemoryLimit are the agent's resources.
	CPURequest, MemoryRequest, CPULimit, MemoryLimit resource.Quantity
	// SocketGroup is the agent's group (so the socket's, mode 0660), and is added to
	// the Pod's supplementalGroups so that app containers of any UID can connect.
	SocketGroup int64
	// PlainContainer injects the agent as an ordinary container instead of a native
	// sidecar, for clusters older than Kubernetes 1.29.
	PlainContainer bool
	// AgentMetricsBindAddress is passed to the agent (--metrics-bind-address).
	AgentMetricsBindAddress string
	// Namespace is the webhook's own namespace; its Pods are never injected.
	Namespace string
}

// DefaultOptions returns the defaults that BindFlags also uses.
func DefaultOptions() Options {
	return Options{
		AgentImage:              DefaultAgentImage,
		AgentImagePullPolicy:    corev1.PullIfNotPresent,
		CPURequest:              resource.MustParse("10m"),
		MemoryRequest:           resource.MustParse("16Mi"),
		CPULimit:                resource.MustParse("100m"),
		MemoryLimit:             resource.MustParse("64Mi"),
		SocketGroup:             AgentUID,
		AgentMetricsBindAddress: ":9090",
		Namespace:               "leasehold-system",
	}
}

// BindFlags registers the options on fs, with the current values as defaults.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.AgentImage, "agent-image", o.AgentImage, "Image of the injected lock agent.")
	fs.Func("agent-image-pull-policy", fmt.Sprintf("Pull policy of the agent image (Always, IfNotPresent, Never; default %s).", o.AgentImagePullPolicy),
		func(s string) error {
			switch p := corev1.PullPolicy(s); p {
			case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
				o.AgentImagePullPolicy = p
				return nil
			}
			return fmt.Errorf("want Always, IfNotPresent or Never, got %q", s)
		})
	quantity(fs, &o.CPURequest, "agent-cpu-request", "CPU request of the agent container.")
	quantity(fs, &o.MemoryRequest, "agent-memory-request", "Memory request of the agent container.")
	quantity(fs, &o.CPULimit, "agent-cpu-limit", "CPU limit of the agent container.")
	quantity(fs, &o.MemoryLimit, "agent-memory-limit", "Memory limit of the agent container.")
	fs.Int64Var(&o.SocketGroup, "socket-group", o.SocketGroup,
		"The agent's GID, so its socket's (mode 0660), added to each injected Pod's supplementalGroups so that app containers of any UID can connect to the socket.")
	fs.BoolVar(&o.PlainContainer, "plain-container", o.PlainContainer,
		"Inject the agent as a plain container instead of a native sidecar (clusters older than 1.29).")
	fs.StringVar(&o.AgentMetricsBindAddress, "agent-metrics-bind-address", o.AgentMetricsBindAddress,
		`The agent's --metrics-bind-address: ":<port>" serves GET /metrics on the Pod's IP, with a containerPort named "metrics" and the prometheus.io/* scrape annotations; `+
			`"127.0.0.1:<port>" on the Pod's loopback only (no port, no annotations); "0" turns the agent's metrics off in every Pod (leasehold.io/metrics: "false" does it for one Pod).`)
	fs.StringVar(&o.Namespace, "namespace", o.Namespace, "The webhook's own namespace; Pods there are never injected.")
}

func quantity(fs *flag.FlagSet, q *resource.Quantity, name, usage string) {
	fs.Func(name, fmt.Sprintf("%s (default %s)", usage, q.String()), func(s string) error {
		v, err := resource.ParseQuantity(s)
		if err != nil {
			return err
		}
		*q = v
		return nil
	})
}

// Validate checks the options before the server starts.
func (o *Options) Validate() error {
	if o.AgentImage == "" {
		return fmt.Errorf("--agent-image must not be empty")
	}
	if a := o.AgentMetricsBindAddress; a != "0" {
		host, port, err := net.SplitHostPort(a)
		n, perr := strconv.Atoi(port)
		switch {
		case err != nil:
			return fmt.Errorf("--agent-metrics-bind-address=%q is not host:port: use \":9090\" (the Pod's IP), \"127.0.0.1:9090\" (loopback) or \"0\" (off)", a)
		case perr != nil || n < 1024 || n > 65535:
			return fmt.Errorf("--agent-metrics-bind-address=%q: the port must be a number from 1024 to 65535 (the agent runs without privileges)", a)
		case host != "" && net.ParseIP(host) == nil:
			return fmt.Errorf("--agent-metrics-bind-address=%q: %q is not an IP address: use \":%s\" for the Pod's IP or \"127.0.0.1:%s\" for loopback", a, host, port, port)
		}
	}
	if o.SocketGroup <= 0 {
		return fmt.Errorf("--socket-group must be a positive GID, got %d", o.SocketGroup)
	}
	if o.CPULimit.Cmp(o.CPURequest) < 0 || o.MemoryLimit.Cmp(o.MemoryRequest) < 0 {
		return fmt.Errorf("agent resource limits (%s CPU, %s memory) must not be below the requests (%s, %s)",
			o.CPULimit.String(), o.MemoryLimit.String(), o.CPURequest.String(), o.MemoryRequest.String())
	}
	return nil
}

// ServiceAccountTokenDir is where client-go's in-cluster config reads the token, the
// CA and the namespace.
const ServiceAccountTokenDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// TokenVolumeName is the agent's own projected ServiceAccount token (the same shape as
// the kubelet's kube-api-access volume), mounted only into the agent. The agent needs
// it even when the Pod or its ServiceAccount turns automountServiceAccountToken off for
// the app; and the API server's ServiceAccount admission, which runs before webhooks,
// would otherwise not reach the webhook-added container when it is on.
const TokenVolumeName = "leasehold-agent-token"

// TokenExpirationSeconds is the lifetime of the agent's projected token; client-go
// reads the file again as the kubelet refreshes it. Not the kubelet's 3607: the API
// server treats that value as a legacy kube-api-access token and, with
// --service-account-extend-token-expiration (its default), makes it valid for a year.
const TokenExpirationSeconds = 3600
