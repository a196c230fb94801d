#!/usr/bin/env bash
# Install what the QEMU system test needs on a Debian host: QEMU and
# debootstrap. The machine boots the Debian kernel installed inside its own
# image, so the host needs none.
set -euo pipefail

PACKAGES=(qemu-system-x86 qemu-utils debootstrap e2fsprogs)

fail() {
    echo "setup.sh: error: $*" >&2
    exit 1
}

missing_packages() {
    local package
    for package in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null \
                | grep -q "install ok installed"; then
            echo "$package"
        fi
    done
}

[[ $(id -u) -eq 0 ]] || fail "run as root: it installs Debian packages"
command -v apt-get >/dev/null || fail "apt-get not found: this needs a Debian host"

mapfile -t missing < <(missing_packages)
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "setup.sh: all of ${PACKAGES[*]} are installed"
    exit 0
fi

echo "setup.sh: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q || fail "apt-get update failed"
apt-get install -y -q --no-install-recommends "${missing[@]}" \
    || fail "apt-get install ${missing[*]} failed"
