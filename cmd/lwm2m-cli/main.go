// Command lwm2m-cli inspects and changes the shared state of an LwM2M server
// cluster in Redis: DTLS-PSK security info, registrations and membership.
// Run lwm2m-cli --help; the commands live in routing/clicmd.
package main

import (
	"os"

	"github.com/lwm2mcluster/lwm2m/internal/cli"
	"github.com/lwm2mcluster/lwm2m/routing/clicmd"
)

func main() {
	ctx, stop := cli.SignalContext()
	code := clicmd.Main(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}
