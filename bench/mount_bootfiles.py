#!/usr/bin/env python3
"""The files a boot of the corpus's v3 tree reads, as a reproducible list.

Usage: mount_bootfiles.py TREE > LIST      (paths relative to TREE, one a line)

There is no recorded trace of a v3 boot, so the list is derived from the tree
by fixed rules (bench/mount.sh's header repeats them):

  1. Programs that a boot to a login prompt with sshd runs: PID 1, journald,
     udevd, logind, the early one-shot helpers (sysctl, modules-load,
     remount-fs, random-seed, update-utmp, user-sessions, tmpfiles, udevadm,
     systemctl), every generator in usr/lib/systemd/system-generators,
     agetty, login, bash, mount, sshd.
  2. Their ELF closure: the program interpreter and the DT_NEEDED libraries
     (read with `objdump -p` / `readelf -l`, never by running anything from
     the tree), looked up in DT_RUNPATH/DT_RPATH ($ORIGIN expanded), then
     the multiarch and plain library directories, recursively.
  3. PAM modules named in etc/pam.d/{login,sshd,systemd-user} (following
     @include) and NSS modules named in etc/nsswitch.conf that exist as
     libnss_NAME.so.2, with their ELF closure.
  4. Configuration and data: every regular file under etc/ except etc/apt,
     etc/cron.*, etc/logrotate.d, etc/init.d, etc/rc?.d, etc/X11,
     etc/python3*, etc/perl, etc/bash_completion.d, etc/alternatives,
     etc/ssl (read by nothing a boot runs); unit files under
     usr/lib/systemd/system and etc/systemd; usr/lib/{tmpfiles,sysctl,
     modules-load,sysusers}.d; udev rules and usr/lib/udev/hwdb.bin;
     usr/lib/os-release; the kmod index files of every kernel in
     usr/lib/modules (modules.*.bin, modules.softdep, modules.devname;
     the .ko files a machine loads depend on its hardware and are left
     out); the zone file etc/localtime points to; the terminfo entry of
     the console (linux); the C.utf8 locale.

Programs, libraries and single files are resolved inside TREE (absolute
symlinks are relative to TREE), so a library reached as
lib/x86_64-linux-gnu/libc.so.6 is listed once, as the regular file it
resolves to; in the directories of rule 4 only regular files are taken (not
what symlinks there point to). Prints the sorted list; a summary (count,
bytes) goes to stderr.
"""
import os
import re
import stat
import subprocess
import sys

MULTIARCH = 'x86_64-linux-gnu'
LIB_DIRS = [f'usr/lib/{MULTIARCH}', f'lib/{MULTIARCH}', 'usr/lib', 'lib', 'lib64']

PROGRAMS = [
    'usr/lib/systemd/systemd', 'usr/lib/systemd/systemd-journald', 'usr/lib/systemd/systemd-udevd',
    'usr/lib/systemd/systemd-logind', 'usr/lib/systemd/systemd-sysctl',
    'usr/lib/systemd/systemd-modules-load', 'usr/lib/systemd/systemd-remount-fs',
    'usr/lib/systemd/systemd-random-seed', 'usr/lib/systemd/systemd-update-utmp',
    'usr/lib/systemd/systemd-user-sessions', 'usr/bin/systemd-tmpfiles', 'usr/bin/udevadm',
    'usr/bin/systemctl', 'sbin/agetty', 'bin/login', 'bin/bash', 'bin/mount', 'usr/sbin/sshd',
]
ETC_SKIP = re.compile(r'^etc/(apt|cron\.[^/]+|logrotate\.d|init\.d|rc[0-6S]\.d|X11|python3[^/]*|perl|'
                      r'bash_completion\.d|alternatives|ssl)(/|$)')


def resolve(root, rel, depth=0):
    """rel (relative to root, '/'-separated) with every symlink resolved inside root; None if missing."""
    if depth > 40:
        return None
    parts = [p for p in rel.split('/') if p and p != '.']
    done = []
    while parts:
        p = parts.pop(0)
        if p == '..':
            if done:
                done.pop()
            continue
        cur = '/'.join(done + [p])
        try:
            st = os.lstat(os.path.join(root, cur))
        except OSError:
            return None
        if stat.S_ISLNK(st.st_mode):
            target = os.readlink(os.path.join(root, cur))
            base = [] if target.startswith('/') else done
            r = resolve(root, '/'.join(base + [target] + parts), depth + 1)
            return r
        done.append(p)
    return '/'.join(done)


def is_elf(path):
    try:
        with open(path, 'rb') as f:
            return f.read(4) == b'\x7fELF'
    except OSError:
        return False


def elf_deps(root, rel):
    """(interpreter or None, [needed], [search dirs from RUNPATH/RPATH])"""
    full = os.path.join(root, rel)
    out = subprocess.run(['objdump', '-p', full], capture_output=True, text=True).stdout
    needed, paths = [], []
    for line in out.splitlines():
        f = line.split()
        if len(f) == 2 and f[0] == 'NEEDED':
            needed.append(f[1])
        elif len(f) == 2 and f[0] in ('RUNPATH', 'RPATH'):
            origin = os.path.dirname(rel)
            paths += [d.replace('$ORIGIN', '/' + origin).lstrip('/') for d in f[1].split(':') if d]
    interp = None
    hdr = subprocess.run(['readelf', '-lW', full], capture_output=True, text=True).stdout
    m = re.search(r'Requesting program interpreter: ([^\]]+)\]', hdr)
    if m:
        interp = m.group(1).lstrip('/')
    return interp, needed, paths


