package webhook

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// A Job's Pod (restartPolicy Never) completes when its app containers exit only if the
// agent is a native sidecar: the kubelet then stops it. As a plain container
// (--plain-container) the agent is one of the Pod's main containers, so the Pod runs on
// after the Job's work is done; docs/jobs-and-cronjobs.md says so and what to do.
// e2e/cli_test.go runs the native case on a real node.
func TestInjectJobPod(t *testing.T) {
	job := func() *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: "nightly-x1", Namespace: "team-a",
				Annotations: map[string]string{AnnotationLocks: "nightly-report"},
				Labels:      map[string]string{"batch.kubernetes.io/job-name": "nightly"}},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers:    []corev1.Container{{Name: "app", Image: "report:1"}},
			},
		}
	}
	native := DefaultOptions()
	got := mustInject(t, job(), native)
	if len(got.Spec.Containers) != 1 || len(got.Spec.InitContainers) != 1 ||
		ptr.Deref(got.Spec.InitContainers[0].RestartPolicy, "") != corev1.ContainerRestartPolicyAlways {
		t.Errorf("native mode: want the agent as an init container with restartPolicy Always and the app alone in containers, got init %v, containers %v",
			names(got.Spec.InitContainers), names(got.Spec.Containers))
	}
	if got.Spec.RestartPolicy != corev1.RestartPolicyNever {
		t.Errorf("the Job Pod's restartPolicy changed to %q", got.Spec.RestartPolicy)
	}

	plain := DefaultOptions()
	plain.PlainContainer = true
	got = mustInject(t, job(), plain)
	if len(got.Spec.Containers) != 2 || got.Spec.Containers[0].Name != AgentContainerName || got.Spec.Containers[0].RestartPolicy != nil {
		t.Errorf("plain mode: want the agent as the first main container, got containers %v", names(got.Spec.Containers))
	}
}

func names(cs []corev1.Container) []string {
	var out []string
	for _, c := range cs {
		out = append(out, c.Name)
	}
	return out
}
