package webhook

import (
	"flag"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/leasehold/leasehold/internal/contract"
	"github.com/leasehold/leasehold/sidecar/agent"
)

// agentOptions parses the command line that the webhook writes for cfg with the agent's
// own flags, the downward API's $(POD_*) filled in as the kubelet does.
func agentOptions(t *testing.T, cfg *Config, opts Options) *agent.Options {
	t.Helper()
	r := strings.NewReplacer("$(POD_NAMESPACE)", "team-a", "$(POD_NAME)", "web-0", "$(POD_UID)", "0f8e2a4c-1111-4a4a-9c9c-123456789abc")
	var args []string
	for _, a := range AgentArgs(cfg, opts) {
		args = append(args, r.Replace(a))
	}
	o := agent.NewOptions()
	fs := flag.NewFlagSet("leasehold-agent", flag.ContinueOnError)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		t.Fatalf("the agent's flags refuse the webhook's command line %q: %v", args, err)
	}
	return o
}

// The agent takes the command line the webhook writes for every golden Pod: its flags
// parse it, its validation passes it, and it lands where the contract says.
func TestInjectedArgsPassTheAgentsValidation(t *testing.T) {
	for name, opts := range goldenCases() {
		t.Run(name, func(t *testing.T) {
			pod := readPod(t, filepath.Join("testdata/golden", name+".in.yaml"))
			cfg, errs := ParseAnnotations(pod.Annotations)
			if len(errs) > 0 {
				t.Fatal(errs.ToAggregate())
			}
			o := agentOptions(t, cfg, opts)
			if err := o.Validate(); err != nil {
				t.Fatalf("the agent's validation refuses the webhook's command line: %v", err)
			}
			if o.Socket != contract.SocketPath || o.ProbeSocket != contract.ProbeSocketPath ||
				o.LeaseDuration != cfg.LeaseDuration || o.RenewDeadline != cfg.RenewDeadline || o.RetryPeriod != cfg.RetryPeriod ||
				len(o.Locks) != len(cfg.Locks) || len(o.Leader) != len(cfg.Leader) || len(o.Semaphores) != len(cfg.Semaphores) {
				t.Fatalf("the agent understood %+v from the webhook's %+v", o, cfg)
			}
		})
	}
}

// The webhook and the agent apply the same timing rules: every combination the webhook
// admits, the agent accepts, and every one the webhook refuses for a rule between the
// timings, the agent refuses too.
func TestTimingRulesAgree(t *testing.T) {
	secs := func(ds ...float64) []time.Duration {
		var out []time.Duration
		for _, d := range ds {
			out = append(out, time.Duration(d*float64(time.Second)))
		}
		return out
	}
	for _, lease := range secs(2, 3, 10, 15, 16) {
		for _, renew := range secs(1.2, 1.3, 2, 2.5, 10, 15) {
			for _, retry := range secs(1, 1.1, 2, 8.4, 9) {
				ann := map[string]string{AnnotationLocks: "db", AnnotationLeaseDuration: lease.String(),
					AnnotationRenewDeadline: renew.String(), AnnotationRetryPeriod: retry.String()}
				cfg, errs := ParseAnnotations(ann)
				o := agent.NewOptions()
				o.Namespace, o.PodName, o.PodUID, o.Locks = "ns", "p", "u", []string{"db"}
				o.LeaseDuration, o.RenewDeadline, o.RetryPeriod = lease, renew, retry
				agentErr := o.Validate()
				if (len(errs) == 0) != (agentErr == nil) {
					t.Errorf("lease %s renew %s retry %s: webhook %v (%+v), agent %v", lease, renew, retry, errs.ToAggregate(), cfg, agentErr)
				}
			}
		}
	}
}

// The webhook and the agent accept and refuse the same grace periods, and the agent
// takes the one the webhook writes (the contract's default when the Pod sets none).
func TestGraceAgrees(t *testing.T) {
	for _, v := range []string{"", "0s", "1ms", "30s", "10m", "1h", "1h0m1s", "-1s"} {
		ann := map[string]string{AnnotationLocks: "db"}
		if v != "" {
			ann[AnnotationGrace] = v
		}
		cfg, errs := ParseAnnotations(ann)
		o := agent.NewOptions()
		o.Namespace, o.PodName, o.PodUID, o.Locks = "ns", "p", "u", []string{"db"}
		if v != "" {
			d, _ := time.ParseDuration(v)
			o.Grace = d
		}
		agentErr := o.Validate()
		if (len(errs) == 0) != (agentErr == nil) {
			t.Errorf("grace %q: webhook %v, agent %v", v, errs.ToAggregate(), agentErr)
			continue
		}
		if len(errs) > 0 {
			continue
		}
		if got := agentOptions(t, cfg, Options{AgentMetricsBindAddress: ":9090"}).Grace; got != cfg.Grace {
			t.Errorf("grace %q: the webhook means %s, the agent understood %s", v, cfg.Grace, got)
		}
	}
}
