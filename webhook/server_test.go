package webhook

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
)

// testCA is a CA for the tests' serving and client certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t testing.TB, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue signs a certificate for name: a serving one for 127.0.0.1 and localhost, or a
// client one.
func (ca *testCA) issue(t testing.TB, name string, client bool) (tls.Certificate, []byte, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
	}
	if client {
		tmpl.ExtKeyUsage, tmpl.IPAddresses, tmpl.DNSNames = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, nil, nil
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return pair, certPEM, keyPEM
}

func (ca *testCA) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.cert)
	return p
}

// freePort is a loopback port nothing listens on.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startTestServer serves the injector as cmd/leasehold-webhook does (Server with
// defence, Instrument, Guard(limits), admission.Webhook, PodInjector) on a loopback
// port, with a serving certificate from ca. It returns the server's address.
func startTestServer(t testing.TB, ca *testCA, defence ServerOptions, limits ReviewLimits) string {
	t.Helper()
	return startServerWith(t, ca, func(o crwebhook.Options) crwebhook.Server { return NewServer(o, defence) }, limits)
}

// startServerWith is startTestServer with the server newServer makes.
func startServerWith(t testing.TB, ca *testCA, newServer func(crwebhook.Options) crwebhook.Server, limits ReviewLimits) string {
	t.Helper()
	serving, _, _ := ca.issue(t, "leasehold-webhook", false)
	port := freePort(t)
	server := newServer(crwebhook.Options{Host: "127.0.0.1", Port: port, TLSOpts: []func(*tls.Config){SecureTLS,
		func(c *tls.Config) {
			c.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &serving, nil }
		}}})
	server.Register(Path, Instrument(Guard(&admission.Webhook{Handler: NewPodInjector(DefaultOptions())}, limits)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- server.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("webhook server: %v", err)
		}
	})
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		// A whole handshake: a bare TCP connection would be logged as a failed one.
		c, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1"})
		if err == nil {
			_ = c.Close()
		}
		return err == nil, nil
	}); err != nil {
		t.Fatalf("webhook server did not listen on %s: %v", addr, err)
	}
	return addr
}

// fromAddr dials from the loopback address src (127.0.0.0/8 is all on lo), so that a
// test can be several peers.
func fromAddr(src string) *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(src)}, Timeout: 5 * time.Second}
}

// apiServerClient is an HTTPS client as the API server's webhook client: keep-alive
// connections from 127.0.0.1, trusting ca, presenting cert if given.
func apiServerClient(ca *testCA, cert *tls.Certificate) *http.Client {
	tc := &tls.Config{RootCAs: ca.pool(), ServerName: "127.0.0.1"}
	if cert != nil {
		tc.Certificates = []tls.Certificate{*cert}
	}
	return &http.Client{Transport: &http.Transport{
		DialContext: fromAddr("127.0.0.1").DialContext, TLSClientConfig: tc,
		MaxIdleConnsPerHost: 25, ForceAttemptHTTP2: false,
	}}
}

