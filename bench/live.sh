#!/usr/bin/env bash
# Live ISO figures: slate's `slate image iso` against the usual Debian way
# (live-boot in the tree, mksquashfs, grub-mkrescue), on the v3 Debian tree,
# in the same run. Both trees get the same marker unit, which prints
# `SLATE-MARKER uptime=<guest uptime>` on the second serial port (ttyS1, so
# the console on ttyS0 cannot garble it) once multi-user.target is reached,
# then powers off.
#   Debian: a copy of v3 with live-boot and live-boot-initramfs-tools
#           installed (apt-get in a chroot, in a private mount namespace)
#           and its initramfs regenerated; then timed: `mksquashfs TREE
#           live/filesystem.squashfs -comp xz` and `grub-mkrescue` of a
#           staging dir with live/vmlinuz, live/initrd.img and a serial
#           grub.cfg (`boot=live components`). Build time is their sum.
#   slate:  another copy of v3 (no live-boot), `slate prepare`, init,
#           keygen, a signed commit to channel lab; then timed:
#           `slate image iso lab --sign`. Skipped, with a note, when this
#           build of slate has no `image iso`.
# Neither side's preparation (live-boot install, update-initramfs; slate
# prepare, commit) is in the build figure; both are printed apart.
# Peak memory is /usr/bin/time's %M: the largest single process of the
# command's tree (mksquashfs, xorriso under grub-mkrescue, slate), not
# their sum. Then each ISO boots as a CD (AHCI on q35) under qemu with
# software emulation (one vCPU, 1 GiB), BIOS (SeaBIOS) and UEFI (OVMF),
# REPS times per ISO and firmware, Debian and slate alternating (which
# goes first rotates); the figure is the wall time from starting qemu to
# the marker line, and the guest's uptime at the marker is kept too (OVMF
# and GRUB also write to the second port; the marker is a line of its own).
# Prints a Markdown table of medians and slate/Debian ratios (same run) and
# writes it to $W/results.md. Run as root after `make build corpus`.
#   REPS=N           boots per ISO per firmware (default 2)
#   FIRMWARE="bios uefi"
#   W=DIR            work dir (default /var/tmp/slate-live-bench; emptied)
#   SLATE=PATH       slate binary (default target/release/slate)
#   SLATE_CORPUS=DIR the corpus (default /var/tmp/stateless-bench/corpus)
#   BOOT_TIMEOUT=S   per boot (default 600)
#   KEEP=1           keep the two tree copies (removed once the ISOs are built)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
SLATE=${SLATE:-$PWD/target/release/slate}
CORPUS=${SLATE_CORPUS:-/var/tmp/stateless-bench/corpus}
REPS=${REPS:-2}
FIRMWARE=${FIRMWARE:-bios uefi}
W=${W:-/var/tmp/slate-live-bench}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-600}
NICE=(nice -n 10)
[ "$(id -u)" -eq 0 ] || { echo "bench/live.sh: run as root" >&2; exit 1; }
[ -x "$SLATE" ] || { echo "bench/live.sh: build first (make build)" >&2; exit 1; }
[ -f "$CORPUS/v3.done" ] || { echo "bench/live.sh: no corpus (make corpus)" >&2; exit 1; }

