#!/usr/bin/env python3
"""Report of bench/mount.sh: medians, same-run ratios and the issue's goals.

Usage: mount_report.py RUNS.tsv      (Markdown on stdout)

RUNS.tsv rows: rep system session key value. Rep 0 holds the setup (system
"env") and the cache fills. A ratio is the median of the per-repetition
ratios (both figures from the same repetition); MB = 10^6 bytes.
"""
import statistics
import sys
from collections import defaultdict

NAMES = {'native': 'native (ext4)', 'slate': 'slate mount',
         'sqfs': 'squashfuse_ll on httpdirfs', 'casync': 'casync mount'}
PEERS = ['sqfs', 'casync']

rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])][1:]
data = defaultdict(dict)          # (system, session, key) -> {rep: value}
env = {}
for rep, system, session, key, value in rows:
    if system == 'env':
        env[key] = value
    else:
        data[(system, session, key)][int(rep)] = value
systems = [s for s in ['native', 'slate', 'sqfs', 'casync'] if any(k[0] == s for k in data)]
reps = sorted({r for v in data.values() for r in v if r > 0})
read_bytes = int(env.get('read_bytes', 0))
boot_zstd = int(env.get('boot_zstd3_bytes', 0))


def num(system, session, key, rep):
    """The value as a float, or None when missing or its command failed."""
    v = data.get((system, session, key), {}).get(rep)
    if v in (None, ''):
        return None
    if data.get((system, session, key + '_rc'), {}).get(rep, '0') != '0':
        return None
    try:
        return float(v)
    except ValueError:
        return None


def series(system, session, key, f=lambda x: x):
    return {r: f(v) for r in reps if (v := num(system, session, key, r)) is not None}


def med(s):
    return statistics.median(s.values()) if s else None


def ratio(a, b):
    q = [a[r] / b[r] for r in a if r in b and b[r]]
    return (statistics.median(q), min(q), max(q)) if q else None


def fmt(x, d=2):
    return 'n/a' if x is None else f'{x:.{d}f}'


def fmt_ratio(q):
    if q is None:
        return 'n/a'
    m, lo, hi = q
    f = lambda x: f'{x:.2f}' if x >= 0.1 else f'{x:.3f}' if x >= 0.01 else f'{x:.4f}'
    return f'**{f(m)}** ({f(lo)}-{f(hi)})' if lo != hi else f'**{f(m)}**'


mbps = lambda t: read_bytes / 1e6 / t if t else None
mb = lambda b: b / 1e6

# (label, session, key, transform, digits, which systems, goal on slate/native)
MEASURES = [
    ('mount, complete cache (s)', 'walk', 'mount_s', None, 2, ['slate'] + PEERS),
    ('cold walk, complete cache (s)', 'walk', 'walk_cold', None, 2, systems),
    ('warm walk (s)', 'walk', 'walk_warm', None, 2, systems),
    ('cold read, complete cache (MB/s)', 'read', 'read_cold', mbps, 1, systems),
    ('warm read (MB/s)', 'read', 'read_warm', mbps, 1, systems),
    ('boot files, empty cache over HTTP: fetched (MB, server side)', 'boot', 'server_bytes', mb, 2,
     ['slate'] + PEERS),
    ('boot files, empty cache over HTTP: requests', 'boot', 'server_requests', None, 0, ['slate'] + PEERS),
    ('boot files: wall (s; native: cold local disk)', 'boot', 'boot', None, 2, systems),
    ('mount, empty cache over HTTP (s)', 'hwalk', 'mount_s', None, 2, ['slate'] + PEERS),
    ('walk, empty cache over HTTP (s)', 'hwalk', 'walk', None, 2, ['slate'] + PEERS),
    ('walk, empty cache over HTTP: fetched (MB)', 'hwalk', 'server_bytes', mb, 1, ['slate'] + PEERS),
    ('read, empty cache over HTTP (MB/s)', 'hread', 'read', mbps, 1, ['slate'] + PEERS),
    ('read, empty cache over HTTP: fetched (MB)', 'hread', 'server_bytes', mb, 1, ['slate'] + PEERS),
    (f"read, empty cache over HTTP, --cache-size {env.get('small_cache', '?')} (MB/s)", 'hsmall', 'read', mbps, 1,
     ['slate']),
    (f"read, empty cache over HTTP, --cache-size {env.get('small_cache', '?')}: fetched (MB)", 'hsmall',
     'server_bytes', mb, 1, ['slate']),
]

