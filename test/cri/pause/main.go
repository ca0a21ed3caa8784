// Command pause is the sandbox image's only program in test/cri: the
// process that holds a pod's namespaces, as Kubernetes' pause does. It
// sleeps until SIGTERM or SIGINT (the signals a runtime stops a sandbox
// with; as PID 1 of the pod it only gets those it handles) and exits 0.
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
