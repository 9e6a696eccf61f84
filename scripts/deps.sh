#!/usr/bin/env bash
# Installs what the tests need from Debian's packages when it is missing:
# redis-server and redis-cli (real Redis), libcoap3-bin (real CoAP peers),
# iproute2 (network namespaces); with the argument "nginx", nginx and its
# stream module (the UDP proxy the balancer is compared with).
# Idempotent; fails loudly when it cannot install.
set -euo pipefail

need=()
command -v redis-server      >/dev/null 2>&1 || need+=(redis-server)
command -v redis-cli         >/dev/null 2>&1 || need+=(redis-tools)
command -v coap-client-notls >/dev/null 2>&1 || need+=(libcoap3-bin)
command -v ip                >/dev/null 2>&1 || need+=(iproute2)
for extra in "$@"; do
	case "$extra" in
	nginx) { command -v nginx >/dev/null 2>&1 && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ]; } || need+=(nginx-light libnginx-mod-stream) ;;
	esac
done

if [ ${#need[@]} -eq 0 ]; then
	exit 0
fi
echo "deps: installing ${need[*]}" >&2
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# Debian starts redis-server and nginx as services on install; the tests run
# their own on free ports.
if command -v systemctl >/dev/null 2>&1; then
	$SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
	$SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
fi
$SUDO service redis-server stop >/dev/null 2>&1 || true
$SUDO service nginx stop >/dev/null 2>&1 || true
