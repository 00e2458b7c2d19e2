// kubectl: k8s.io/kubectl's command (as k8s.io/kubernetes/cmd/kubectl runs it), with its
// built-in kustomize for `kubectl apply -k`. Used by tests/apiserver/apply_check.sh;
// `make apply-check` builds it into .cache/bin.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"
)

func main() {
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	if err := cli.RunNoErrOutput(cmd.NewDefaultKubectlCommand()); err != nil {
		util.CheckErr(err)
	}
}