// annotatedReview is the AdmissionReview the API server sends for creating an
// annotated Pod.
func annotatedReview(t testing.TB, uid string) []byte {
	t.Helper()
	pod := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: uid, Annotations: map[string]string{AnnotationLocks: "db"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "example.com/app:1"}}},
	}
	body, err := json.Marshal(admissionv1.AdmissionReview{
		TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{
			UID: types.UID(uid), Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Resource:  metav1.GroupVersionResource{Version: "v1", Resource: "pods"},
			Namespace: "team-a", Name: uid, Operation: admissionv1.Create,
			Object: kruntime.RawExtension{Raw: podJSON(t, pod)},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return body
}

// webhookTimeout is the timeoutSeconds of the MutatingWebhookConfiguration users apply:
// the API server fails the Pod create (failurePolicy Fail) when no answer came by then.
func webhookTimeout(t *testing.T) time.Duration {
	t.Helper()
	cfg := &admissionregistrationv1.MutatingWebhookConfiguration{}
	decodeManifests(t, "mutatingwebhookconfiguration.yaml", cfg)
	if len(cfg.Webhooks) != 1 || cfg.Webhooks[0].TimeoutSeconds == nil {
		t.Fatalf("manifests/base/mutatingwebhookconfiguration.yaml: want one webhook with timeoutSeconds, got %+v", cfg.Webhooks)
	}
	return time.Duration(*cfg.Webhooks[0].TimeoutSeconds) * time.Second
}

// admit sends one review as the API server does, giving up at the webhook timeout as
// it does, and returns the answer (nil when there was none in time) and the time taken.
func admit(ctx context.Context, c *http.Client, addr string, body []byte, timeout time.Duration) (*admissionv1.AdmissionResponse, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+Path+"?timeout="+timeout.String(), bytes.NewReader(body))
	if err != nil {
		return nil, 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	start := time.Now()
	resp, err := c.Do(req)
	if err != nil {
		return nil, time.Since(start), err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	took := time.Since(start)
	if err != nil {
		return nil, took, err
	}
	out := admissionv1.AdmissionReview{}
	if err := json.Unmarshal(raw, &out); err != nil || out.Response == nil {
		return nil, took, fmt.Errorf("HTTP %d, no AdmissionReview: %.300s", resp.StatusCode, raw)
	}
	return out.Response, took, nil
}

// attack holds, until ctx ends, slow connections against addr from the loopback
// addresses srcs: per address, slowBody connections that announce a 4 MiB review and
// send it three bytes a second, and halfOpen connections that send half a TLS
// ClientHello and nothing more. A connection the server cuts is opened again (after a
// short pause), as an attacker would. It returns the number of connections opened.
func attack(ctx context.Context, t testing.TB, addr string, srcs []string, slowBody, halfOpen int) *atomic.Int64 {
	t.Helper()
	var opened atomic.Int64
	var wg sync.WaitGroup
	hold := func(src string, one func(net.Conn)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				c, err := fromAddr(src).DialContext(ctx, "tcp", addr)
				if err != nil {
					sleepCtx(ctx, 100*time.Millisecond)
					continue
				}
				opened.Add(1)
				stop := context.AfterFunc(ctx, func() { _ = c.Close() })
				one(c)
				stop()
				_ = c.Close()
				sleepCtx(ctx, 50*time.Millisecond)
			}
		})
	}
	for _, src := range srcs {
		for range slowBody {
			hold(src, func(raw net.Conn) {
				c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}) //nolint:gosec // an attacker trusts anything
				if c.HandshakeContext(ctx) != nil {
					return
				}
				if _, err := io.WriteString(c, "POST "+Path+" HTTP/1.1\r\nHost: leasehold-webhook\r\nContent-Type: application/json\r\n"+
					"Content-Length: 4194304\r\n\r\n"); err != nil {
					return
				}
				for ctx.Err() == nil {
					if _, err := c.Write([]byte(`{"a`)); err != nil {
						return
					}
					sleepCtx(ctx, time.Second)
				}
			})
		}
		for range halfOpen {
			hold(src, func(c net.Conn) {
				// A TLS record header announcing a 512-byte handshake message, and the
				// start of a ClientHello: the server waits for the rest.
				if _, err := c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xde, 0xad}); err != nil {
					return
				}
				_, _ = io.Copy(io.Discard, c) // until the server or the test closes it
			})
		}
	}
	t.Cleanup(wg.Wait)
	return &opened
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// attackers are loopback addresses other than the API server's (127.0.0.1): Pods
// elsewhere in the cluster, each under the per-peer connection cap.
func attackers(n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("127.0.0.%d", i+2)
	}
	return out
}

