package webhook

import (
	"flag"
	"io"
	"maps"
	"path/filepath"
	"slices"
	"sort"
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

// agentVerdict feeds ann to the agent as its flags, the way the contract names them:
// annotation leasehold.io/X is flag --X. It returns the options when the agent's flag
// parsing and validation take them, else nil and the refusal.
func agentVerdict(ann map[string]string) (*agent.Options, error) {
	args := []string{"--namespace=team-a", "--pod-name=web-0", "--pod-uid=0f8e2a4c-1111-4a4a-9c9c-123456789abc"}
	keys := make([]string, 0, len(ann))
	for k := range ann {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--"+strings.TrimPrefix(k, contract.AnnotationPrefix)+"="+ann[k])
	}
	o := agent.NewOptions()
	fs := flag.NewFlagSet("leasehold-agent", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.BindFlags(fs)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return o, nil
}

// checkAgreement wants the webhook and the agent to give ann the same verdict and, when
// both take it, the same meaning. except, when not nil, names the one documented
// difference: the agent may take what the webhook refuses for that reason alone.
func checkAgreement(t *testing.T, ann map[string]string, except func(map[string]string) bool) {
	t.Helper()
	cfg, errs := ParseAnnotations(ann)
	o, agentErr := agentVerdict(ann)
	switch {
	case len(errs) > 0 && agentErr != nil:
		return
	case len(errs) > 0 && except != nil && except(ann):
		return
	case len(errs) > 0 || agentErr != nil:
		t.Errorf("%v: the webhook says %v, the agent says %v", ann, errs.ToAggregate(), agentErr)
		return
	}
	sems := map[string]int{}
	for _, s := range cfg.Semaphores {
		sems[s.Name] = s.Size
	}
	if o.LeaseDuration != cfg.LeaseDuration || o.RenewDeadline != cfg.RenewDeadline || o.RetryPeriod != cfg.RetryPeriod ||
		o.Grace != cfg.Grace || o.TCPPort != int(cfg.TCPPort) || !slices.Equal(o.Locks, cfg.Locks) ||
		!slices.Equal(o.Leader, cfg.Leader) || !maps.Equal(o.Semaphores, sems) {
		t.Errorf("%v: the webhook means %+v, the agent understood %+v", ann, cfg, o)
	}
}

// The webhook and the agent accept and refuse the same annotations and flags, by the
// contract's rules, and understand the same by the ones they accept: every timing
// (its limits and the rules between them), lock and leader names, semaphores and
// their sizes, and the loopback port. The one difference is deliberate and named:
// the agent also takes a retry-period under contract.MinTiming (its test harnesses
// retry every 250ms), which the webhook never writes.
func TestWebhookAndAgentAgree(t *testing.T) {
	subMinRetry := func(ann map[string]string) bool {
		d, err := time.ParseDuration(ann[AnnotationRetryPeriod])
		return err == nil && d > 0 && d < contract.MinTiming && contract.CheckAgentTiming(contract.RetryPeriod, d) == nil
	}
	t.Run("timings", func(t *testing.T) {
		for _, lease := range []string{"", "500ms", "1s", "2s", "2500ms", "3s", "15s", "1h", "61m", "-3s", "x"} {
			for _, renew := range []string{"", "900ms", "1s", "1300ms", "2s", "10s", "59m", "61m"} {
				for _, retry := range []string{"", "250ms", "1s", "1100ms", "2s", "61m", "0s"} {
					for _, grace := range []string{"", "-1s", "0s", "1ms", "30s", "1h", "1h0m1s"} {
						ann := map[string]string{AnnotationLocks: "db"}
						for k, v := range map[string]string{AnnotationLeaseDuration: lease, AnnotationRenewDeadline: renew,
							AnnotationRetryPeriod: retry, AnnotationGrace: grace} {
							if v != "" {
								ann[k] = v
							}
						}
						checkAgreement(t, ann, subMinRetry)
					}
				}
			}
		}
	})
	long := strings.Repeat("a", contract.MaxLockNameLength)
	t.Run("names", func(t *testing.T) {
		names := []string{"", "db", "db-migration", "a.b", "team.jobs.1", "DB", "-x", "x-", "a..b", ".a", "a_b", "ä",
			long, long + "a", "db,db", "db,cache", "db,,x", "db,", ",db"}
		for _, key := range []string{AnnotationLocks, AnnotationLeader} {
			for _, v := range names {
				checkAgreement(t, map[string]string{key: v}, nil)
			}
		}
		for _, locks := range []string{"db", "cache"} {
			for _, leader := range []string{"db", "lead", "cache,db"} {
				checkAgreement(t, map[string]string{AnnotationLocks: locks, AnnotationLeader: leader}, nil)
			}
		}
	})
	t.Run("semaphores", func(t *testing.T) {
		for _, v := range []string{"r=1", "r=3", "r=64", "r=0", "r=65", "r=-1", "r=x", "r", "=3", "R=2", "r=3,r=2", "r=3,s=2",
			"r=3,,s=2", "db=2", strings.Repeat("a", 251) + "=9", strings.Repeat("a", 251) + "=10", "a.b=2"} {
			checkAgreement(t, map[string]string{AnnotationSemaphores: v}, nil)
			checkAgreement(t, map[string]string{AnnotationSemaphores: v, AnnotationLocks: "db"}, nil)
			checkAgreement(t, map[string]string{AnnotationSemaphores: v, AnnotationLeader: "db.1"}, nil)
		}
	})
	t.Run("tcp-port", func(t *testing.T) {
		// Not "0": that is the agent's spelling of no port, which the annotation spells
		// by being absent.
		for _, v := range []string{"", "1", "80", "1023", "1024", "8970", "65535", "65536", "-1", "x"} {
			ann := map[string]string{AnnotationLocks: "db"}
			if v != "" {
				ann[AnnotationTCPPort] = v
			}
			checkAgreement(t, ann, nil)
		}
	})
}