def elf_closure(root, start, found, inherited=()):
    """Adds start and its ELF closure to found. A library is looked up in the
    RUNPATH/RPATH of the objects on its way from start (as the loader finds
    an already-loaded soname wherever it came from), then in LIB_DIRS."""
    todo = [(start, list(inherited))]
    while todo:
        name, dirs = todo.pop()
        rel = resolve(root, name)
        if rel is None or rel in found or not os.path.isfile(os.path.join(root, rel)):
            continue
        found.add(rel)
        if not is_elf(os.path.join(root, rel)):
            continue
        interp, needed, paths = elf_deps(root, rel)
        search = paths + [d for d in dirs if d not in paths]
        if interp:
            todo.append((interp, []))
        for lib in needed:
            for d in search + LIB_DIRS:
                cand = f'{d}/{lib}'
                if resolve(root, cand) is not None:
                    todo.append((cand, search))
                    break
            else:
                print(f'mount_bootfiles: {rel}: {lib} not found', file=sys.stderr)


def regular_files_under(root, rel, found, skip=None):
    """Adds the regular files below rel (not following symlinks out of it)."""
    base = os.path.join(root, rel)
    if not os.path.isdir(base):
        return
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            r = os.path.relpath(os.path.join(dirpath, name), root)
            if skip and skip.match(r):
                continue
            if stat.S_ISREG(os.lstat(os.path.join(root, r)).st_mode):
                found.add(r)
        if skip:
            dirnames[:] = [d for d in dirnames
                           if not skip.match(os.path.relpath(os.path.join(dirpath, d), root))]


def pam_modules(root, service, seen):
    mods = []
    path = os.path.join(root, 'etc/pam.d', service)
    if service in seen or not os.path.isfile(path):
        return mods
    seen.add(service)
    for line in open(path, errors='replace'):
        line = line.split('#', 1)[0].strip()
        if not line:
            continue
        if line.startswith('@include'):
            mods += pam_modules(root, line.split()[1], seen)
            continue
        # type control module [args]; control may be [...] with spaces
        m = re.match(r'^-?\S+\s+(\[[^\]]*\]|\S+)\s+(\S+)', line)
        if m and m.group(2).endswith('.so'):
            mods.append(m.group(2))
    return mods


def main():
    root = sys.argv[1].rstrip('/')
    found = set()
    progs = list(PROGRAMS)
    gen = os.path.join(root, 'usr/lib/systemd/system-generators')
    if os.path.isdir(gen):
        progs += [f'usr/lib/systemd/system-generators/{n}' for n in sorted(os.listdir(gen))]
    for p in progs:
        if resolve(root, p) is None:
            print(f'mount_bootfiles: no {p} in the tree', file=sys.stderr)
            continue
        elf_closure(root, p, found)
    seen = set()
    for svc in ('login', 'sshd', 'systemd-user'):
        for mod in pam_modules(root, svc, seen):
            cand = mod if '/' in mod else f'usr/lib/{MULTIARCH}/security/{mod}'
            elf_closure(root, cand.lstrip('/'), found)
    nss = os.path.join(root, 'etc/nsswitch.conf')
    if os.path.isfile(nss):
        for line in open(nss, errors='replace'):
            line = line.split('#', 1)[0]
            if ':' not in line:
                continue
            for svc in re.findall(r'\b([a-z_]+)\b(?![^\[]*\])', line.split(':', 1)[1]):
                for d in LIB_DIRS:
                    if resolve(root, f'{d}/libnss_{svc}.so.2'):
                        elf_closure(root, f'{d}/libnss_{svc}.so.2', found)
                        break
    regular_files_under(root, 'etc', found, ETC_SKIP)
    for d in ('usr/lib/systemd/system', 'etc/systemd', 'usr/lib/tmpfiles.d', 'usr/lib/sysctl.d',
              'usr/lib/modules-load.d', 'usr/lib/sysusers.d', 'usr/lib/udev/rules.d', 'etc/udev',
              'usr/lib/locale/C.utf8'):
        regular_files_under(root, d, found)
    for f in ('usr/lib/udev/hwdb.bin', 'usr/lib/os-release', 'etc/localtime',
              'usr/share/terminfo/l/linux', 'lib/terminfo/l/linux'):
        t = resolve(root, f)
        if t and os.path.isfile(os.path.join(root, t)):
            found.add(t)
    mods = os.path.join(root, 'usr/lib/modules')
    if os.path.isdir(mods):
        for kver in sorted(os.listdir(mods)):
            for n in sorted(os.listdir(os.path.join(mods, kver))):
                if n.startswith('modules.') and (n.endswith('.bin') or n in ('modules.softdep', 'modules.devname')):
                    found.add(f'usr/lib/modules/{kver}/{n}')
    files = sorted(f for f in found if stat.S_ISREG(os.lstat(os.path.join(root, f)).st_mode))
    total = sum(os.lstat(os.path.join(root, f)).st_size for f in files)
    for f in files:
        print(f)
    print(f'mount_bootfiles: {len(files)} files, {total} bytes', file=sys.stderr)


if __name__ == '__main__':
    main()
