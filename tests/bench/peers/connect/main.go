// Command connect-peer is the Redpanda Connect peer of streamproc's benchmarks: the MIT
// licensed Benthos engine (github.com/redpanda-data/benthos/v4) with its io and pure
// components, plus Kafka input and output plugins of our own on franz-go, the client that
// Redpanda Connect's kafka_franz components are built on. It runs Benthos configs as
// Redpanda Connect does: `connect-peer -c receive.yaml` (or `connect-peer run receive.yaml`).
//
// Redpanda Connect's own module (github.com/redpanda-data/connect/v4) is not used: its
// licence is not an open-source one.
package main

import (
	"context"

	_ "github.com/redpanda-data/benthos/v4/public/components/io"
	_ "github.com/redpanda-data/benthos/v4/public/components/pure"
	"github.com/redpanda-data/benthos/v4/public/service"
)

func main() {
	service.RunCLI(context.Background(),
		service.CLIOptSetBinaryName("connect-peer"),
		service.CLIOptSetProductName("connect-peer"),
		service.CLIOptSetVersion("v4.60.0-peer", ""),
	)
}
