#!/bin/sh
# Installs everything numa-harness needs on Debian 12, as root, idempotently:
# Debian packages (--no-install-recommends; both built-in kernel sources, 6.12 and 6.1), then a
# venv in .venv with the harness installed.
# A second run with nothing to do takes about a second.
# --test also installs what only the test suite and benchmarks need: Debian's chromium, which
# renders the ci report in headless mode, and udev, without which virtme-ng (tests/bench/boot_bench.py)
# cannot reach its command's virtio-serial ports.
set -eu
cd "$(dirname "$0")/.."

PACKAGES="python3 python3-venv gcc libc6-dev make bc bison flex libelf-dev libssl-dev cpio xz-utils
 patch git linux-source-6.12 linux-source-6.1 qemu-system-x86 busybox-static dropbear-bin numactl openssh-client"
case "${1:-}" in
    --test) PACKAGES="$PACKAGES chromium udev" ;;
    "") ;;
    *) echo "bootstrap: unknown option $1 (the only option is --test)" >&2; exit 2 ;;
esac

missing=""
for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "bootstrap: missing Debian packages:$missing; run this script as root (or install them)" >&2
        exit 1
    fi
    echo "bootstrap: installing$missing" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    # shellcheck disable=SC2086
    apt-get install -y -q --no-install-recommends $missing >&2
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.numa-harness-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    .venv/bin/python -m pip install -q --upgrade pip >&2
    .venv/bin/python -m pip install -q -e '.[dev]' >&2
    echo "$want" > "$stamp"
fi
