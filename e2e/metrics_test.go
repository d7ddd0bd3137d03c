//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// promQuery runs an instant query against Prometheus's HTTP API and returns the result
// vector: each sample's labels and value.
func promQuery(base, q string) ([]map[string]string, []float64, error) {
	resp, err := http.Get(base + "/api/v1/query?query=" + url.QueryEscape(q))
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	var out struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			Result []struct {
				Metric map[string]string `json:"metric"`
				Value  [2]any            `json:"value"`
			} `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, nil, err
	}
	if out.Status != "success" {
		return nil, nil, fmt.Errorf("query %q: %s", q, out.Error)
	}
	var labels []map[string]string
	var values []float64
	for _, r := range out.Data.Result {
		s, _ := r.Value[1].(string)
		v, _ := strconv.ParseFloat(s, 64)
		labels, values = append(labels, r.Metric), append(values, v)
	}
	return labels, values, nil
}

// A real Prometheus (hack/prometheus.sh: kubernetes_sd_configs, role pod, and the
// prometheus.io/* annotations the webhook puts on injected Pods) discovers and scrapes
// the agents of two replicas sharing a lock, and the webhook over HTTPS with a
// ServiceAccount token allowed to get /metrics; its queries show the lock changing
// hands between the replicas. The script checks the configuration and the shipped rules
// with promtool before it starts Prometheus, and stops it and deletes its data after.
func TestMetricsScrapedByPrometheus(t *testing.T) {
	ctx := context.Background()
	ns := newNamespace(t, true)

	// A token for the webhook's metrics: a ServiceAccount bound to leasehold-metrics-reader.
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "prometheus"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	crb := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "e2e-metrics-reader-" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "leasehold-metrics-reader"},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: "prometheus", Namespace: ns}},
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, crb, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), crb.Name, metav1.DeleteOptions{})
	})
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "prometheus", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(3600))}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(tr.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}

	// Two replicas take turns on one mutex.
	pod := appPod("", map[string]string{"leasehold.io/locks": "shared"}, `trap 'exit 0' TERM
while true; do
  leasehold run --wait 60s shared -- sleep 1
  sleep 0.3
done`)
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "lockers"},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To(int32(2)),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "lockers"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "lockers"}, Annotations: pod.Annotations},
				Spec:       pod.Spec,
			},
		},
	}
	dep.Spec.Template.Spec.RestartPolicy = corev1.RestartPolicyAlways
	if _, err := cs.AppsV1().Deployments(ns).Create(ctx, dep, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitForDeployment(t, ns, "lockers")
	pods := podsOf(t, ns, "lockers")
	for _, p := range pods {
		a := p.Annotations
		if a["prometheus.io/scrape"] != "true" || a["prometheus.io/port"] != "9090" || a["prometheus.io/path"] != "/metrics" {
			t.Errorf("Pod %s: scrape annotations %v", p.Name, a)
		}
		if c := p.Spec.InitContainers[0]; len(c.Ports) != 1 || c.Ports[0].Name != "metrics" || c.Ports[0].ContainerPort != 9090 {
			t.Errorf("Pod %s: agent ports %+v, want metrics 9090", p.Name, c.Ports)
		}
	}

	// Prometheus on the host.
	port := 19090 + int(time.Now().UnixNano()%500)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	script := filepath.Join(repoRoot, "hack", "prometheus.sh")
	env := append(os.Environ(), "KUBECONFIG="+kubeconfig, "WEBHOOK_TOKEN_FILE="+tokenFile,
		"PROMETHEUS_PORT="+strconv.Itoa(port), "SCRAPE_INTERVAL=2s")
	t.Cleanup(func() {
		stop := exec.Command(script, "stop")
		stop.Env = env
		if out, err := stop.CombinedOutput(); err != nil {
			t.Errorf("hack/prometheus.sh stop: %v\n%s", err, out)
		}
	})
	start := exec.Command(script, "start")
	start.Env = env
	if out, err := start.CombinedOutput(); err != nil {
		t.Fatalf("hack/prometheus.sh start: %v\n%s", err, out)
	} else {
		t.Logf("hack/prometheus.sh start:\n%s", out)
	}

	sel := fmt.Sprintf(`namespace=%q,lock="shared"`, ns)
	checks := []struct {
		what, query string
		ok          func([]map[string]string, []float64) bool
	}{
		{"both agents discovered and scraped", fmt.Sprintf(`up{job="kubernetes-pods",namespace=%q} == 1`, ns),
			func(_ []map[string]string, v []float64) bool { return len(v) == 2 }},
		{"each replica seen holding the lock", fmt.Sprintf(`max_over_time(leasehold_lock_held{%s}[10m]) == 1`, sel),
			func(l []map[string]string, _ []float64) bool { return len(l) == 2 && l[0]["pod"] != l[1]["pod"] }},
		{"the lock changed hands several times", fmt.Sprintf(`max(leasehold_lock_holder_changes_total{%s})`, sel),
			func(_ []map[string]string, v []float64) bool { return len(v) == 1 && v[0] >= 3 }},
		{"waiters were handed the lock after a release", fmt.Sprintf(`sum(leasehold_lock_handover_seconds_count{%s,from="released"})`, sel),
			func(_ []map[string]string, v []float64) bool { return len(v) == 1 && v[0] >= 2 }},
		{"no lock lost", fmt.Sprintf(`sum(leasehold_lock_losses_total{%s})`, sel),
			func(_ []map[string]string, v []float64) bool { return len(v) == 1 && v[0] == 0 }},
		{"both agents ready", fmt.Sprintf(`sum(leasehold_agent_ready{namespace=%q})`, ns),
			func(_ []map[string]string, v []float64) bool { return len(v) == 1 && v[0] == 2 }},
		{"the webhook scraped over HTTPS with a token", `sum(leasehold_webhook_injections_total{job="leasehold-webhook",outcome="injected"})`,
			func(_ []map[string]string, v []float64) bool { return len(v) == 1 && v[0] >= 2 }},
	}
	deadline := time.Now().Add(150 * time.Second)
	for _, c := range checks {
		var labels []map[string]string
		var values []float64
		var err error
		for {
			labels, values, err = promQuery(base, c.query)
			if err == nil && c.ok(labels, values) {
				break
			}
			if time.Now().After(deadline) {
				targets, _ := http.Get(base + "/api/v1/targets")
				var body strings.Builder
				if targets != nil {
					b := make([]byte, 8192)
					n, _ := targets.Body.Read(b)
					body.Write(b[:n])
					targets.Body.Close()
				}
				t.Fatalf("%s: %s = %v %v (err %v) after 150s\ntargets: %s", c.what, c.query, labels, values, err, body.String())
			}
			time.Sleep(2 * time.Second)
		}
		t.Logf("%s: %s = %v %v", c.what, c.query, labels, values)
	}

	// What an operator would read (logged, not judged: timings are for benchmarks).
	for _, q := range []string{
		fmt.Sprintf(`histogram_quantile(0.5, sum by (le) (rate(leasehold_lock_handover_seconds_bucket{%s}[5m])))`, sel),
		fmt.Sprintf(`histogram_quantile(0.99, sum by (le) (rate(leasehold_lock_handover_seconds_bucket{%s}[5m])))`, sel),
		fmt.Sprintf(`histogram_quantile(0.99, sum by (le) (rate(leasehold_lock_acquire_wait_seconds_bucket{%s,outcome="acquired"}[5m])))`, sel),
		fmt.Sprintf(`histogram_quantile(0.99, sum by (verb, le) (rate(leasehold_kube_api_request_duration_seconds_bucket{namespace=%q,resource="leases",verb="update"}[5m])))`, ns),
	} {
		labels, values, err := promQuery(base, q)
		t.Logf("%s = %v %v %v", q, labels, values, err)
	}

	// The shipped rules are loaded and evaluate without error.
	resp, err := http.Get(base + "/api/v1/rules")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rules struct {
		Data struct {
			Groups []struct {
				Name  string
				Rules []struct {
					Name, Health, LastError string
				}
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&rules); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range rules.Data.Groups {
		for _, r := range g.Rules {
			n++
			if r.Health == "err" {
				t.Errorf("rule %s/%s: %s", g.Name, r.Name, r.LastError)
			}
		}
	}
	if n < 6 {
		t.Errorf("Prometheus loaded %d rules, want the 6 of manifests/monitoring/leasehold-rules.yaml", n)
	}
}
