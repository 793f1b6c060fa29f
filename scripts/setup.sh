#!/usr/bin/env bash
# Install everything slate's build, demo, tests and benchmarks need on a
# Debian 12 machine. Idempotent; run as root (or with sudo available).
# postgresql: the fleet store's tests start throwaway servers of their own
# (as the postgres user, on 127.0.0.1); the package's own cluster is not used.
# nginx: the site-cache test and benchmark (dist/nginx/slate-site-cache.conf)
# run their own nginx from a temporary prefix; Debian's nginx has the slice
# module built in. The package's own service is not used (it is stopped and
# disabled if installing it started it).
# slapd, ldap-utils: the LDAP directory test (crates/slate-server, fleet/ldap)
# runs its own slapd on a free 127.0.0.1 port from a temporary directory,
# loaded with slapadd and changed with ldapmodify; the package's own server
# is stopped and disabled as nginx's is, so it does not hold port 389.
# chromium, fonts-dejavu-core: the dashboard's browser test drives headless
# Chromium over the DevTools protocol (crates/slate-cli/tests/it/dashboard.rs).
set -euo pipefail
SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
PKGS=(build-essential pkg-config ca-certificates python3 debootstrap attr acl zstd rsync e2fsprogs util-linux time grub-common
      gdisk dosfstools mtools grub-pc-bin systemd-boot-efi ovmf restic git
      squashfs-tools xorriso grub-efi-amd64-bin cryptsetup-bin fuse3 netcat-openbsd
      postgresql python3-venv nginx slapd ldap-utils chromium fonts-dejavu-core)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [[ " ${missing[*]} " == *" nginx "* ]] && command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
    fi
    if [[ " ${missing[*]} " == *" slapd "* ]]; then
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            $SUDO systemctl disable --now slapd >/dev/null 2>&1 || true
        else
            $SUDO service slapd stop >/dev/null 2>&1 || true
            $SUDO update-rc.d slapd disable >/dev/null 2>&1 || true
        fi
    fi
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: installing Debian's Rust toolchain (cargo)" >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends cargo rustc >/dev/null
fi
# qemu for the boot tests. Debian 12's qemu-system-x86 needs its own
# qemu-utils, not the newer backport some images carry.
if ! command -v qemu-system-x86_64 >/dev/null 2>&1; then
    echo "setup: installing qemu-system-x86" >&2
    [ ${#missing[@]} -gt 0 ] || $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends --allow-downgrades \
        qemu-system-x86 qemu-utils/bookworm >/dev/null
fi
# The object-storage tests (crates/slate-s3) start moto's S3 server on
# 127.0.0.1: a pinned moto from PyPI in a venv of its own, outside the
# system Python. SLATE_MOTO_SERVER may name another moto_server.
MOTO_VERSION=5.2.6
MOTO_VENV=/var/tmp/slate-moto
if ! "$MOTO_VENV/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
    echo "setup: installing moto[server] $MOTO_VERSION into $MOTO_VENV" >&2
    python3 -m venv "$MOTO_VENV"
    "$MOTO_VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
# Fuzzing (scripts/fuzz.sh): cargo-afl at a pinned version. Installing it
# builds the AFL++ it ships (afl-fuzz and the runtime the targets link)
# for the current toolchain, so Debian's older afl++ package is not used:
# its afl-fuzz would not match that runtime.
CARGO_AFL_VERSION=0.18.2
if ! cargo afl --version 2>/dev/null | grep -q "^cargo-afl $CARGO_AFL_VERSION "; then
    echo "setup: installing cargo-afl $CARGO_AFL_VERSION (builds AFL++)" >&2
    cargo install --locked --force --quiet cargo-afl --version "$CARGO_AFL_VERSION"
fi
# A toolchain newer than the one cargo-afl was installed with needs AFL++
# built again for it; "already built" is the usual answer.
if ! out=$(cargo afl config --build 2>&1) && ! grep -q 'already built' <<<"$out"; then
    echo "$out" >&2
    exit 1
fi
echo "setup: ok ($(cargo --version), $(cargo afl --version))" >&2
