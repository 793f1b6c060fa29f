# bench/lib.sh: pieces the benchmark scripts share (sourced, not run).

# bench_marker_unit TREE DESCRIPTION: enable the benchmark's marker unit in
# TREE, which runs /usr/local/sbin/slate-bench-marker (each script writes
# its own) once multi-user.target is reached.
bench_marker_unit() {
    cat > "$1/etc/systemd/system/slate-bench-marker.service" <<UNIT
[Unit]
Description=$2
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/slate-bench-marker
[Install]
WantedBy=multi-user.target
UNIT
    mkdir -p "$1/etc/systemd/system/multi-user.target.wants"
    ln -sf /etc/systemd/system/slate-bench-marker.service "$1/etc/systemd/system/multi-user.target.wants/"
}

# in_chroot TREE COMMAND: run COMMAND (sh -ec) in TREE with /proc, /sys and
# /dev mounted, in a private mount namespace (the mounts go with it; they
# are also unmounted explicitly), at the priority of the caller's NICE
# array (empty: unchanged).
in_chroot() {
    "${NICE[@]}" unshare -m --propagation private sh -ec '
      t=$1
      mount -t proc proc "$t/proc"
      mount --rbind /sys "$t/sys"; mount --make-rslave "$t/sys"
      mount --rbind /dev "$t/dev"; mount --make-rslave "$t/dev"
      rc=0; chroot "$t" sh -ec "$2" || rc=$?
      umount -R "$t/dev"; umount -R "$t/sys"; umount "$t/proc"
      exit $rc' in_chroot "$@"
}
