package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/custom-metrics-adapter/custom-metrics-adapter/test/localstack"
)

// TestLoadPodRunsOnceThroughTheIngress: a load pod, as the demo runs on a
// cluster (the app image's /loadgen, restartPolicy Never), runs once on the
// process kubelet, sends its load through the Ingress to the app, and ends
// Succeeded; one with a bad flag ends Failed with loadgen's exit code. Its
// requests are counted by the app itself.
func TestLoadPodRunsOnceThroughTheIngress(t *testing.T) {
	t.Parallel()
	const namespace = "load-pod"
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := stack.DeployApp(ctx, namespace); err != nil {
		t.Fatal(err)
	}
	ingressURL, err := localstack.IngressURL(ctx, stack.Client, namespace, "main-route", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	before, err := podRequestCounts(ctx, namespace)
	if err != nil {
		t.Fatal(err)
	}
	loadPod := func(name string, args ...string) *corev1.Pod {
		return &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
			Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever,
				Containers: []corev1.Container{{
					Name: "loadgen", Image: "custom-metrics-adapter/app:dev",
					Command: []string{"/loadgen"}, Args: args,
				}},
			},
		}
	}
	const rate, seconds = 20, 5
	for _, p := range []*corev1.Pod{
		loadPod("load", "--target="+ingressURL, "--path=/?cpu=1ms", fmt.Sprintf("--rate=%d", rate), fmt.Sprintf("--duration=%ds", seconds), "--ramp=1s", "--report=0"),
		loadPod("load-bad-flag", "--target="+ingressURL, "--rate=0"),
	} {
		if _, err := stack.Client.CoreV1().Pods(namespace).Create(ctx, p, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ended := func(name string) *corev1.Pod {
		var p *corev1.Pod
		err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
			got, err := stack.Client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, nil
			}
			p = got
			return got.Status.Phase == corev1.PodSucceeded || got.Status.Phase == corev1.PodFailed, nil
		})
		if err != nil {
			t.Fatalf("pod %s did not end: phase %q: %v", name, p.Status.Phase, err)
		}
		return p
	}
	exitCode := func(p *corev1.Pod) int32 {
		if len(p.Status.ContainerStatuses) != 1 || p.Status.ContainerStatuses[0].State.Terminated == nil {
			t.Fatalf("pod %s: container statuses %+v, want one terminated", p.Name, p.Status.ContainerStatuses)
		}
		return p.Status.ContainerStatuses[0].State.Terminated.ExitCode
	}
	if p := ended("load"); p.Status.Phase != corev1.PodSucceeded || exitCode(p) != 0 {
		t.Errorf("the load pod ended %s with exit code %d, want Succeeded and 0", p.Status.Phase, exitCode(p))
	}
	if p := ended("load-bad-flag"); p.Status.Phase != corev1.PodFailed || exitCode(p) != 1 {
		t.Errorf("the load pod with --rate=0 ended %s with exit code %d, want Failed and 1", p.Status.Phase, exitCode(p))
	}
	after, err := podRequestCounts(ctx, namespace)
	if err != nil {
		t.Fatal(err)
	}
	var served float64
	for pod, n := range after {
		served += n - before[pod]
	}
	// The ramp's second sends half a second's worth: 90 of 100 at most.
	if want := float64(rate*seconds) / 2; served < want {
		t.Errorf("the app served %.0f requests of the load pod, want at least %.0f", served, want)
	}
	t.Logf("the app served %.0f requests of the load pod", served)
}
