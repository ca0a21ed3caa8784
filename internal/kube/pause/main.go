// Command pause is the program of the pod sandbox image (kube.PauseImage):
// the process that holds a pod's namespaces, as Kubernetes' pause does. It
// sleeps until SIGTERM or SIGINT (the signals a runtime stops a sandbox
// with; as PID 1 of the pod it only gets those it handles) and exits 0.
// It is built static (CGO_ENABLED=0) by kube.PodImages.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
	<-c
}