# The host tools for the Debian side and the boots.
need=()
for pair in time:/usr/bin/time squashfs-tools:mksquashfs xorriso:xorriso mtools:mformat \
            grub-common:grub-mkrescue grub-pc-bin:/usr/lib/grub/i386-pc/cdboot.img \
            grub-efi-amd64-bin:/usr/lib/grub/x86_64-efi/linux.mod ovmf:/usr/share/OVMF/OVMF_CODE.fd \
            qemu-system-x86:qemu-system-x86_64; do
  pkg=${pair%%:*} what=${pair#*:}
  if [ "${what#/}" != "$what" ]; then [ -e "$what" ] || need+=("$pkg")
  else command -v "$what" >/dev/null 2>&1 || need+=("$pkg"); fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench/live.sh: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

HAVE_ISO=0
"$SLATE" image iso --help >/dev/null 2>&1 && HAVE_ISO=1

QEMU_PID=
cleanup() { [ -n "$QEMU_PID" ] && kill "$QEMU_PID" 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$W"; mkdir -p "$W"

secs() { awk -v t="$1" -v n="$(date +%s.%N)" 'BEGIN{printf "%.1f", n-t}'; }

# add_marker TREE: the marker script and unit, enabled for multi-user.target.
add_marker() {
  mkdir -p "$1/usr/local/sbin" "$1/etc/systemd/system/multi-user.target.wants"
  cat > "$1/usr/local/sbin/slate-bench-marker" <<'MARK'
#!/bin/sh
read -r up _ < /proc/uptime
echo "SLATE-MARKER uptime=$up" > /dev/ttyS1
systemctl poweroff
MARK
  chmod 755 "$1/usr/local/sbin/slate-bench-marker"
  bench_marker_unit "$1" "slate live benchmark marker"
}


# timed OUT COMMAND...: runs COMMAND niced under /usr/bin/time; OUT gets
# "wall-seconds peak-KiB". The command's own output is the caller's.
timed() { local out=$1; shift; /usr/bin/time -f '%e %M' -o "$out" "${NICE[@]}" "$@"; }

echo "machine: $(nproc) cores, $(uname -r); qemu $(qemu-system-x86_64 --version | head -1 | awk '{print $4}');" \
     "$(mksquashfs -version | head -1 | awk '{print $1, $3}'); $(grub-mkrescue --version)"

# ---- Debian: live-boot, mksquashfs, grub-mkrescue ----
D=$W/debian
cp -a "$CORPUS/v3" "$D.tree"
add_marker "$D.tree"
# apt needs the host's resolver in the tree while it fetches.
cp -a "$D.tree/etc/resolv.conf" "$W/resolv.conf.tree" 2>/dev/null || true
rm -f "$D.tree/etc/resolv.conf"; cp /etc/resolv.conf "$D.tree/etc/resolv.conf"
t=$(date +%s.%N)
in_chroot "$D.tree" '
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o Acquire::Check-Valid-Until=false update -qq
  apt-get install -y -qq --no-install-recommends live-boot live-boot-initramfs-tools
  apt-get clean
  update-initramfs -u -k all' > "$W/debian-prepare.log" 2>&1 \
  || { echo "bench/live.sh: installing live-boot failed, see $W/debian-prepare.log" >&2; exit 1; }
d_prep=$(secs "$t")
rm -f "$D.tree/etc/resolv.conf"
if [ -e "$W/resolv.conf.tree" ] || [ -L "$W/resolv.conf.tree" ]; then mv "$W/resolv.conf.tree" "$D.tree/etc/resolv.conf"; fi
d_livever=$(chroot "$D.tree" dpkg-query -W -f '${Version}' live-boot)

mkdir -p "$D.iso/live" "$D.iso/boot/grub"
cp "$D.tree"/boot/vmlinuz-* "$D.iso/live/vmlinuz"
cp "$D.tree"/boot/initrd.img-* "$D.iso/live/initrd.img"
cat > "$D.iso/boot/grub/grub.cfg" <<'CFG'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Debian live" {
  linux /live/vmlinuz boot=live components console=ttyS0,115200 no_timer_check
  initrd /live/initrd.img
}
CFG
sync
timed "$W/time.mksquashfs" mksquashfs "$D.tree" "$D.iso/live/filesystem.squashfs" -comp xz -noappend \
  -quiet -no-progress >> "$W/debian-build.log" 2>&1 || { echo "bench/live.sh: mksquashfs failed, see $W/debian-build.log" >&2; exit 1; }
timed "$W/time.grub-mkrescue" grub-mkrescue -o "$W/debian-live.iso" "$D.iso" >> "$W/debian-build.log" 2>&1 \
  || { echo "bench/live.sh: grub-mkrescue failed, see $W/debian-build.log" >&2; exit 1; }
read -r d_sq_s d_sq_kb < "$W/time.mksquashfs"
read -r d_mk_s d_mk_kb < "$W/time.grub-mkrescue"
d_build=$(awk -v a="$d_sq_s" -v b="$d_mk_s" 'BEGIN{printf "%.1f", a+b}')
d_size=$(stat -c %s "$W/debian-live.iso")
d_kb=$((d_sq_kb > d_mk_kb ? d_sq_kb : d_mk_kb))
echo "debian: live-boot $d_livever installed and initramfs regenerated in ${d_prep} s;" \
     "mksquashfs ${d_sq_s} s (${d_sq_kb} KiB), grub-mkrescue ${d_mk_s} s (${d_mk_kb} KiB); ISO $d_size bytes"

[ "${KEEP:-0}" = 1 ] || rm -rf "$D.tree"

# ---- slate: prepare, commit, image iso ----
if [ "$HAVE_ISO" = 1 ]; then
  S=$W/slate
  cp -a "$CORPUS/v3" "$S.tree"
  add_marker "$S.tree"
  t=$(date +%s.%N)
  {
    "$SLATE" prepare "$S.tree"
    "$SLATE" init --repo "$S.repo"
    "$SLATE" keygen --out "$S.key"
    "$SLATE" commit --repo "$S.repo" --channel lab --sign "$S.key" "$S.tree"
  } > "$W/slate-prepare.log" 2>&1 || { echo "bench/live.sh: slate's preparation failed, see $W/slate-prepare.log" >&2; exit 1; }
  s_prep=$(secs "$t")
  sync
  timed "$W/time.slate-image-iso" "$SLATE" image iso lab --repo "$S.repo" -o "$W/slate-live.iso" --sign "$S.key" \
    --kernel-cmdline "console=ttyS0,115200 no_timer_check" --json > "$W/slate-image.json" 2> "$W/slate-build.log" \
    || { echo "bench/live.sh: slate image iso failed, see $W/slate-build.log" >&2; exit 1; }
  read -r s_build s_kb < "$W/time.slate-image-iso"
  s_size=$(stat -c %s "$W/slate-live.iso")
  echo "slate: prepare, init, keygen and commit in ${s_prep} s; image iso ${s_build} s (${s_kb} KiB); ISO $s_size bytes"
  [ "${KEEP:-0}" = 1 ] || rm -rf "$S.tree"
else
  echo "slate image iso: not available in this build"
fi

# ---- boots to the marker ----
# boot NAME FW REP: boots $W/NAME-live.iso; appends "NAME FW REP wall uptime" to boots.tsv.
boot() {
  local name=$1 fw=$2 rep=$3 extra=() t wall=none up=none
  local con="$W/console-$name-$fw-$rep.log" mark="$W/markers-$name-$fw-$rep.log"
  : > "$con"; : > "$mark"
  if [ "$fw" = uefi ]; then
    cp /usr/share/OVMF/OVMF_VARS.fd "$W/vars.fd"
    extra=(-drive if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE.fd
           -drive "if=pflash,format=raw,unit=1,file=$W/vars.fd")
  fi
  t=$(date +%s.%N)
  "${NICE[@]}" qemu-system-x86_64 -machine q35 -nodefaults -accel tcg -smp 1 -m 1024 -no-reboot \
    -display none -monitor none -serial "file:$con" -serial "file:$mark" \
    -drive "file=$W/$name-live.iso,format=raw,if=none,id=cd0,media=cdrom,readonly=on" \
    -device ide-cd,drive=cd0,bus=ide.0 "${extra[@]}" 2>> "$W/qemu.log" &
  QEMU_PID=$!
  for _ in $(seq $((BOOT_TIMEOUT * 5))); do
    if grep -aq SLATE-MARKER "$mark"; then wall=$(secs "$t"); break; fi
    kill -0 "$QEMU_PID" 2>/dev/null || break
    sleep 0.2
  done
  kill "$QEMU_PID" 2>/dev/null || true
  wait "$QEMU_PID" 2>/dev/null || true
  QEMU_PID=
  [ "$wall" = none ] || up=$(sed -n 's/.*SLATE-MARKER uptime=\([0-9.]*\).*/\1/p' "$mark" | head -1)
  printf '%-6s %-5s %4s %20s %18s\n' "$name" "$fw" "$rep" "$wall" "${up:-none}"
  echo "$name $fw $rep $wall ${up:-none}" >> "$W/boots.tsv"
}

sides=(debian); [ "$HAVE_ISO" = 1 ] && sides+=(slate)
: > "$W/boots.tsv"
printf '%-6s %-5s %4s %20s %18s\n' iso fw rep "start→marker (s)" "guest uptime (s)"
for fw in $FIRMWARE; do
  for rep in $(seq "$REPS"); do
    order=("${sides[@]}")
    [ $((rep % 2)) = 0 ] && [ ${#sides[@]} = 2 ] && order=(slate debian)
    for name in "${order[@]}"; do boot "$name" "$fw" "$rep"; done
  done
done

# ---- results ----
# median NAME FW COLUMN (4: wall, 5: uptime) over boots.tsv; "none" if no boot reached the marker.
median() {
  awk -v n="$1" -v f="$2" -v c="$3" '$1 == n && $2 == f && $c != "none" {print $c}' "$W/boots.tsv" | sort -n |
    awk '{v[NR] = $1} END {if (NR == 0) print "none"; else if (NR % 2) printf "%.1f\n", v[(NR + 1) / 2];
                           else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{if (a == "" || b == "" || a == "n/a" || b == "n/a" || a == "none" || b == "none" || b == 0) print "n/a"; else printf "%.2f", a / b}'; }
# with UNIT VALUE SUFFIX: "VALUE SUFFIX", or VALUE alone when it is n/a or none.
with_unit() { case $1 in ""|n/a) echo n/a ;; none) echo none ;; *) echo "$1 $2" ;; esac; }
mb() { [ -n "$1" ] && awk -v b="$1" 'BEGIN{printf "%.1f", b / 1048576}' || echo n/a; }
mib() { [ -n "$1" ] && echo $(($1 / 1024)) || echo n/a; }
s_size=${s_size:-}; s_build=${s_build:-}; s_kb=${s_kb:-}; s_prep=${s_prep:-}
{
  echo "| | Debian (live-boot $d_livever) | slate | slate/Debian |"
  echo "| --- | --- | --- | --- |"
  echo "| ISO size | $(mb "$d_size") MiB | $(with_unit "$(mb "$s_size")" MiB) | $(ratio "$s_size" "$d_size") |"
  echo "| build wall time | $d_build s (mksquashfs $d_sq_s + grub-mkrescue $d_mk_s) | $(with_unit "$s_build" s) | $(ratio "$s_build" "$d_build") |"
  echo "| peak memory (largest process) | $(mib "$d_kb") MiB | $(with_unit "$(mib "$s_kb")" MiB) | $(ratio "$s_kb" "$d_kb") |"
  for fw in $FIRMWARE; do
    dw=$(median debian "$fw" 4); du=$(median debian "$fw" 5)
    sw=n/a; su=n/a
    [ "$HAVE_ISO" = 1 ] && { sw=$(median slate "$fw" 4); su=$(median slate "$fw" 5); }
    FW=$([ "$fw" = bios ] && echo BIOS || echo UEFI)
    echo "| $FW: qemu start to marker, median of $REPS | $(with_unit "$dw" s) | $(with_unit "$sw" s) | $(ratio "$sw" "$dw") |"
    echo "| $FW: guest uptime at marker, median | $(with_unit "$du" s) | $(with_unit "$su" s) | $(ratio "$su" "$du") |"
  done
  echo "| not in the build figure: preparation | live-boot install + update-initramfs: $d_prep s | $(with_unit "$s_prep" "s (prepare, init, keygen, commit)") | |"
} > "$W/results.md"
echo
cat "$W/results.md"