// TestSlowClientsDoNotStopAdmission is the finding "one slow connection stops every
// annotated Pod create": while 300 connections announce 4 MiB reviews and trickle them
// at 3 bytes a second and 300 more send half a TLS ClientHello (from ten addresses,
// each under --max-connections-per-peer, so the cap is not what saves it), every one of
// 120 reviews of annotated Pods from the API server's address, sent over six seconds,
// is answered, allowed and patched before the webhook configuration's timeoutSeconds,
// when the API server would have failed the Pod create.
func TestSlowClientsDoNotStopAdmission(t *testing.T) {
	ca := newTestCA(t, "serving-ca")
	addr := startTestServer(t, ca, DefaultServerOptions(), DefaultReviewLimits())
	timeout := webhookTimeout(t)
	ctx, stop := context.WithCancel(context.Background())
	opened := attack(ctx, t, addr, attackers(10), 30, 30)
	t.Cleanup(stop)

	// Let the attack take hold: every attacking connection open at least once.
	if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return opened.Load() >= 600, nil
	}); err != nil {
		t.Fatalf("the attack opened %d connections, want 600", opened.Load())
	}
	busy := testutil.ToFloat64(Refusals.WithLabelValues(RefusedBusy))

	c := apiServerClient(ca, nil)
	const reviews = 120
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		failures []string
		slowest  time.Duration
	)
	// One review every 50 ms, for six seconds: across several of the attackers' rounds
	// (the server cuts them after --request-read-timeout; they come back).
	sem := make(chan struct{}, 8) // the API server's reviews in flight at once
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := range reviews {
		<-tick.C
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			uid := fmt.Sprintf("pod-%d", i)
			resp, took, err := admit(context.Background(), c, addr, annotatedReview(t, uid), timeout)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			switch {
			case err != nil:
				failures = append(failures, fmt.Sprintf("%s: no answer within the webhook timeout %s (after %s): %v", uid, timeout, took.Round(time.Millisecond), err))
			case string(resp.UID) != uid || !resp.Allowed || len(resp.Patch) == 0:
				msg := ""
				if resp.Result != nil {
					msg = resp.Result.Message
				}
				failures = append(failures, fmt.Sprintf("%s: want allowed with a patch, got uid=%q allowed=%v patch=%dB after %s: %s",
					uid, resp.UID, resp.Allowed, len(resp.Patch), took.Round(time.Millisecond), msg))
			}
		})
	}
	wg.Wait()
	stop()
	t.Logf("attack connections opened: %d; slowest review: %s", opened.Load(), slowest.Round(time.Millisecond))
	if len(failures) > 0 {
		t.Errorf("%d of %d reviews of annotated Pods failed during the attack; first ones:\n%s", len(failures), reviews,
			joinFirst(failures, 5))
	}
	if n := testutil.ToFloat64(Refusals.WithLabelValues(RefusedBusy)) - busy; n != 0 {
		t.Errorf("%v reviews were refused as busy during the attack, want none", n)
	}
}

func joinFirst(s []string, n int) string {
	var b bytes.Buffer
	for i, l := range s {
		if i == n {
			fmt.Fprintf(&b, "... and %d more\n", len(s)-n)
			break
		}
		b.WriteString(l + "\n")
	}
	return b.String()
}

