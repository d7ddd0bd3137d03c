package webhook

import (
	"errors"
	"fmt"
	"time"

	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// CertOptions name what the self-managed TLS maintains.
type CertOptions struct {
	// Namespace, SecretName: the Secret holding ca.crt, ca.key, tls.crt, tls.key. It is
	// mounted into the webhook Pods at CertDir.
	Namespace, SecretName string
	// ServiceName is the webhook's Service; the serving certificate is for
	// <ServiceName>.<Namespace>.svc (and .svc.cluster.local).
	ServiceName string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept current.
	WebhookConfigName string
	// CertDir is where the Secret is mounted.
	CertDir string
	// ServerCertValidity, CAValidity: how long a new serving certificate and a new CA
	// are valid; RenewBefore: how long before its end a certificate is replaced;
	// CheckEvery: how often that is checked. Zero means cert-controller's defaults
	// (DefaultServerCertValidity and the others below).
	ServerCertValidity, CAValidity, RenewBefore, CheckEvery time.Duration
	// ControllerName names the rotator's controller (default "cert-rotator"); names
	// must be unique within a process.
	ControllerName string
}

// cert-controller's defaults, the webhook's flag defaults.
const (
	DefaultServerCertValidity = 365 * 24 * time.Hour
	DefaultCAValidity         = 10 * 365 * 24 * time.Hour
	DefaultRenewBefore        = 90 * 24 * time.Hour
	DefaultCheckEvery         = 12 * time.Hour
)

// Validate reports negative durations, and durations that would make the rotator
// replace a certificate on every check, naming the webhook flag to fix.
func (o CertOptions) Validate() error {
	var errs []error
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{{"--cert-validity", o.ServerCertValidity}, {"--ca-validity", o.CAValidity}, {"--cert-renew-before", o.RenewBefore}, {"--cert-check-interval", o.CheckEvery}} {
		if d.v < 0 {
			errs = append(errs, fmt.Errorf("%s=%s must not be negative (0 = the default)", d.flag, d.v))
		}
	}
	orDefault := func(v, def time.Duration) time.Duration {
		if v == 0 {
			return def
		}
		return v
	}
	cert, ca := orDefault(o.ServerCertValidity, DefaultServerCertValidity), orDefault(o.CAValidity, DefaultCAValidity)
	before := orDefault(o.RenewBefore, DefaultRenewBefore)
	if before >= cert {
		errs = append(errs, fmt.Errorf("--cert-renew-before=%s must be shorter than --cert-validity=%s, or every check renews the certificate", before, cert))
	}
	if before >= ca {
		errs = append(errs, fmt.Errorf("--cert-renew-before=%s must be shorter than --ca-validity=%s, or every check replaces the CA", before, ca))
	}
	if cert > ca {
		errs = append(errs, fmt.Errorf("--cert-validity=%s must not be longer than --ca-validity=%s", cert, ca))
	}
	return errors.Join(errs...)
}

// AddCertRotator adds open-policy-agent/cert-controller's rotator to mgr: it creates a
// CA and a serving certificate in the Secret, renews them before they expire, and
// writes the CA into the webhook configuration's caBundle. The returned channel is
// closed once the certificate is mounted at CertDir and the CA injected; the webhook
// does not wait for the mount (SecretCertificate.WaitTrusted).
func AddCertRotator(mgr manager.Manager, o CertOptions) (<-chan struct{}, error) {
	ready := make(chan struct{})
	dns := fmt.Sprintf("%s.%s.svc", o.ServiceName, o.Namespace)
	err := rotator.AddRotator(mgr, &rotator.CertRotator{
		SecretKey:      types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName},
		CertDir:        o.CertDir,
		CAName:         "leasehold-ca",
		CAOrganization: "leasehold",
		DNSName:        dns,
		ExtraDNSNames:  []string{dns + ".cluster.local"},
		IsReady:        ready,
		Webhooks:       []rotator.WebhookInfo{{Name: o.WebhookConfigName, Type: rotator.Mutating}},
		// Every replica rotates; the Secret's resourceVersion settles conflicts.
		RequireLeaderElection: false,
		// Write the caBundle as soon as the Secret is filled, without waiting for the
		// kubelet to mount it: the webhook serves the Secret's certificate through the
		// API (SecretCertificate) and reports ready once the caBundle verifies it.
		EnableReadinessCheck:   false,
		FieldOwner:             "leasehold-webhook",
		ServerCertDuration:     o.ServerCertValidity,
		CaCertDuration:         o.CAValidity,
		LookaheadInterval:      o.RenewBefore,
		RotationCheckFrequency: o.CheckEvery,
		ControllerName:         o.ControllerName,
	})
	if err != nil {
		return nil, fmt.Errorf("add cert rotator: %w", err)
	}
	return ready, nil
}
