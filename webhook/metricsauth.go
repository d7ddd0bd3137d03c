package webhook

import (
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/go-logr/logr"
	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/cache"
	authnclient "k8s.io/client-go/kubernetes/typed/authentication/v1"
	authzclient "k8s.io/client-go/kubernetes/typed/authorization/v1"
	"k8s.io/client-go/rest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
)

// How long a scraper's token stays authenticated and authorized without asking the API
// server again: the TTLs of controller-runtime's filters (TokenReview 1 minute,
// SubjectAccessReview allowed 5 minutes), so a revoked binding takes effect within a
// minute; a denial is remembered 30 seconds.
const (
	metricsAllowTTL = time.Minute
	metricsDenyTTL  = 30 * time.Second
)

// MetricsAuth is a metrics server FilterProvider (metricsserver.Options.FilterProvider)
// that serves /metrics only to clients whose bearer token the API server authenticates
// (TokenReview) and authorizes for the request's verb on its non-resource path
// (SubjectAccessReview: get on /metrics), as kubebuilder's scaffold does: 401 without
// a valid token, 403 when not allowed, 500 when the API server cannot answer.
//
// Hand-written rather than controller-runtime's filters.WithAuthenticationAndAuthorization,
// which does the same two reviews through k8s.io/apiserver's delegating authenticator
// and authorizer: linking k8s.io/apiserver (with CEL, OpenTelemetry, gRPC) ran some 130
// more package initialisers at start and cost the webhook 17 MiB of resident memory,
// measured (BENCHMARKS.md, "Webhook memory").
func MetricsAuth(cfg *rest.Config, httpClient *http.Client) (metricsserver.Filter, error) {
	authn, err := authnclient.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	authz, err := authzclient.NewForConfigAndClient(cfg, httpClient)
	if err != nil {
		return nil, err
	}
	decisions := cache.NewLRUExpireCache(256)
	return func(log logr.Logger, next http.Handler) (http.Handler, error) {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			// As k8s.io/apiserver's bearer token authenticator: "Bearer" in any case.
			scheme, token, _ := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
			if token = strings.TrimSpace(token); !strings.EqualFold(scheme, "bearer") || token == "" {
				http.Error(w, "Unauthorized: send a bearer token allowed to get "+r.URL.Path, http.StatusUnauthorized)
				return
			}
			verb := strings.ToLower(r.Method)
			key := fmt.Sprintf("%x %s %s", sha256.Sum256([]byte(token)), verb, r.URL.Path)
			code, cached := 0, false
			if v, ok := decisions.Get(key); ok {
				code, cached = v.(int), true
			}
			var user string
			if !cached {
				ctx := r.Context()
				tr, err := authn.TokenReviews().Create(ctx, &authenticationv1.TokenReview{Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
				if err != nil {
					log.Error(err, "Authentication failed")
					http.Error(w, "Authentication failed", http.StatusInternalServerError)
					return
				}
				code = http.StatusOK
				if !tr.Status.Authenticated {
					code = http.StatusUnauthorized
				} else {
					u := tr.Status.User
					user = u.Username
					extra := map[string]authorizationv1.ExtraValue{}
					for k, v := range u.Extra {
						extra[k] = authorizationv1.ExtraValue(v)
					}
					sar, err := authz.SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
						User: u.Username, UID: u.UID, Groups: u.Groups, Extra: extra,
						NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: r.URL.Path, Verb: verb},
					}}, metav1.CreateOptions{})
					if err != nil {
						msg := "Authorization for user " + user + " failed"
						log.Error(err, msg)
						http.Error(w, msg, http.StatusInternalServerError)
						return
					}
					if !sar.Status.Allowed || sar.Status.Denied {
						code = http.StatusForbidden
						log.V(4).Info("Metrics scrape denied", "user", user, "reason", sar.Status.Reason)
					}
				}
				ttl := metricsAllowTTL
				if code != http.StatusOK {
					ttl = metricsDenyTTL
				}
				decisions.Add(key, code, ttl)
			}
			switch code {
			case http.StatusOK:
				next.ServeHTTP(w, r)
			case http.StatusUnauthorized:
				http.Error(w, "Unauthorized: the API server does not authenticate this token", http.StatusUnauthorized)
			default:
				http.Error(w, "Forbidden: this token is not allowed to "+verb+" "+r.URL.Path+" (bind the ClusterRole leasehold-metrics-reader)", http.StatusForbidden)
			}
		}), nil
	}, nil
}
