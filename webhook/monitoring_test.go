package webhook

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/sidecar/agent"
)

const monitoringDir = "../manifests/monitoring"

type ruleGroup struct {
	Name  string `json:"name"`
	Rules []struct {
		Alert  string `json:"alert"`
		Record string `json:"record"`
		Expr   string `json:"expr"`
	} `json:"rules"`
}

func readYAML(t *testing.T, path string, into any) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, into); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return b
}

// The monitoring kustomization builds, and its PrometheusRule carries exactly the
// groups of the plain rules file.
func TestMonitoringManifests(t *testing.T) {
	got := kinds(render(t, "monitoring"))
	want := []string{"ClusterRoleBinding/leasehold-metrics-reader-prometheus", "ConfigMap/leasehold-grafana-dashboard",
		"PodMonitor/leasehold-agents", "PrometheusRule/leasehold", "ServiceMonitor/leasehold-webhook"}
	if !slices.Equal(got, want) {
		t.Errorf("monitoring renders %v, want %v", got, want)
	}
	var plain, operator map[string]any
	readYAML(t, filepath.Join(monitoringDir, "leasehold-rules.yaml"), &plain)
	readYAML(t, filepath.Join(monitoringDir, "prometheusrule.yaml"), &operator)
	if diff := cmp.Diff(plain["groups"], operator["spec"].(map[string]any)["groups"]); diff != "" {
		t.Errorf("prometheusrule.yaml and leasehold-rules.yaml differ (-plain +PrometheusRule):\n%s", diff)
	}
}

// promtool checks the rules file and runs its unit tests, when it is there: the one
// hack/prometheus.sh builds (the e2e suite runs it), else one on the PATH.
func TestMonitoringRulesPromtool(t *testing.T) {
	home, _ := os.UserHomeDir()
	built, _ := filepath.Glob(filepath.Join(home, ".cache", "leasehold", "prometheus", "*", "promtool"))
	promtool, err := exec.LookPath("promtool")
	if len(built) > 0 {
		promtool, err = built[len(built)-1], nil
	}
	if err != nil {
		t.Skip("no promtool (hack/prometheus.sh install builds it); the e2e suite runs this check")
	}
	t.Logf("using %s", promtool)
	for _, args := range [][]string{{"check", "rules", "leasehold-rules.yaml"}, {"test", "rules", "leasehold-rules.test.yaml"}} {
		cmd := exec.Command(promtool, args...)
		cmd.Dir = monitoringDir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// metricName finds metric names in PromQL expressions. A regular expression over the
// project's prefixes rather than the PromQL parser of github.com/prometheus/prometheus,
// whose module would bring the whole server's dependencies into go.sum for this check.
var metricName = regexp.MustCompile(`\b(?:leasehold|controller_runtime|go|process)_[a-zA-Z0-9_]+\b`)

// Every metric the alert rules and the dashboard use is one the agent or the webhook
// serves (a histogram's _bucket, _sum and _count included).
func TestMonitoringUsesServedMetrics(t *testing.T) {
	served := agent.MetricNames()
	fams, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		served[f.GetName()] = strings.ToLower(f.GetType().String())
	}
	for _, name := range []string{"leasehold_webhook_injections_total", "leasehold_webhook_request_duration_seconds", "leasehold_lock_held"} {
		if _, ok := served[name]; !ok {
			t.Fatalf("%s not among the served metrics %v", name, served)
		}
	}
	known := func(name string) bool {
		if _, ok := served[name]; ok {
			return true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok && served[base] == "histogram" {
				return true
			}
		}
		return false
	}

	var exprs []string
	var rules struct{ Groups []ruleGroup }
	readYAML(t, filepath.Join(monitoringDir, "leasehold-rules.yaml"), &rules)
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			exprs = append(exprs, r.Expr)
		}
	}
	b, err := os.ReadFile(filepath.Join(monitoringDir, "leasehold-dashboard.json"))
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
		Templating struct {
			List []struct{ Definition string }
		}
	}
	if err := json.Unmarshal(b, &dash); err != nil {
		t.Fatalf("leasehold-dashboard.json: %v", err)
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range dash.Templating.List {
		exprs = append(exprs, v.Definition)
	}
	if len(exprs) < 20 {
		t.Fatalf("found only %d expressions in the rules and the dashboard", len(exprs))
	}
	uses := 0
	for _, e := range exprs {
		for _, name := range metricName.FindAllString(e, -1) {
			uses++
			if !known(name) {
				t.Errorf("%s is used in %q but served by neither the agent nor the webhook", name, e)
			}
		}
	}
	if uses < len(exprs) {
		t.Errorf("found %d metric names in %d expressions: the pattern misses some", uses, len(exprs))
	}
}