out = []
p = out.append
p(f"Date {env.get('date', '?')}; {env.get('machine', '?')}; load {env.get('load_start', '?')} at the start, "
  f"{env.get('load_end', '?')} at the end.  ")
p(f"Disk: {env.get('disk', '?')}. Tree v3: {env.get('tree', '?')}; read list {env.get('read_files', '?')} "
  f"regular files, {read_bytes / 1e6:.1f} MB.  ")
p(f"Boot list (bench/mount_bootfiles.py): {env.get('boot_files', '?')} files, "
  f"{int(env.get('boot_bytes', 0)) / 1e6:.1f} MB, {boot_zstd / 1e6:.2f} MB compressed file by file with zstd -3.  ")
p(f"Peers: {env.get('versions', '?')}.  ")
for k, what in [('sqfs_build', 'mksquashfs'), ('casync_build', 'casync make'), ('slate_repo', 'slate repository'),
                ('slate', 'slate')]:
    if k in env:
        p(f"{what}: {env[k]}.  ")
if 'slate_note' in env:
    p(f"**slate not measured**: {env['slate_note']}.  ")
for s in systems:
    fill = data.get((s, 'fill', 'cache_bytes'), {}).get(0)
    if fill:
        extra = ''
        sb = data.get((s, 'fill', 'server_bytes'), {}).get(0)
        if sb:
            extra = f", filled in {float(data[(s, 'fill', 'seconds')][0]):.1f} s fetching {int(sb) / 1e6:.1f} MB"
        p(f"Local copy / complete cache of {NAMES[s]}: {int(fill) / 1e6:.1f} MB{extra}.  ")
creps = sorted({r for (sy, _, _), d in data.items() if sy == 'casync' for r in d if r > 0})
p(f"Medians of {len(reps)} repetitions" + (f" (casync took part in {len(creps)} of them: its ratios are from those)"
                                            if 'casync' in systems and len(creps) < len(reps) else '') +
  "; a ratio is the median of the per-repetition ratios (range in "
  "parentheses); for MB/s rows a ratio above 1 means slate is faster, for seconds and bytes below 1.")
p('')
cols = [s for s in systems]
others = [s for s in ['native'] + PEERS if s in systems]
has_slate = 'slate' in systems
head = '| measure | ' + ' | '.join(NAMES[s] for s in cols)
if has_slate:
    head += ' | ' + ' | '.join(f'slate/{s}' for s in others)
p(head + ' |')
p('|' + ' --- |' * (1 + len(cols) + (len(others) if has_slate else 0)))
for label, session, key, f, d, which in MEASURES:
    ser = {s: series(s, session, key, f or (lambda x: x)) for s in cols}
    if not any(ser[s] for s in cols if s in which):
        continue
    line = f'| {label} | ' + ' | '.join(fmt(med(ser[s]), d) if s in which else '' for s in cols)
    if has_slate:
        line += ' | ' + ' | '.join(fmt_ratio(ratio(ser['slate'], ser[s])) if s in which and 'slate' in which
                                   else '' for s in others)
    p(line + ' |')
hwm = {s: max((v for (sy, se, k), reps_ in data.items() if sy == s and k == 'hwm_kb'
               for r, v in reps_.items() if v), key=lambda v: int(v), default=None) for s in cols}
line = '| daemon peak RSS, largest over all sessions (MiB) | ' + ' | '.join(
    '' if s == 'native' or hwm[s] is None else f'{int(hwm[s]) / 1024:.0f}' for s in cols)
if has_slate:
    line += ' | ' + ' | '.join('' for s in others)
p(line + ' |')
p('')
for s in cols:
    per = {se: max(int(v) for v in d.values() if v) for (sy, se, k), d in data.items()
           if sy == s and k == 'hwm_kb' and any(d.values())}
    if per:
        p(f'Daemon peak RSS of {NAMES[s]} by session (MiB, largest over repetitions): '
          + ', '.join(f'{se} {v / 1024:.0f}' for se, v in per.items()) + '.  ')
