// Command leasehold-webhook serves Leasehold's mutating admission webhook: it injects
// the lock agent into Pods annotated with leasehold.io/locks or leasehold.io/leader.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"slices"

	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	crwebhook "sigs.k8s.io/controller-runtime/pkg/webhook"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"

	"github.com/leasehold/leasehold/internal/version"
	"github.com/leasehold/leasehold/webhook"
)

func main() {
	if err := run(ctrl.SetupSignalHandler(), os.Args[1:]); err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintln(os.Stderr, "leasehold-webhook:", err)
		os.Exit(1)
	}
}

// run parses args and serves until ctx ends.
func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("leasehold-webhook", flag.ContinueOnError)
	opts := webhook.DefaultOptions()
	opts.BindFlags(fs)
	var (
		port        = fs.Int("webhook-port", 9443, "Port of the webhook's HTTPS server.")
		metricsAddr = fs.String("metrics-bind-address", ":8443", `Address of the Prometheus metrics endpoint ("0" = off).`)
		metricsSec  = fs.Bool("metrics-secure", true,
			"Serve metrics over HTTPS to clients whose bearer token the API server authenticates and authorizes (get on /metrics); "+
				"false serves them over plain HTTP to anyone (local tests only).")
		probeAddr  = fs.String("health-probe-bind-address", ":8081", "Address of /healthz and /readyz.")
		selfSigned = fs.Bool("self-signed-certs", true,
			"Create and rotate the webhook's own CA and serving certificate in --secret-name and keep the webhook configuration's caBundle current. "+
				"Set to false when cert-manager (or anything else) fills --cert-dir and the caBundle.")
		fromSecret = fs.Bool("cert-from-secret", false,
			"Serve the certificate of --secret-name read through the API (a watch on that Secret; get, list and watch on it) instead of from --cert-dir, "+
				"and report ready once the webhook configuration's caBundle verifies it: no wait for the kubelet to update the mounted Secret (about a minute). "+
				"Always on with --self-signed-certs; set it with cert-manager.")
		certs  = webhook.CertOptions{}
		limits = webhook.DefaultReviewLimits()
		srvOpt = webhook.DefaultServerOptions()
		debug  = fs.Bool("debug", false, "Log at debug level (V(1): every injection).")
		showV  = fs.Bool("version", false, "Print the version and exit.")
	)
	fs.StringVar(&certs.CertDir, "cert-dir", "/certs", "Directory holding tls.crt and tls.key (the mounted Secret).")
	fs.StringVar(&certs.SecretName, "secret-name", "leasehold-webhook-tls", "Secret holding the webhook's CA and serving certificate.")
	fs.StringVar(&certs.ServiceName, "service-name", "leasehold-webhook", "The webhook's Service (the certificate's DNS name).")
	fs.StringVar(&certs.WebhookConfigName, "webhook-config-name", "leasehold-webhook", "The MutatingWebhookConfiguration whose caBundle is kept current.")
	fs.DurationVar(&certs.ServerCertValidity, "cert-validity", webhook.DefaultServerCertValidity, "With --self-signed-certs: how long a new serving certificate is valid.")
	fs.DurationVar(&certs.CAValidity, "ca-validity", webhook.DefaultCAValidity, "With --self-signed-certs: how long a new CA is valid.")
	fs.DurationVar(&certs.RenewBefore, "cert-renew-before", webhook.DefaultRenewBefore, "With --self-signed-certs: renew a certificate this long before it expires.")
	fs.DurationVar(&certs.CheckEvery, "cert-check-interval", webhook.DefaultCheckEvery, "With --self-signed-certs: how often expiry is checked.")
	limits.BindFlags(fs)
	srvOpt.BindFlags(fs)
	kubeconfig := fs.String("kubeconfig", "", "Path to a kubeconfig; only outside a cluster (default: in-cluster config, or $KUBECONFIG).")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *showV {
		fmt.Println(version.String("leasehold-webhook"))
		return nil
	}
	if err := errors.Join(opts.Validate(), certs.Validate(), limits.Validate(), srvOpt.Validate()); err != nil {
		return err
	}
	certs.Namespace = opts.Namespace

	level := zapcore.InfoLevel
	if *debug {
		level = zapcore.DebugLevel
	}
	zcfg := zap.NewProductionConfig()
	zcfg.Level = zap.NewAtomicLevelAt(level)
	zl, err := zcfg.Build()
	if err != nil {
		return fmt.Errorf("build logger: %w", err)
	}
	log := zapr.NewLogger(zl)
	ctrl.SetLogger(log)

	// The manager's client and cache see typed Secrets only (the cert rotator's; it
	// reads the webhook configuration as unstructured), so its scheme holds core/v1
	// rather than every built-in group. (controller-runtime's client still links
	// client-go's scheme of every group: BENCHMARKS.md, "Webhook memory".)
	scheme := runtime.NewScheme()
	if err := corev1.AddToScheme(scheme); err != nil {
		return err
	}
	tlsOpts := []func(*tls.Config){webhook.SecureTLS}
	metricsOpts := metricsserver.Options{BindAddress: *metricsAddr, SecureServing: *metricsSec, TLSOpts: tlsOpts}
	if *metricsSec {
		// As kubebuilder's scaffold: TokenReview and SubjectAccessReview, as the
		// webhook's ServiceAccount (manifests/base/metrics-rbac.yaml), for every scrape
		// (cached a minute). The certificate is self-signed, generated at start.
		metricsOpts.FilterProvider = webhook.MetricsAuth
	}
	var restConfig *rest.Config
	if *kubeconfig != "" {
		restConfig, err = clientcmd.BuildConfigFromFlags("", *kubeconfig)
	} else {
		restConfig, err = ctrl.GetConfig()
	}
	if err != nil {
		return fmt.Errorf("load kubeconfig: %w", err)
	}
	// Refuse an API server that would ignore the webhook configuration's
	// matchConditions (older than 1.28), or lacks native sidecars, before serving.
	dc, err := discovery.NewDiscoveryClientForConfig(restConfig)
	if err != nil {
		return fmt.Errorf("discovery client: %w", err)
	}
	serverVersion, err := dc.ServerVersion()
	if err != nil {
		return fmt.Errorf("ask the API server its version: %w", err)
	}
	if err := webhook.CheckServerVersion(serverVersion, opts.PlainContainer); err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restConfig, ctrl.Options{
		Scheme:                 scheme,
		Metrics:                metricsOpts,
		HealthProbeBindAddress: *probeAddr,
		// The manager's own cache is never used for Pods: admission makes no API call.
		// Keep it to the webhook's namespace so that nothing cluster-wide is cached.
		Cache:  cache.Options{DefaultNamespaces: map[string]cache.Config{opts.Namespace: {}}},
		Client: client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}

	serverTLS := tlsOpts
	certsReady := make(chan struct{})
	if *selfSigned {
		if _, err = webhook.AddCertRotator(mgr, certs); err != nil {
			return err
		}
	}
	if *selfSigned || *fromSecret {
		// Serve the Secret's certificate as soon as the rotator (or cert-manager) has
		// written it, read through the API rather than from the volume, which the
		// kubelet updates only on its next sync (about a minute); ready once the
		// caBundle verifies it.
		cs, err := kubernetes.NewForConfig(restConfig)
		if err != nil {
			return err
		}
		secretCert := webhook.NewSecretCertificate(cs, certs.Namespace, certs.SecretName, log.WithName("certs"))
		if err := mgr.Add(secretCert); err != nil {
			return err
		}
		serverTLS = append(slices.Clone(tlsOpts), func(c *tls.Config) { c.GetCertificate = secretCert.GetCertificate })
		dns := fmt.Sprintf("%s.%s.svc", certs.ServiceName, certs.Namespace)
		if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
			if err := secretCert.WaitTrusted(ctx, certs.WebhookConfigName, dns); err != nil {
				return nil // ctx ended
			}
			log.Info("Serving certificate trusted by the webhook configuration's caBundle", "secret", certs.SecretName)
			close(certsReady)
			return nil
		})); err != nil {
			return err
		}
	} else {
		close(certsReady)
	}
	// controller-runtime's webhook server, with a read timeout on every request, a
	// per-peer connection cap and, with --client-ca-file, client certificates required.
	server := webhook.NewServer(crwebhook.Options{Port: *port, CertDir: certs.CertDir, TLSOpts: serverTLS}, srvOpt)

	// Serve once the certificate is there and the caBundle written: the server cannot
	// start without a certificate, and must not report ready before the API server
	// trusts it. With --self-signed-certs it serves the Secret's certificate, renewed
	// as the Secret changes; without, it reloads tls.crt when the mounted Secret changes.
	// Reviews over --max-review-bytes are refused unread; those in flight are bounded
	// by --max-in-flight-review-bytes (the memory limit in manifests/ is sized for it).
	server.Register(webhook.Path, webhook.Instrument(webhook.Guard(&admission.Webhook{Handler: webhook.NewPodInjector(opts)}, limits)))
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		select {
		case <-certsReady:
		case <-ctx.Done():
			return nil
		}
		return server.Start(ctx)
	})); err != nil {
		return err
	}

	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("certs", func(*http.Request) error {
		select {
		case <-certsReady:
			return nil
		default:
			return errors.New("waiting for the serving certificate and the caBundle")
		}
	}); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("webhook", server.StartedChecker()); err != nil {
		return err
	}

	log.Info("Starting webhook", "version", version.Version(), "port", *port, "agentImage", opts.AgentImage, "plainContainer", opts.PlainContainer,
		"selfSignedCerts", *selfSigned, "certFromSecret", *selfSigned || *fromSecret, "namespace", opts.Namespace, "kubernetes", serverVersion.GitVersion)
	return mgr.Start(ctx)
}
