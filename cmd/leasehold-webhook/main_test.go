package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/leasehold/leasehold/internal/testing/testenv"
	"github.com/leasehold/leasehold/webhook"
)

func applyManifest(t *testing.T, c client.Client, name string, objs ...client.Object) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "manifests", "base", name))
	if err != nil {
		t.Fatal(err)
	}
	docs := bytes.Split(b, []byte("\n---\n"))
	for i, o := range objs {
		if err := yaml.UnmarshalStrict(docs[i], o); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := c.Create(context.Background(), o); err != nil {
			t.Fatalf("create %s from %s: %v", o.GetName(), name, err)
		}
	}
}

// TestRunSelfSignedTLS runs the webhook's main wiring (run) against a real API server
// holding manifests/base's namespace, Secret, RBAC and webhook configuration, with the
// webhook's ServiceAccount identity (impersonated). No kubelet projects the Secret into
// --cert-dir, which stays empty: the webhook serves the Secret's certificate, read
// through the API, and reports ready as soon as the caBundle verifies it (instant
// readiness: a default kubelet updates the mount only about a minute later). It checks
// that the webhook serves TLS with exactly the Secret's certificate, which the caBundle
// in the webhook configuration verifies for the Service's DNS name, that a review gets
// its patch, and that /metrics shows the injection counter.
func TestRunSelfSignedTLS(t *testing.T) {
	env, err := testenv.New()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := env.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	admin, err := client.New(cfg, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	applyManifest(t, admin, "namespace.yaml", &corev1.Namespace{})
	applyManifest(t, admin, "serviceaccount.yaml", &corev1.ServiceAccount{})
	applyManifest(t, admin, "secret.yaml", &corev1.Secret{})
	applyManifest(t, admin, "rbac.yaml", &rbacv1.Role{}, &rbacv1.RoleBinding{}, &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{})
	applyManifest(t, admin, "metrics-rbac.yaml", &rbacv1.ClusterRole{}, &rbacv1.ClusterRoleBinding{}, &rbacv1.ClusterRole{})
	applyManifest(t, admin, "webhook-config-policy.yaml", &admissionregistrationv1.ValidatingAdmissionPolicy{}, &admissionregistrationv1.ValidatingAdmissionPolicyBinding{})
	applyManifest(t, admin, "mutatingwebhookconfiguration.yaml", &admissionregistrationv1.MutatingWebhookConfiguration{})

	// A kubeconfig that acts as the webhook's ServiceAccount.
	user, err := env.AddUser(envtestUser(), nil)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kubeconfig, kc, 0o600); err != nil {
		t.Fatal(err)
	}
	certDir := filepath.Join(dir, "certs")
	if err := os.Mkdir(certDir, 0o700); err != nil {
		t.Fatal(err)
	}

	port, metricsPort, probePort := testenv.FreePort(t), testenv.FreePort(t), testenv.FreePort(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--kubeconfig=" + kubeconfig, "--cert-dir=" + certDir, "--namespace=leasehold-system",
			"--webhook-port=" + strconv.Itoa(port),
			"--metrics-bind-address=127.0.0.1:" + strconv.Itoa(metricsPort),
			"--health-probe-bind-address=127.0.0.1:" + strconv.Itoa(probePort),
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("run did not return after cancel")
		}
	})

	readyz := func() int {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/readyz", probePort))
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Ready with nothing in --cert-dir: no kubelet mounts the Secret here.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 40*time.Second, true, func(context.Context) (bool, error) {
		select {
		case err := <-done:
			return false, fmt.Errorf("run returned: %w", err)
		default:
		}
		return readyz() == http.StatusOK, nil
	}); err != nil {
		t.Fatalf("/readyz not 200 with an empty --cert-dir: %v", err)
	}
	if files, err := os.ReadDir(certDir); err != nil || len(files) != 0 {
		t.Fatalf("--cert-dir holds %v (%v): the test must not mount anything", files, err)
	}
	secret := &corev1.Secret{}
	if err := admin.Get(ctx, client.ObjectKey{Namespace: "leasehold-system", Name: "leasehold-webhook-tls"}, secret); err != nil {
		t.Fatal(err)
	}
	// The Deployment still mounts the serving key pair (for the rotator's own check,
	// and as --self-signed-certs=false serves it), never the CA's key.
	if keys := mountedCertKeys(t); strings.Join(keys, ",") != "tls.crt,tls.key" {
		t.Errorf("the Deployment mounts %v of the TLS Secret, want tls.crt and tls.key only", keys)
	}

	// Trust exactly what the API server is told to trust.
	mwc := &admissionregistrationv1.MutatingWebhookConfiguration{}
	if err := admin.Get(ctx, client.ObjectKey{Name: "leasehold-webhook"}, mwc); err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(mwc.Webhooks[0].ClientConfig.CABundle) {
		t.Fatal("caBundle is empty")
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		RootCAs: pool, ServerName: "leasehold-webhook.leasehold-system.svc"}}}
	raw, _ := json.Marshal(&corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p", Annotations: map[string]string{webhook.AnnotationLocks: "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "app"}}},
	})
	body, _ := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "1", Namespace: "team-a", Operation: admissionv1.Create,
			Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"}, Object: runtime.RawExtension{Raw: raw}},
	})
	resp, err := hc.Post(fmt.Sprintf("https://127.0.0.1:%d%s", port, webhook.Path), "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatalf("review over TLS, verified with the caBundle: %v", err)
	}
	// The certificate served is the Secret's, byte for byte.
	served := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.TLS.PeerCertificates[0].Raw})
	if first, _ := pem.Decode(secret.Data["tls.crt"]); first == nil || !bytes.Equal(served, pem.EncodeToMemory(first)) {
		t.Errorf("served certificate is not the Secret's tls.crt:\nserved %s\nsecret %s", served, secret.Data["tls.crt"])
	}
	out := admissionv1.AdmissionReview{}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if out.Response == nil || !out.Response.Allowed || !strings.Contains(string(out.Response.Patch), webhook.AgentContainerName) {
		t.Fatalf("want an allowed review with the agent in the patch, got %+v", out.Response)
	}

	// TLS as kubebuilder's scaffold serves it: 1.2 or later, ECDHE with AEAD ciphers
	// at 1.2, no HTTP/2 (CVE-2023-44487, rapid reset).
	t.Run("webhook TLS", func(t *testing.T) {
		handshake := func(c *tls.Config) (tls.ConnectionState, error) {
			c.RootCAs, c.ServerName = pool, "leasehold-webhook.leasehold-system.svc"
			conn, err := tls.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port), c)
			if err != nil {
				return tls.ConnectionState{}, err
			}
			defer conn.Close()
			return conn.ConnectionState(), nil
		}
		if _, err := handshake(&tls.Config{MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS11}); err == nil {
			t.Error("a TLS 1.1 client was served")
		}
		if _, err := handshake(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, tls.TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA,
			tls.TLS_RSA_WITH_AES_128_GCM_SHA256}}); err == nil {
			t.Error("a TLS 1.2 client offering only CBC and non-ECDHE suites was served")
		}
		if st, err := handshake(&tls.Config{MaxVersion: tls.VersionTLS12, CipherSuites: []uint16{
			tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}); err != nil {
			t.Errorf("TLS 1.2 with ECDHE and AES-GCM: %v", err)
		} else if st.Version != tls.VersionTLS12 {
			t.Errorf("negotiated %x, want TLS 1.2", st.Version)
		}
		st, err := handshake(&tls.Config{NextProtos: []string{"h2", "http/1.1"}})
		if err != nil {
			t.Fatalf("TLS 1.3 client offering h2: %v", err)
		}
		if st.Version != tls.VersionTLS13 || st.NegotiatedProtocol == "h2" {
			t.Errorf("negotiated version %x, protocol %q: want TLS 1.3 and no h2", st.Version, st.NegotiatedProtocol)
		}
	})

	// Metrics over HTTPS, for a bearer token that the API server authenticates and
	// authorizes (get on /metrics), with the webhook's own RBAC from
	// manifests/base/metrics-rbac.yaml.
	token := func(t *testing.T, sa string) string {
		t.Helper()
		cs := kubernetes.NewForConfigOrDie(cfg)
		if _, err := cs.CoreV1().ServiceAccounts("monitoring").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		tr, err := cs.CoreV1().ServiceAccounts("monitoring").CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	if err := admin.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "monitoring"}}); err != nil {
		t.Fatal(err)
	}
	if err := admin.Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "prometheus-leasehold"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "leasehold-metrics-reader"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: "monitoring", Name: "prometheus"}}}); err != nil {
		t.Fatal(err)
	}
	prometheus, stranger := token(t, "prometheus"), token(t, "stranger")
	scrape := func(bearer string) (int, string) {
		req, _ := http.NewRequest(http.MethodGet, fmt.Sprintf("https://127.0.0.1:%d/metrics", metricsPort), nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		// The metrics certificate is self-signed (as kube-controller-manager's):
		// Prometheus scrapes it with insecure_skip_verify and its bearer token.
		hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatalf("scrape: %v", err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, _ := scrape(""); code != http.StatusUnauthorized {
		t.Errorf("scrape without a token: %d, want 401", code)
	}
	if code, _ := scrape(stranger); code != http.StatusForbidden {
		t.Errorf("scrape by a ServiceAccount without leasehold-metrics-reader: %d, want 403", code)
	}
	if resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort)); err == nil {
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			t.Errorf("metrics served over plain HTTP")
		}
	}
	code, metrics := scrape(prometheus)
	if code != http.StatusOK {
		t.Fatalf("scrape by prometheus: %d: %s", code, metrics)
	}
	for _, want := range []string{
		`leasehold_webhook_injections_total{outcome="injected"} 1`,
		`controller_runtime_webhook_requests_total{code="200",webhook="/mutate-v1-pod"} 1`,
		`leasehold_webhook_request_duration_seconds_count 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

// envtestUser is the webhook's ServiceAccount as an envtest user (a client
// certificate with the ServiceAccount's user name and groups), so RBAC applies as in
// a cluster.
func envtestUser() envtest.User {
	return envtest.User{
		Name:   "system:serviceaccount:leasehold-system:leasehold-webhook",
		Groups: []string{"system:serviceaccounts", "system:serviceaccounts:leasehold-system", "system:authenticated"},
	}
}

// Certificate durations that would renew on every check are refused before anything
// starts, naming the flags.
func TestRunRefusesCertDurationsThatRenewOnEveryCheck(t *testing.T) {
	err := run(context.Background(), []string{"--cert-validity=24h", "--cert-renew-before=48h", "--ca-validity=12h", "--cert-check-interval=-1s"})
	if err == nil {
		t.Fatal("bad certificate durations accepted")
	}
	for _, want := range []string{
		"--cert-renew-before=48h0m0s must be shorter than --cert-validity=24h0m0s",
		"--cert-renew-before=48h0m0s must be shorter than --ca-validity=12h0m0s",
		"--cert-validity=24h0m0s must not be longer than --ca-validity=12h0m0s",
		"--cert-check-interval=-1s must not be negative",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
	if err := run(context.Background(), []string{"--cert-validity=2m", "--cert-renew-before=117s", "--ca-validity=1h", "--kubeconfig=/nonexistent"}); err == nil ||
		strings.Contains(err.Error(), "--cert-") {
		t.Fatalf("valid durations: want only the kubeconfig error, got %v", err)
	}
}

// mountedCertKeys are the keys of the TLS Secret that manifests/base/deployment.yaml
// mounts into the webhook's Pods (the certs volume's items).
func mountedCertKeys(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "manifests", "base", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	d := &appsv1.Deployment{}
	if err := yaml.UnmarshalStrict(b, d); err != nil {
		t.Fatal(err)
	}
	for _, v := range d.Spec.Template.Spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != "leasehold-webhook-tls" {
			continue
		}
		var keys []string
		for _, it := range v.Secret.Items {
			if it.Path != it.Key {
				t.Fatalf("secret key %s mounted as %s: the webhook reads tls.crt and tls.key", it.Key, it.Path)
			}
			keys = append(keys, it.Key)
		}
		if len(keys) == 0 {
			t.Fatal("the Deployment mounts the whole TLS Secret, the CA's key included: list the items to mount")
		}
		return keys
	}
	t.Fatal("the Deployment does not mount leasehold-webhook-tls")
	return nil
}

// An API server older than 1.28 (it would ignore the webhook configuration's
// matchConditions) is refused at start, with the reason and the fix, before anything
// else runs. The API server here is a stand-in that only answers /version.
func TestRunRefusesAnOldAPIServer(t *testing.T) {
	for _, tc := range []struct {
		version, want string
		args          []string
	}{
		{"v1.27.16", "the API server is Kubernetes v1.27.16; Leasehold needs 1.28 or later", nil},
		{"v1.28.15", "native sidecars need Kubernetes 1.29 or later; fix: upgrade the cluster, or run the webhook with --plain-container", nil},
	} {
		t.Run(tc.version, func(t *testing.T) {
			apiServer := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/version" {
					http.NotFound(w, r)
					return
				}
				minor := strings.Split(tc.version, ".")[1]
				_ = json.NewEncoder(w).Encode(map[string]string{"major": "1", "minor": minor, "gitVersion": tc.version})
			}))
			defer apiServer.Close()
			kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
			kc := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: %q}\ncontexts:\n- name: c\n  context: {cluster: c, user: u}\n"+
				"current-context: c\nusers:\n- name: u\n  user: {token: t}\n", apiServer.URL)
			if err := os.WriteFile(kubeconfig, []byte(kc), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			err := run(ctx, append([]string{"--kubeconfig=" + kubeconfig, "--cert-dir=" + t.TempDir(),
				"--metrics-bind-address=0", "--health-probe-bind-address=0", "--webhook-port=" + strconv.Itoa(testenv.FreePort(t))}, tc.args...))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("run against Kubernetes %s: %v\nwant an error saying %q", tc.version, err, tc.want)
			}
		})
	}
}
