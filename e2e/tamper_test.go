//go:build e2e

package e2e

import (
	"regexp"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"
)

// tamperScript tries, from a container of an injected Pod, every way of taking over
// the agent or the other containers' client that a writable socket volume or a shared
// user would give, and prints TAMPERED for each that works; then it uses the agent as
// an app does (the client, which speaks HTTP over the socket) and prints done.
const tamperScript = `
echo "uid=$(id -u) groups=$(id -G)"
grep " /run/leasehold " /proc/mounts
ls -ldn /run/leasehold /run/leasehold/bin "$LEASEHOLD_CLI" /run/leasehold/agent.sock
cp /bin/busybox "$LEASEHOLD_CLI" 2>/dev/null && echo "TAMPERED: overwrote the client"
echo '#!/bin/sh' > /run/leasehold/bin/.x 2>/dev/null && echo "TAMPERED: wrote into bin/"
mv /run/leasehold/bin /run/leasehold/bin.old 2>/dev/null && echo "TAMPERED: moved bin/ away"
mkdir /run/leasehold/fake 2>/dev/null && echo "TAMPERED: made a directory in the volume"
mv /run/leasehold/agent.sock /run/leasehold/agent.sock.old 2>/dev/null && echo "TAMPERED: moved the socket away"
rm -f /run/leasehold/agent.sock 2>/dev/null; [ -S /run/leasehold/agent.sock ] || echo "TAMPERED: removed the socket"
chmod 0777 /run/leasehold/agent.sock 2>/dev/null && echo "TAMPERED: changed the socket's mode"
# With shareProcessNamespace, the agent's files through its /proc entry.
for p in /proc/[0-9]*; do
  case "$(tr '\0' ' ' < "$p/cmdline" 2>/dev/null)" in "/usr/local/bin/leasehold-agent --namespace"*) agent=$p ;; esac
done
echo "agent process: ${agent:-none}"
if [ -n "${agent:-}" ]; then
  ls "$agent/root/run/leasehold/" >/dev/null 2>&1 && echo "TAMPERED: reached the agent's files through $agent/root"
  cp /bin/busybox "$agent/root/run/leasehold/bin/leasehold" 2>/dev/null && echo "TAMPERED: overwrote the client through $agent/root"
  kill -STOP "${agent#/proc/}" 2>/dev/null && { kill -CONT "${agent#/proc/}"; echo "TAMPERED: signalled the agent"; }
fi
"$LEASEHOLD_CLI" run --wait=20s tamper-lock -- sh -c 'echo "held under token $LEASEHOLD_TOKEN"'
"$LEASEHOLD_CLI" status tamper-lock && echo done
`

// TestContainersCannotTamperWithTheAgent: the app and init containers of an injected
// Pod, one running as 65532 (distroless's nonroot, the agent's UID before) in a Pod that
// shares its process namespace, cannot replace the leasehold client that the others run,
// nor the socket they trust, nor reach the agent's files or process; and the client and
// the socket still work from their read-only mounts.
func TestContainersCannotTamperWithTheAgent(t *testing.T) {
	importBusybox(t)
	ns := newNamespace(t, true)
	pod := busyboxPod("tamper", map[string]string{"leasehold.io/locks": "tamper-lock"}, tamperScript)
	pod.Spec.ShareProcessNamespace = ptr.To(true)
	pod.Spec.Containers[0].SecurityContext.RunAsUser = ptr.To(int64(65532))
	pod.Spec.Containers[0].SecurityContext.RunAsGroup = ptr.To(int64(65532))
	init := pod.Spec.Containers[0]
	init.Name = "init"
	init.SecurityContext = init.SecurityContext.DeepCopy()
	init.SecurityContext.RunAsUser, init.SecurityContext.RunAsGroup = ptr.To(int64(1000)), ptr.To(int64(1000))
	pod.Spec.InitContainers = []corev1.Container{init}
	createPod(t, ns, pod)

	got := waitForPodEnd(t, ns, "tamper", 120*time.Second)
	for _, c := range []string{"init", "app"} {
		log := logs(t, ns, "tamper", c)
		t.Logf("container %s:\n%s", c, log)
		for _, line := range strings.Split(log, "\n") {
			if strings.Contains(line, "TAMPERED") {
				t.Errorf("container %s: %s", c, line)
			}
		}
		for _, want := range []*regexp.Regexp{
			regexp.MustCompile(`(?m) /run/leasehold \S+ ro[, ]`),                  // mounted read-only
			regexp.MustCompile(`(?m) s\S+\s+\d+\s+53530\s+53530 .*/agent\.sock$`), // the agent's UID and group
			regexp.MustCompile(`(?m) -rwxr-xr-x\s+\d+\s+53530 .*/bin/leasehold$`),
			regexp.MustCompile(`(?m) drwxr-xr-x\s+\d+\s+53530 .*/run/leasehold/bin$`),
			regexp.MustCompile(`agent process: /proc/\d+`), // it was found, and then not reached
			regexp.MustCompile(`held under token \d+`),
			regexp.MustCompile(`(?m)done$`),
		} {
			if !want.MatchString(log) {
				t.Errorf("container %s: log does not match %q", c, want)
			}
		}
	}
	if got.Status.Phase != corev1.PodSucceeded {
		t.Errorf("Pod phase %s, want Succeeded\n%s", got.Status.Phase, describe(ns, "tamper"))
	}
	checkInjectedSpec(t, got)
	for _, s := range got.Status.InitContainerStatuses {
		if s.Name == agentContainer && s.RestartCount != 0 {
			t.Errorf("the agent restarted %d times", s.RestartCount)
		}
	}
}
