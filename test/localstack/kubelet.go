package localstack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/retry"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
)

// Kubelet is a "process kubelet": it registers a Node, binds unscheduled
// pods to it (playing the scheduler), and runs every pod bound to it as a
// load-app process on a loopback address of its own (127.0.0.N), writing
// the pod's status (Running, Ready, podIP) as a kubelet would. When a pod
// is deleted it stops the process and completes the deletion.
//
// Everything above it is real: the Deployment and ReplicaSet controllers
// create and delete the pods, the HPA controller counts them.
type Kubelet struct {
	Client   kubernetes.Interface
	NodeName string
	// AppBinary is run for every pod, with --listen-address=<podIP>:<port>
	// and the first container's args, unless the container's command is
	// one of Commands.
	AppBinary string
	// Commands maps a container command (e.g. "/loadgen", as the app
	// image has it) to the binary run for it, with the command's other
	// words and the container's args: a pod that runs once (a load pod,
	// restartPolicy Never or OnFailure) and ends Succeeded or Failed with
	// its exit status.
	Commands map[string]string
	// Dir receives one log file per pod.
	Dir string
	// Progress receives a line per pod started or stopped; nil discards.
	Progress io.Writer

	mu      sync.Mutex
	procs   map[string]*podProcess // key: namespace/name
	usedIPs map[string]bool
	lister  corelisters.PodLister
	queue   workqueue.TypedRateLimitingInterface[string]
}

type podProcess struct {
	proc     *Process
	ip       string
	uid      string
	restarts int32
	// command is set for a pod that runs once (Kubelet.Commands).
	command bool
}

// Run registers the node and serves pods until ctx is done, then stops
// every pod process.
func (k *Kubelet) Run(ctx context.Context) error {
	if k.Progress == nil {
		k.Progress = io.Discard
	}
	k.procs = map[string]*podProcess{}
	k.usedIPs = map[string]bool{}
	if err := k.registerNode(ctx); err != nil {
		return err
	}
	factory := informers.NewSharedInformerFactory(k.Client, 0)
	inf := factory.Core().V1().Pods()
	k.lister = inf.Lister()
	k.queue = workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[string]())
	enqueue := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			k.queue.Add(key)
		}
	}
	if _, err := inf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueue,
		UpdateFunc: func(_, obj any) { enqueue(obj) },
		DeleteFunc: enqueue,
	}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), inf.Informer().HasSynced) {
		return fmt.Errorf("pod informer did not sync")
	}
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for k.processNext(ctx) {
			}
		})
	}
	<-ctx.Done()
	k.queue.ShutDown()
	wg.Wait()
	factory.Shutdown()
	k.stopAll()
	return nil
}

func (k *Kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: k.NodeName, Labels: map[string]string{"kubernetes.io/hostname": k.NodeName}}}
	if _, err := k.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("registering node: %w", err)
	}
	return retry.RetryOnConflict(conflictBackoff, func() error {
		n, err := k.Client.CoreV1().Nodes().Get(ctx, k.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		capacity := corev1.ResourceList{
			corev1.ResourceCPU:    resource.MustParse("8"),
			corev1.ResourceMemory: resource.MustParse("32Gi"),
			corev1.ResourcePods:   resource.MustParse("110"),
		}
		now := metav1.Now()
		n.Status.Capacity, n.Status.Allocatable = capacity, capacity
		n.Status.Conditions = []corev1.NodeCondition{{
			Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
			Message: "process kubelet is running", LastHeartbeatTime: now, LastTransitionTime: now,
		}}
		n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "127.0.0.1"}}
		_, err = k.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
}

func (k *Kubelet) processNext(ctx context.Context) bool {
	key, quit := k.queue.Get()
	if quit {
		return false
	}
	defer k.queue.Done(key)
	if err := k.sync(ctx, key); err != nil {
		if ctx.Err() == nil {
			utilruntime.HandleError(fmt.Errorf("syncing pod %s: %w", key, err))
			k.queue.AddRateLimited(key)
		}
		return true
	}
	k.queue.Forget(key)
	return true
}