for se, what in [('boot', 'boot files'), ('hwalk', 'walk'), ('hread', 'read'), ('hsmall', 'bounded-cache read'),
                 ('walk', 'cold walk from the complete cache'), ('read', 'cold read from the complete cache')]:
    st, sb = med(series('slate', se, 'status_fetched_bytes')), med(series('slate', se, 'server_bytes'))
    rq = med(series('slate', se, 'status_requests'))
    if st is not None:
        p(f'slate, {what}: status fetched_bytes {st / 1e6:.2f} MB in {rq:.0f} requests; '
          f'server side {sb / 1e6:.2f} MB (headers included).  ')
p('')

# Entries seen by the walks, and failures.
ent = {s: sorted({data[(s, 'walk', 'walk_cold_entries')].get(r) for r in reps} - {None})
       for s in cols if (s, 'walk', 'walk_cold_entries') in data}
p('Entries seen by the cold walk: ' + ', '.join(f'{NAMES[s]} {"/".join(v)}' for s, v in ent.items()) + '.  ')
fails = [f'{sy} {se} {k[:-3]} rep {r} (exit {v})' for (sy, se, k), d in sorted(data.items())
         if k.endswith('_rc') for r, v in d.items() if v != '0']
fails += [f'{sy} {se} rep {r}: mount failed' for (sy, se, k), d in sorted(data.items())
          if k == 'mount_failed' for r in d]
if fails:
    p('**Failed** (left out of the medians): ' + '; '.join(fails) + '.  ')
for s in cols:
    v = data.get((s, 'verify', 'summary'), {}).get(0)
    if v:
        p(f'treedigest of {NAMES[s]} (complete cache) against native v3: {v}.  ')
p('')

# Goals (slate only).
p('| goal | figure | met |')
p('| --- | --- | --- |')
if not has_slate:
    p('| all of the issue\'s goals | slate not measured | n/a |')
else:
    def goal(text, q, ok, what):
        if q is None:
            p(f'| {text} | n/a | n/a |')
        else:
            p(f"| {text} | {what.format(q[0])} | {'yes' if ok(q[0]) else '**no**'} |")
    ser = lambda s, se, k, f=None: series(s, se, k, f or (lambda x: x))
    if 'native' in systems:
        goal('cold walk, complete cache, <= 2x native', ratio(ser('slate', 'walk', 'walk_cold'),
             ser('native', 'walk', 'walk_cold')), lambda x: x <= 2, '{:.2f}x native time')
        goal('cold read, complete cache, >= 0.5x native throughput', ratio(ser('slate', 'read', 'read_cold', mbps),
             ser('native', 'read', 'read_cold', mbps)), lambda x: x >= 0.5, '{:.2f}x native MB/s')
        goal('warm read within 1.1x native', ratio(ser('slate', 'read', 'read_warm'),
             ser('native', 'read', 'read_warm')), lambda x: x <= 1.1, '{:.2f}x native time')
        goal('warm walk within 1.1x native (reported beside the read goal)',
             ratio(ser('slate', 'walk', 'walk_warm'), ser('native', 'walk', 'walk_warm')),
             lambda x: x <= 1.1, '{:.2f}x native time')
    sb = med(ser('slate', 'boot', 'server_bytes'))
    st = med(ser('slate', 'boot', 'status_fetched_bytes'))
    if sb is not None and boot_zstd:
        p(f"| boot files over HTTP, empty cache, <= 1.2x their zstd -3 size ({boot_zstd / 1e6:.2f} MB) | "
          f"{sb / 1e6:.2f} MB server side = {sb / boot_zstd:.2f}x (zstd -3 size = {boot_zstd / sb:.2f}x fetched)"
          + (f"; status fetched_bytes {st / 1e6:.2f} MB = {st / boot_zstd:.2f}x" if st else '')
          + f" | {'yes' if sb <= 1.2 * boot_zstd else '**no**'} |")
    else:
        p('| boot files over HTTP <= 1.2x zstd -3 size | n/a | n/a |')
    h = hwm.get('slate')
    p(f"| daemon peak RSS < 100 MB | {'n/a' if h is None else f'{int(h) / 1024:.0f} MiB (VmHWM, largest over all sessions)'} | "
      f"{'n/a' if h is None else ('yes' if int(h) * 1024 < 100e6 else '**no**')} |")
print('\n'.join(out))
