#!/usr/bin/env python3
"""Report of bench/home.sh: medians and same-run ratios as a Markdown table.

Usage: home_report.py TIMINGS.tsv FILES BYTES RESTIC_VERSION
"""
import statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1])]
files, size, restic_version = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
reps = sorted({r[0] for r in rows})
def val(rep, step, tool, col=3):
    v = [float(r[col]) for r in rows if r[0] == rep and r[1] == step and r[2] == tool]
    return v[0] if v else 0.0
def per_rep(step, tool, col=3):
    if step == 'restore+sync':
        return [val(r, 'restore', tool, col) + val(r, 'sync', tool, col) for r in reps]
    return [val(r, step, tool, col) for r in reps]
med = lambda step, tool: statistics.median(per_rep(step, tool))
def ratio(step):
    pairs = [(s, r) for s, r in zip(per_rep(step, 'slate'), per_rep(step, 'restic')) if r > 0]
    return statistics.median(s / r for s, r in pairs) if pairs else float('nan')
print(f"Tree: {files} files, {size/1e9:.2f} GB; restic {restic_version}; medians of {len(reps)} repetitions; "
      "ratio = median of the per-repetition ratios.\n")
print("| step | slate home | restic | slate / restic | goal |")
print("| --- | --- | --- | --- | --- |")
goals = {
    'first': ('restic / slate >= 1.5', lambda q: 1 / q >= 1.5),
    'unchanged': (f'slate < {2*files/100000:.2f} s ({files} files)', None),
    'restore+sync': ('slate <= restic', lambda q: q <= 1),
}
for step, label in [('first', 'first backup (s)'), ('unchanged', 'nothing changed (s)'),
                    ('restore', 'restore (s)'), ('sync', 'sync after restore (s)'), ('restore+sync', 'restore + sync (s)')]:
    s, r, q = med(step, 'slate'), med(step, 'restic'), ratio(step)
    if step in goals:
        g, ok = goals[step]
        met = (s < 2 * files / 100000) if ok is None else ok(q)
        goal = f"{g}: {'met' if met else 'MISSED'}"
    else:
        goal = ''
    print(f"| {label} | {s:.2f} | {r:.2f} | {q:.2f} | {goal} |")
s, r = med('size', 'slate'), med('size', 'restic')
print(f"| repository size (MB) | {s/1e6:.1f} | {r/1e6:.1f} | {s/r:.2f} | slate <= restic: {'met' if s <= r else 'MISSED'} |")
print()
for step in ['first', 'unchanged', 'restore']:
    print(f"Peak RSS {step}: slate {statistics.median(per_rep(step, 'slate', 4))/1024:.0f} MiB, "
          f"restic {statistics.median(per_rep(step, 'restic', 4))/1024:.0f} MiB.  ")