// TestServerCapsConnectionsPerPeer: one address gets at most --max-connections-per-peer
// connections at once (the excess is closed when accepted and counted), and the API
// server's address is still served meanwhile.
func TestServerCapsConnectionsPerPeer(t *testing.T) {
	ca := newTestCA(t, "serving-ca")
	defence := DefaultServerOptions()
	defence.ReadTimeout = time.Minute // the connections below stay until the test closes them
	defence.MaxConnsPerPeer = 20
	addr := startTestServer(t, ca, defence, DefaultReviewLimits())
	before := testutil.ToFloat64(ConnectionsRefused.WithLabelValues(RefusedPeerLimit))

	const extra = 15
	var conns []net.Conn
	t.Cleanup(func() {
		for _, c := range conns {
			_ = c.Close()
		}
	})
	for range defence.MaxConnsPerPeer + extra {
		c, err := fromAddr("127.0.0.2").Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	if err := wait.PollUntilContextTimeout(context.Background(), 20*time.Millisecond, 10*time.Second, true, func(context.Context) (bool, error) {
		return testutil.ToFloat64(ConnectionsRefused.WithLabelValues(RefusedPeerLimit))-before >= extra, nil
	}); err != nil {
		t.Fatalf("connections refused over the per-peer cap: %v, want %d",
			testutil.ToFloat64(ConnectionsRefused.WithLabelValues(RefusedPeerLimit))-before, extra)
	}
	// The refused ones are closed: they read EOF (or a reset), the others nothing.
	closed := 0
	for _, c := range conns {
		_ = c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if _, err := c.Read(make([]byte, 1)); err != nil && !isTimeout(err) {
			closed++
		}
	}
	if closed != extra {
		t.Errorf("%d connections from one address were closed by the server, want the %d over the cap", closed, extra)
	}

	resp, _, err := admit(context.Background(), apiServerClient(ca, nil), addr, annotatedReview(t, "pod-1"), webhookTimeout(t))
	if err != nil || !resp.Allowed || len(resp.Patch) == 0 {
		t.Fatalf("review from another address while one address is at the cap: %+v, %v", resp, err)
	}
	if n := testutil.ToFloat64(ConnectionsRefused.WithLabelValues(RefusedPeerLimit)) - before; n != extra {
		t.Errorf("connections refused: %v, want %d", n, extra)
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestServerRequiresClientCertificate: with --client-ca-file, only a client presenting
// a certificate of that CA gets an answer; without a certificate, or with another
// CA's, the TLS handshake fails and no review is read.
func TestServerRequiresClientCertificate(t *testing.T) {
	serving := newTestCA(t, "serving-ca")
	clientCA := newTestCA(t, "admission-client-ca")
	other := newTestCA(t, "other-ca")
	dir := t.TempDir()
	caFile := filepath.Join(dir, "client-ca.crt")
	if err := os.WriteFile(caFile, clientCA.pem, 0o600); err != nil {
		t.Fatal(err)
	}
	defence := DefaultServerOptions()
	defence.ClientCAFile = caFile
	if err := defence.Validate(); err != nil {
		t.Fatal(err)
	}
	addr := startTestServer(t, serving, defence, DefaultReviewLimits())
	timeout := webhookTimeout(t)
	good, _, _ := clientCA.issue(t, "kube-apiserver", true)
	bad, _, _ := other.issue(t, "kube-apiserver", true)

	tests := map[string]struct {
		cert    *tls.Certificate
		allowed bool
	}{
		"certificate of the client CA": {cert: &good, allowed: true},
		"no certificate":               {cert: nil},
		"certificate of another CA":    {cert: &bad},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := reviews()
			resp, _, err := admit(context.Background(), apiServerClient(serving, tc.cert), addr, annotatedReview(t, "pod-1"), timeout)
			if tc.allowed {
				if err != nil || !resp.Allowed || len(resp.Patch) == 0 {
					t.Fatalf("want allowed with a patch, got %+v, %v", resp, err)
				}
				return
			}
			if err == nil {
				t.Fatalf("want the TLS handshake refused, got an answer: %+v", resp)
			}
			if n := reviews() - before; n != 0 {
				t.Errorf("the injector handled %v reviews from a client without a valid certificate", n)
			}
		})
	}

	t.Run("a file without a certificate is refused at start", func(t *testing.T) {
		empty := filepath.Join(dir, "empty.crt")
		if err := os.WriteFile(empty, []byte("not a certificate\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		o := DefaultServerOptions()
		o.ClientCAFile = empty
		if err := o.Validate(); err == nil {
			t.Error("Validate accepted a --client-ca-file with no certificate")
		}
	})
}
