package webhook

import (
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/version"
)

func TestCheckServerVersion(t *testing.T) {
	tests := map[string]struct {
		info  version.Info
		plain bool
		want  string // in the error; "" = accepted
	}{
		"1.37":                                 {info: version.Info{GitVersion: "v1.37.2", Major: "1", Minor: "37"}},
		"1.29":                                 {info: version.Info{GitVersion: "v1.29.0", Major: "1", Minor: "29"}},
		"1.30 of a provider":                   {info: version.Info{GitVersion: "v1.30.4-gke.1348000", Major: "1", Minor: "30+"}},
		"1.29 pre-release":                     {info: version.Info{GitVersion: "v1.29.0-rc.1", Major: "1", Minor: "29"}},
		"1.28 with plain containers":           {info: version.Info{GitVersion: "v1.28.15-eks-123", Major: "1", Minor: "28+"}, plain: true},
		"1.28 with native sidecars":            {info: version.Info{GitVersion: "v1.28.15", Major: "1", Minor: "28"}, want: "native sidecars need Kubernetes 1.29 or later; fix: upgrade the cluster, or run the webhook with --plain-container"},
		"1.27":                                 {info: version.Info{GitVersion: "v1.27.16", Major: "1", Minor: "27"}, plain: true, want: "the API server is Kubernetes v1.27.16; Leasehold needs 1.28 or later"},
		"1.27, Major/Minor only":               {info: version.Info{Major: "1", Minor: "27+"}, plain: true, want: "Leasehold needs 1.28 or later"},
		"no version":                           {info: version.Info{}, want: "cannot tell the API server's Kubernetes version"},
		"2.0 (some day)":                       {info: version.Info{GitVersion: "v2.0.0", Major: "2", Minor: "0"}},
		"1.9 is older than 1.28 (not by text)": {info: version.Info{GitVersion: "v1.9.11", Major: "1", Minor: "9"}, plain: true, want: "needs 1.28"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			err := CheckServerVersion(&tc.info, tc.plain)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.want != "" && err == nil:
				t.Errorf("accepted, want an error saying %q", tc.want)
			case tc.want != "" && !strings.Contains(err.Error(), tc.want):
				t.Errorf("error %q\nlacks %q", err, tc.want)
			}
		})
	}
}