func (k *Kubelet) sync(ctx context.Context, key string) error {
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	pod, err := k.lister.Pods(ns).Get(name)
	if apierrors.IsNotFound(err) {
		k.stopPod(key)
		return nil
	}
	if err != nil {
		return err
	}
	if pod.DeletionTimestamp != nil {
		if pod.Spec.NodeName != "" && pod.Spec.NodeName != k.NodeName {
			return nil
		}
		k.stopPod(key)
		// A kubelet completes a graceful deletion once the containers are gone.
		zero := int64(0)
		err := k.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
		if apierrors.IsNotFound(err) || apierrors.IsConflict(err) {
			return nil
		}
		return err
	}
	if pod.Spec.NodeName == "" {
		binding := &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: pod.UID},
			Target:     corev1.ObjectReference{Kind: "Node", Name: k.NodeName},
		}
		err := k.Client.CoreV1().Pods(ns).Bind(ctx, binding, metav1.CreateOptions{})
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return err
	}
	if pod.Spec.NodeName != k.NodeName || pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return nil
	}

	k.mu.Lock()
	pp := k.procs[key]
	k.mu.Unlock()
	if pp != nil && pp.uid != string(pod.UID) {
		k.stopPod(key) // same name, new pod
		pp = nil
	}
	if pp != nil && pp.command {
		exited, err := pp.proc.Exited()
		if !exited {
			if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == pp.ip {
				return nil
			}
			return k.writeStatus(ctx, pod, pp)
		}
		if err != nil && pod.Spec.RestartPolicy == corev1.RestartPolicyOnFailure {
			fmt.Fprintf(k.Progress, "pod %s: process failed (%v), restarting\n", key, err)
			k.stopPod(key)
			pp = &podProcess{restarts: pp.restarts + 1}
			if err := k.startPod(ctx, key, pod, pp); err != nil {
				return err
			}
			return k.writeStatus(ctx, pod, pp)
		}
		return k.writeEnded(ctx, key, pod, pp, err)
	}
	if pp != nil {
		if exited, _ := pp.proc.Exited(); !exited {
			if pod.Status.Phase == corev1.PodRunning && pod.Status.PodIP == pp.ip {
				return nil
			}
			return k.writeStatus(ctx, pod, pp)
		}
		fmt.Fprintf(k.Progress, "pod %s: process exited, restarting\n", key)
		k.stopPod(key)
		pp = &podProcess{restarts: pp.restarts + 1}
	} else {
		pp = &podProcess{}
	}
	if err := k.startPod(ctx, key, pod, pp); err != nil {
		return err
	}
	return k.writeStatus(ctx, pod, pp)
}

func (k *Kubelet) startPod(ctx context.Context, key string, pod *corev1.Pod, pp *podProcess) error {
	ip, err := k.allocateIP()
	if err != nil {
		return err
	}
	port := int32(8080)
	var args []string
	if len(pod.Spec.Containers) > 0 {
		c := pod.Spec.Containers[0]
		if len(c.Ports) > 0 {
			port = c.Ports[0].ContainerPort
		}
		if bin, ok := k.commandBinary(c); ok {
			// A pod that runs once: no port, no readiness to wait for.
			proc, err := Start(k.Dir, "pod-"+pod.Namespace+"-"+pod.Name, bin, append(slices.Clone(c.Command[1:]), c.Args...))
			if err != nil {
				k.releaseIP(ip)
				return err
			}
			pp.proc, pp.ip, pp.uid, pp.command = proc, ip, string(pod.UID), true
			k.track(key, pp)
			fmt.Fprintf(k.Progress, "pod %s: running %s (pid %d)\n", key, c.Command[0], proc.PID())
			return nil
		}
		args = append(args, c.Args...)
	}
	addr := net.JoinHostPort(ip, strconv.Itoa(int(port)))
	proc, err := Start(k.Dir, "pod-"+pod.Namespace+"-"+pod.Name, k.AppBinary, append([]string{"--listen-address=" + addr}, args...))
	if err != nil {
		k.releaseIP(ip)
		return err
	}
	pp.proc, pp.ip, pp.uid = proc, ip, string(pod.UID)
	k.track(key, pp)
	if err := WaitHTTP(ctx, nil, "http://"+addr+"/readyz", 30*time.Second, proc); err != nil {
		return err
	}
	fmt.Fprintf(k.Progress, "pod %s: running on %s (pid %d)\n", key, addr, proc.PID())
	return nil
}

// commandBinary is the binary of Commands for container c's command.
func (k *Kubelet) commandBinary(c corev1.Container) (string, bool) {
	if len(c.Command) == 0 {
		return "", false
	}
	bin, ok := k.Commands[c.Command[0]]
	return bin, ok
}

// track records pp as key's process, and syncs key again when it exits.
func (k *Kubelet) track(key string, pp *podProcess) {
	k.mu.Lock()
	k.procs[key] = pp
	k.mu.Unlock()
	go func() {
		<-pp.proc.done
		if k.queue != nil && !k.queue.ShuttingDown() {
			k.queue.Add(key)
		}
	}()
}

