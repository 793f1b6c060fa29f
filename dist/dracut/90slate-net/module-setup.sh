#!/bin/bash
# dracut module: network boot from `slate serve` (`boot=slate-net` on the
# kernel command line, which the server's iPXE script writes). dracut's
# network brings the interface up, then `slate netboot root` (the netroot
# handler /sbin/slateroot) asks the fleet, checks its answer and the
# snapshot with the keys built in here, and mounts the snapshot as the
# root from the machine's cache; 90slate's pre-pivot hook applies the
# state policy. `slate prepare --trust` builds an image with it,
# /boot/slate-netboot.img-VERSION. See docs/diskless.md.

check() {
    require_binaries slate || return 1
    # Only when asked for: a network boot has its own image.
    return 255
}

depends() {
    echo network slate
}

installkernel() {
    # The root is FUSE, a cache partition ext4; the network cards of PCs,
    # servers and virtual machines and the disks a cache partition may be
    # on come with dracut's network and kernel modules.
    hostonly='' instmods fuse ext4 virtio_net virtio_pci virtio_blk virtio_scsi sd_mod ahci nvme \
        xhci_pci ehci_pci usb_storage uas
}

install() {
    inst_multiple slate modprobe cat sleep mkdir
    inst_hook cmdline 90 "$moddir/parse-slate-net.sh"
    inst_script "$moddir/slateroot.sh" "/sbin/slateroot"
    # The keys `slate prepare --trust` put in the tree check the fleet's
    # answer and the snapshot.
    local key
    for key in "$dracutsysrootdir"/etc/slate/netboot/keys/*.pub; do
        [ -f "$key" ] && inst_simple "${key#"$dracutsysrootdir"}"
    done
    dracut_need_initqueue
}
