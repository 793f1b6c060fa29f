#!/usr/bin/env bash
# Boot figures for docs/BENCHMARKS.md: for the v3 Debian tree after
# `slate prepare`, the time from `slate install` starting to a booted
# machine, from power-on to the marker for slot A (qemu, software
# emulation, one vCPU, 1 GiB), and what slate's initramfs step takes
# (its own uptime stamps on the serial console; network bring-up for
# server state included). Run as root after `make build corpus`.
#   REPS=N      boots per firmware (default 2)
#   FIRMWARE="bios uefi"
#   VARIANTS="local server"   the default policy; then with a server path
#                             (the initramfs brings the network up)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
SLATE=${SLATE:-$PWD/target/release/slate}
CORPUS=${SLATE_CORPUS:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-2}
FIRMWARE=${FIRMWARE:-bios uefi}
VARIANTS=${VARIANTS:-local server}
W=${W:-/var/tmp/slate-boot-bench}
[ -x "$SLATE" ] || { echo "bench/boot.sh: build first (make build)" >&2; exit 1; }
[ -f "$CORPUS/v3.done" ] || { echo "bench/boot.sh: no corpus (make corpus)" >&2; exit 1; }

rm -rf "$W"; mkdir -p "$W"
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null || true; }
trap cleanup EXIT

cp -a "$CORPUS/v3" "$W/tree"
mkdir -p "$W/tree/usr/local/sbin"
cat > "$W/tree/usr/local/sbin/slate-bench-marker" <<'MARK'
#!/bin/sh
read -r up _ < /proc/uptime
echo "SLATE-MARKER uptime=$up slot=$(sed -n 's/.*slate\.slot=\([ab]\).*/\1/p' /proc/cmdline)" > /dev/ttyS0
systemctl poweroff
MARK
chmod 755 "$W/tree/usr/local/sbin/slate-bench-marker"
bench_marker_unit "$W/tree" "slate boot benchmark marker"
t=$(date +%s.%N); "$SLATE" prepare "$W/tree" 2>/dev/null; prep=$(awk -v t="$t" -v n="$(date +%s.%N)" 'BEGIN{printf "%.1f", n-t}')

"$SLATE" init --repo "$W/repo" >/dev/null 2>&1
"$SLATE" keygen --out "$W/key" >/dev/null 2>&1
"$SLATE" commit --repo "$W/repo" --channel lab --sign "$W/key" "$W/tree" >/dev/null 2>&1
printf '[default]\nchannel = "lab"\n' > "$W/FLEET.toml"
"$SLATE" serve --repo "$W/repo" --fleet "$W/FLEET.toml" --listen 127.0.0.1:0 2> "$W/serve.log" &
SERVER_PID=$!
for _ in $(seq 100); do grep -q "^serving" "$W/serve.log" && break; sleep 0.1; done
PORT=$(sed -n 's/^serving .* on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$W/serve.log")
"$SLATE" fleet enroll --repo "$W/repo" vm1 > "$W/token" 2>/dev/null
cat > "$W/template.toml" <<TOML
server = ["http://127.0.0.1:$PORT", "http://10.0.2.2:$PORT"]
trust = ["$W/key.pub"]
state_dir = "/unused"
machine_id = "vm1"
token_file = "$W/token"
kernel_cmdline = "console=ttyS0,115200 ip=dhcp"
[slots]
a = "/unused/a"
b = "/unused/b"
TOML

echo "machine: $(nproc) cores, $(uname -r); qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}'); slate prepare took ${prep} s"
printf '%-6s %-9s %4s %12s %20s %20s %22s\n' firmware policy rep "install (s)" "power-on→marker (s)" "initramfs step (s)" "before apply (s)"
for variant in $VARIANTS; do
if [ "$variant" = server ]; then
  # A server path: the initramfs brings the network up (DHCP) to fetch it.
  printf '\n[[path]]\npath = "/etc/slate-bench"\nstate = "server"\n' >> "$W/tree/etc/slate/state.toml"
  mkdir -p "$W/tree/etc/slate-bench"
  "$SLATE" commit --repo "$W/repo" --channel lab --sign "$W/key" "$W/tree" >/dev/null 2>&1
fi
for fw in $FIRMWARE; do
  for rep in $(seq "$REPS"); do
    img="$W/disk-$fw.img"; rm -f "$img"
    t=$(date +%s.%N)
    "$SLATE" install --disk "$img" --size 6G --slot-size 2G --firmware "$fw" --config "$W/template.toml" >/dev/null 2>&1
    inst=$(awk -v t="$t" -v n="$(date +%s.%N)" 'BEGIN{printf "%.1f", n-t}')
    extra=()
    if [ "$fw" = uefi ]; then
      cp /usr/share/OVMF/OVMF_VARS.fd "$W/vars.fd"
      extra=(-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd
             -drive "if=pflash,format=raw,unit=1,file=$W/vars.fd")
    fi
    log="$W/boot-$fw-$rep.log"; : > "$log"
    t=$(date +%s.%N)
    qemu-system-x86_64 -machine q35 -nodefaults -accel tcg -smp 1 -m 1024 -no-reboot -display none -monitor none \
      -serial "file:$log" -drive "file=$img,format=raw,if=virtio" \
      -netdev user,id=n0 -device virtio-net-pci,netdev=n0 "${extra[@]}" &
    q=$!
    marker=
    for _ in $(seq 2400); do
      if grep -aq SLATE-MARKER "$log"; then marker=$(awk -v t="$t" -v n="$(date +%s.%N)" 'BEGIN{printf "%.1f", n-t}'); break; fi
      kill -0 $q 2>/dev/null || break
      sleep 0.1
    done
    wait $q || true
    stamps=$(sed -n 's/.*slate: initramfs step from \([0-9.]*\) s to \([0-9.]*\) s of uptime (network up at \([0-9.]*\) s).*/\1 \2 \3/p' "$log" | head -1)
    step=none; net=none
    if [ -n "$stamps" ]; then
      step=$(echo "$stamps" | awk '{printf "%.2f", $2 - $1}')
      net=$(echo "$stamps" | awk '{printf "%.2f", $3 - $1}')
    fi
    printf '%-6s %-9s %4s %12.1f %20s %20s %22s\n' "$fw" "$variant" "$rep" "$inst" "${marker:-none}" "$step" "$net"
  done
done
done
echo "initrd: $(stat -c %s "$CORPUS"/v3/boot/initrd.img-*) bytes as built, $(stat -c %s "$W"/tree/boot/initrd.img-*) after slate prepare"
