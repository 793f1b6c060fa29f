#!/bin/bash
# dracut module: run `slate state apply` on the new root before it is
# switched to (docs/state.md). Install as
# /usr/lib/dracut/modules.d/90slate/ and regenerate the initramfs
# (`slate prepare` does both).

check() {
    require_binaries slate mount || return 1
    return 0
}

depends() {
    return 0
}

installkernel() {
    hostonly='' instmods overlay ext4
}

install() {
    inst_multiple slate mount umount chroot sleep mkdir cat sync
    inst_hook pre-pivot 90 "$moddir/slate-state.sh"
}
