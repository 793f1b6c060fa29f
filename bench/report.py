#!/usr/bin/env python3
"""report.py - render bench/repo.sh's raw data as Markdown (stdlib only).

Usage: report.py RESULTS_DIR   (reads timings.tsv, metrics.tsv, env.tsv,
                                commands.txt; writes the report to stdout)

Every ratio is slate / peer computed within one repetition (same run), and
the table gives the median of those per-repetition ratios with their range.
Absolute values are medians over the repetitions. MB = 10^6 bytes.
"""
import collections
import os
import statistics
import sys

MB = 1e6


def load(res):
    timings = collections.defaultdict(dict)  # (step, tool, what) -> rep -> dict
    metrics = collections.defaultdict(dict)  # (step, tool, what, key) -> rep -> float
    with open(os.path.join(res, "timings.tsv")) as f:
        next(f)
        for line in f:
            rep, step, tool, what, wall, rss, usr, sys_ = line.rstrip("\n").split("\t")
            timings[(step, tool, what)][rep] = {
                "wall": float(wall), "rss_kb": int(rss), "user": float(usr), "sys": float(sys_)}
    with open(os.path.join(res, "metrics.tsv")) as f:
        next(f)
        for line in f:
            rep, step, tool, what, key, value = line.rstrip("\n").split("\t")
            try:
                metrics[(step, tool, what, key)][rep] = float(value)
            except ValueError:
                pass
    env = []
    path = os.path.join(res, "env.tsv")
    if os.path.exists(path):
        with open(path) as f:
            env = [tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line]
    commands = ""
    path = os.path.join(res, "commands.txt")
    if os.path.exists(path):
        with open(path) as f:
            commands = f.read()
    return timings, metrics, dict(env), commands


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    res = argv[1]
    T, M, env, commands = load(res)

    # series(...) -> {rep: value}
    def wall(step, tool, what):
        return {r: x["wall"] for r, x in T.get((step, tool, what), {}).items()}

    def checkout_total(tool):
        """Checkout of v3 made durable: the command plus the `sync` after it;
        slate syncs by itself, so its figure is the checkout command alone."""
        cmd = wall("checkout", tool, "v3")
        if tool == "slate":
            return cmd
        s = wall("checkout", tool, "sync-v3")
        return {r: cmd[r] + s[r] for r in cmd if r in s}

    def size(tool, what, key):
        scale = 1024 / MB if key == "du_sk_kib" else 1 / MB
        return {r: v * scale for r, v in M.get(("size", tool, "after-" + what, key), {}).items()}

    def rss_mb(step, tool, what):
        return {r: x["rss_kb"] * 1024 / MB for r, x in T.get((step, tool, what), {}).items()}

    def med(d):
        return statistics.median(d.values()) if d else float("nan")

    reps = sorted({r for v in T.values() for r in v}, key=int)
    rows = []

    def ratio_row(measure, a, peer, b, goal=None, fmt="%.2f"):
        rs = [a[r] / b[r] for r in a if r in b and b[r] > 0]
        if not rs:
            rows.append((measure, fmt % med(a), peer, fmt % med(b), "n/a", "", goal[0] if goal else "", ""))
            return
        m = statistics.median(rs)
        rng = "%.2f-%.2f" % (min(rs), max(rs)) if len(rs) > 1 else ""
        verdict = ""
        if goal:
            verdict = "yes" if goal[1](m) else "**no**"
        rows.append((measure, fmt % med(a), peer, fmt % med(b), "**%.2f**" % m, rng, goal[0] if goal else "", verdict))

    le = lambda x: (lambda v: v <= x)  # noqa: E731
    lt = lambda x: (lambda v: v < x)  # noqa: E731

    ratio_row("commit v1 into an empty repo, wall s", wall("commit", "slate", "v1"), "`casync make`",
              wall("commit", "casync", "v1"), ("<= 0.4", le(0.4)))
    ratio_row("commit v1 into an empty repo, wall s", wall("commit", "slate", "v1"), "`ostree commit` (archive)",
              wall("commit", "ostree", "v1"))
    for v in ("v2", "v3"):
        ratio_row("commit %s incrementally, wall s" % v, wall("commit", "slate", v), "`casync make` (same store)",
                  wall("commit", "casync", v))
        ratio_row("commit %s incrementally, wall s" % v, wall("commit", "slate", v), "`ostree commit` (archive)",
                  wall("commit", "ostree", v))
    for key, label in (("du_sb_bytes", "du -sb"), ("du_sk_kib", "du -sk")):
        for v in ("v1", "v2", "v3"):
            ratio_row("repo size after %s, %s MB" % (v, label), size("slate", v, key), "casync store + indexes",
                      size("casync", v, key), ("< 1", lt(1.0)), fmt="%.1f")
            ratio_row("repo size after %s, %s MB" % (v, label), size("slate", v, key), "ostree archive repo",
                      size("ostree", v, key), ("<= 0.8", le(0.8)), fmt="%.1f")
    ratio_row("checkout v3 into an empty dir + sync, wall s", checkout_total("slate"), "`cp -a` + `sync`",
              checkout_total("cp"), ("<= 1.3", le(1.3)))
    ratio_row("checkout v3 into an empty dir + sync, wall s", checkout_total("slate"), "`casync extract` + `sync`",
              checkout_total("casync"))
    ratio_row("checkout v3 into an empty dir + sync, wall s", checkout_total("slate"), "`ostree checkout` + `sync`",
              checkout_total("ostree"))
    for step, what in (("commit", "slate commit v3"), ("checkout", "slate checkout v3")):
        r = rss_mb(step, "slate", "v3")
        mx = max(r.values()) if r else float("nan")
        rows.append(("peak RSS of `%s`, MB (max over reps)" % what, "%.0f" % mx, "", "", "",
                     "%.0f-%.0f" % (min(r.values()), mx) if len(r) > 1 else "", "< 200 MB",
                     ("yes" if mx < 200 else "**no**") if r else ""))

    out = []
    p = out.append
    p("# slate vs. peers on the Debian trees (bench/repo.sh)\n")
    machine = "%s CPUs (%s), %s RAM, kernel %s, %s; work dir %s on %s; corpus %s on %s" % (
        env.get("nproc", "?"), env.get("cpu", "?"), env.get("mem_total", "?"), env.get("kernel", "?"),
        env.get("os", "?"), env.get("work_dir", "?"), env.get("work_fs", "?"), env.get("corpus_dir", "?"),
        env.get("corpus_fs", "?"))
    p("**Machine:** " + machine + "  ")
    p("**Date:** %s; %d repetition(s); load average (1/5/15 min) %s at the start, %s at the end  " % (
        env.get("date", "?"), len(reps), env.get("load_start", "?"), env.get("load_end", "?")))
    p("**Versions:** " + "; ".join("%s: %s" % (k, env[k]) for k in ("slate", "ostree", "casync", "cp", "time",
                                                                      "python3") if k in env) + "  ")
    p("**Trees:** " + "; ".join("%s: %s" % (k[5:], v) for k, v in env.items() if k.startswith("tree_")) + "\n")
    if commands:
        p("**Commands:**\n")
        p("```sh\n" + commands.rstrip("\n") + "\n```\n")
    p("**Method:** every timed command ran under `/usr/bin/time -v` after an untimed `sync`; before each "
      "checkout also `sync; rm -rf DEST; sync`. The tools are interleaved inside each repetition (their order "
      "rotates per repetition) and each repetition starts from empty repositories. The page cache was warmed "
      "once by reading the trees (caches cannot be dropped in a container). Values are medians over the "
      "repetitions; **slate/peer is the median of the per-repetition ratios** (same run), with their range. "
      "A checkout's time includes a separately timed `sync` after it, except slate's, which syncs by itself. "
      "Repository sizes: `du` counts hard links once. MB = 10^6 bytes; RSS from \"Maximum resident set size\".\n")

    p("## Results\n")
    p("| measure | slate | peer | peer value | slate/peer | range | goal | met |")
    p("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p("| " + " | ".join(r) + " |")
    p("")

    ident = M.get(("verify", "slate", "v3", "identical"), {})
    if ident:
        same = list(ident.values())[0] == 1
        p("Fidelity: slate's v3 checkout vs. the source tree (treedigest.py): %s.\n" % (
            "identical" if same else "**differs** (see v3.slate.fidelity.txt)"))

    p("## All timed commands (medians)\n")
    p("| step | tool | what | n | wall s | min | max | user s | sys s | max RSS MB |")
    p("|---|---|---|---|---|---|---|---|---|---|")
    for (step, tool, what), d in T.items():
        walls = [x["wall"] for x in d.values()]
        p("| %s | %s | %s | %d | %.2f | %.2f | %.2f | %.2f | %.2f | %.0f |" % (
            step, tool, what, len(walls), statistics.median(walls), min(walls), max(walls),
            statistics.median(x["user"] for x in d.values()), statistics.median(x["sys"] for x in d.values()),
            max(x["rss_kb"] for x in d.values()) * 1024 / MB))
    p("")
    p("## Repository sizes (medians)\n")
    p("| tool | after | du -sb MB | du -sk MB | files |")
    p("|---|---|---|---|---|")
    for tool in ("slate", "casync", "ostree"):
        for v in ("v1", "v2", "v3"):
            files = M.get(("size", tool, "after-" + v, "files"), {})
            p("| %s | %s | %.1f | %.1f | %s |" % (tool, v, med(size(tool, v, "du_sb_bytes")),
                                                 med(size(tool, v, "du_sk_kib")),
                                                 "%.0f" % med(files) if files else ""))
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
