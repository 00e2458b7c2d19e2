// kube-apiserver: the real Kubernetes API server (k8s.io/kubernetes/cmd/kube-apiserver's
// command, unchanged), built from the Go module proxy so that tests/apiserver/apply_check.sh
// can apply deploy/kubernetes to it. `make apply-check` builds it into .cache/bin.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go's metrics, as upstream
	_ "k8s.io/component-base/metrics/prometheus/version"  // the version metric, as upstream
	"k8s.io/kubernetes/cmd/kube-apiserver/app"
)

func main() {
	os.Exit(cli.Run(app.NewAPIServerCommand()))
}