// writeEnded writes the status of a pod that ran once and ended: Succeeded
// when its process exited 0, else Failed, with the exit code, as a
// kubelet writes it; the process is forgotten.
func (k *Kubelet) writeEnded(ctx context.Context, key string, pod *corev1.Pod, pp *podProcess, exitErr error) error {
	k.stopPod(key)
	code := int32(0)
	phase, reason := corev1.PodSucceeded, "Completed"
	if exitErr != nil {
		phase, reason, code = corev1.PodFailed, "Error", 1
		var ee *exec.ExitError
		if errors.As(exitErr, &ee) && ee.ExitCode() > 0 {
			code = int32(ee.ExitCode())
		}
	}
	now := metav1.Now()
	p := pod.DeepCopy()
	p.Status.Phase = phase
	p.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionFalse, Reason: "PodCompleted", LastTransitionTime: now},
	}
	p.Status.ContainerStatuses = nil
	for _, c := range pod.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: "process://" + c.Command[0], ContainerID: fmt.Sprintf("process://%d", pp.proc.PID()),
			RestartCount: pp.restarts, Started: ptr.To(false),
			State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: code, FinishedAt: now, Reason: reason}},
		})
	}
	fmt.Fprintf(k.Progress, "pod %s: %s (exit code %d)\n", key, phase, code)
	_, err := k.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (k *Kubelet) writeStatus(ctx context.Context, pod *corev1.Pod, pp *podProcess) error {
	now := metav1.Now()
	started := metav1.NewTime(now.Add(-time.Second))
	p := pod.DeepCopy()
	p.Status.Phase = corev1.PodRunning
	p.Status.HostIP = "127.0.0.1"
	p.Status.HostIPs = []corev1.HostIP{{IP: "127.0.0.1"}}
	p.Status.PodIP = pp.ip
	p.Status.PodIPs = []corev1.PodIP{{IP: pp.ip}}
	if p.Status.StartTime == nil {
		p.Status.StartTime = &started
	}
	cond := func(t corev1.PodConditionType) corev1.PodCondition {
		return corev1.PodCondition{Type: t, Status: corev1.ConditionTrue, LastTransitionTime: now}
	}
	p.Status.Conditions = []corev1.PodCondition{cond(corev1.PodScheduled), cond(corev1.PodInitialized), cond(corev1.ContainersReady), cond(corev1.PodReady)}
	p.Status.ContainerStatuses = nil
	image := "process://" + k.AppBinary
	if pp.command {
		image = "process://" + pod.Spec.Containers[0].Command[0]
	}
	for _, c := range pod.Spec.Containers {
		p.Status.ContainerStatuses = append(p.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c.Name, Image: c.Image, ImageID: image, ContainerID: fmt.Sprintf("process://%d", pp.proc.PID()),
			Ready: true, Started: ptr.To(true), RestartCount: pp.restarts,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: started}},
		})
	}
	_, err := k.Client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

func (k *Kubelet) stopPod(key string) {
	k.mu.Lock()
	pp := k.procs[key]
	delete(k.procs, key)
	k.mu.Unlock()
	if pp == nil {
		return
	}
	if err := pp.proc.Stop(10 * time.Second); err != nil {
		fmt.Fprintf(k.Progress, "pod %s: %v\n", key, err)
	}
	k.releaseIP(pp.ip)
	fmt.Fprintf(k.Progress, "pod %s: stopped\n", key)
}

func (k *Kubelet) stopAll() {
	k.mu.Lock()
	keys := make([]string, 0, len(k.procs))
	for key := range k.procs {
		keys = append(keys, key)
	}
	k.mu.Unlock()
	// Side by side: each pod drains for its own grace period, and a
	// stack that ran every HPA at once holds a dozen pods or more.
	var wg sync.WaitGroup
	for _, key := range keys {
		wg.Go(func() { k.stopPod(key) })
	}
	wg.Wait()
}

func (k *Kubelet) allocateIP() (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for n := 2; n < 255; n++ {
		ip := "127.0.0." + strconv.Itoa(n)
		if !k.usedIPs[ip] {
			k.usedIPs[ip] = true
			return ip, nil
		}
	}
	return "", fmt.Errorf("no free loopback address for another pod")
}

func (k *Kubelet) releaseIP(ip string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.usedIPs, ip)
}

// conflictBackoff retries a write refused for a conflict for up to 30
// seconds: the controllers of the stack update the same objects.
var conflictBackoff = wait.Backoff{Duration: 100 * time.Millisecond, Factor: 1, Steps: 300}

// ServiceTargets plays a Service for a load generator: it returns a
// function listing http://<podIP>:<port> for the Ready pods the Service
// selects, read from an informer that stops with ctx. EndpointSlices cannot
// be used: the API server refuses the loopback pod addresses in them.
func ServiceTargets(ctx context.Context, client kubernetes.Interface, namespace, service string) (func() []string, error) {
	svc, err := client.CoreV1().Services(namespace).Get(ctx, service, metav1.GetOptions{})
	if err != nil {
		return nil, err
	}
	if len(svc.Spec.Selector) == 0 || len(svc.Spec.Ports) == 0 {
		return nil, fmt.Errorf("service %s/%s has no selector or no ports", namespace, service)
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector)
	factory := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = sel.String() }))
	lister := factory.Core().V1().Pods().Lister()
	factory.Start(ctx.Done())
	factory.WaitForCacheSync(ctx.Done())
	port := svc.Spec.Ports[0]
	return func() []string {
		pods, err := lister.List(sel)
		if err != nil {
			return nil
		}
		var out []string
		for _, p := range pods {
			if p.DeletionTimestamp != nil || p.Status.PodIP == "" || !podReady(p) {
				continue
			}
			out = append(out, "http://"+net.JoinHostPort(p.Status.PodIP, strconv.Itoa(targetPort(port, p))))
		}
		sort.Strings(out)
		return out
	}, nil
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
