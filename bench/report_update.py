#!/usr/bin/env python3
"""report_update.py - render bench/update.sh's raw data as Markdown (stdlib only).

Usage: report_update.py RESULTS_DIR   (reads timings.tsv, metrics.tsv,
                                       failures.tsv, env.tsv, commands.txt,
                                       fidelity/; writes the report to stdout)

Absolute values are medians over the repetitions. Every ratio is slate / peer
computed within one repetition (same run); the table gives the median of
those per-repetition ratios (with their range when n > 1). MB = 10^6 bytes.
"""
import collections
import os
import statistics
import sys

MB = 1e6
STEPS = ("v1-v2", "v2-v3", "v1-v3")
PEERS = ("rsync", "rsync-z", "ostree", "ostree-delta", "casync")
SLATES = ("slate-delta", "slate-frames", "slate-delta-fresh", "slate-frames-fresh", "slate-delta-ab",
          "slate-frames-ab")
MAIN = ("slate-delta", "slate-frames")  # the in-place rows the goals are judged on

LABEL = {
    "slate-delta": "slate, prepared deltas, in place",
    "slate-frames": "slate, frames only (no deltas), in place",
    "slate-delta-fresh": "slate, prepared deltas, fresh slot",
    "slate-frames-fresh": "slate, frames only, fresh slot",
    "slate-delta-ab": "slate, prepared deltas, A/B (reserve holds v1)",
    "slate-frames-ab": "slate, frames only, A/B (reserve holds v1)",
    "rsync": "rsync `-aHAXS --delete`, daemon",
    "rsync-z": "rsync the same + `-z`",
    "ostree": "ostree pull, objects + checkout",
    "ostree-delta": "ostree pull, static deltas + checkout",
    "casync": "casync extract `--seed`",
}
HELD = {
    "rsync": "a copy of {a} (updated in place)",
    "rsync-z": "a copy of {a} (updated in place)",
    "ostree": "bare repo with {a}; checks {b} out into a new dir",
    "ostree-delta": "bare repo with {a}; checks {b} out into a new dir",
    "casync": "a copy of {a} as seed; writes a new dir",
}


def fnum(x, fmt="%.2f"):
    return "" if x is None or x != x else fmt % x


def fmb(x):
    if x is None or x != x:
        return ""
    return "%.2f" % (x / MB) if x < 10 * MB else "%.1f" % (x / MB)


def load(res):
    T = collections.defaultdict(dict)  # (step, tool, what) -> rep -> dict
    M = collections.defaultdict(dict)  # (step, tool, what, key) -> rep -> float or str
    with open(os.path.join(res, "timings.tsv")) as f:
        next(f)
        for line in f:
            rep, step, tool, what, wall, rss, usr, sys_ = line.rstrip("\n").split("\t")
            T[(step, tool, what)][rep] = {"wall": float(wall), "rss_kb": int(rss), "user": float(usr),
                                          "sys": float(sys_)}
    with open(os.path.join(res, "metrics.tsv")) as f:
        next(f)
        for line in f:
            rep, step, tool, what, key, value = line.rstrip("\n").split("\t")
            try:
                M[(step, tool, what, key)][rep] = float(value)
            except ValueError:
                M[(step, tool, what, key)][rep] = value
    failures = []
    path = os.path.join(res, "failures.tsv")
    if os.path.exists(path):
        with open(path) as f:
            next(f, None)
            failures = [line.rstrip("\n").split("\t", 4) for line in f if line.strip()]
    env = {}
    path = os.path.join(res, "env.tsv")
    if os.path.exists(path):
        with open(path) as f:
            env = dict(tuple(line.rstrip("\n").split("\t", 1)) for line in f if "\t" in line)
    commands = ""
    path = os.path.join(res, "commands.txt")
    if os.path.exists(path):
        with open(path) as f:
            commands = f.read()
    return T, M, failures, env, commands


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    res = argv[1]
    T, M, failures, env, commands = load(res)

    def med(d):
        vals = [v for v in d.values() if isinstance(v, float) or isinstance(v, int)]
        return statistics.median(vals) if vals else None

    def wall(tool, step, sync=False):
        """{rep: seconds}: the update command (ostree: pull + checkout), plus the sync after it."""
        main_ = {r: x["wall"] for r, x in T.get(("update", tool, step), {}).items()}
        if tool.startswith("ostree"):
            co = {r: x["wall"] for r, x in T.get(("update", tool, step + ":checkout"), {}).items()}
            main_ = {r: main_[r] + co[r] for r in main_ if r in co}
        if sync:
            s = {r: x["wall"] for r, x in T.get(("update", tool, step + ":sync"), {}).items()}
            main_ = {r: main_[r] + s[r] for r in main_ if r in s}
        return main_

    def rss(tool, step):
        out = {}
        for what in (step, step + ":checkout"):
            for r, x in T.get(("update", tool, what), {}).items():
                out[r] = max(out.get(r, 0), x["rss_kb"] * 1024)
        return out

    def metric(tool, step, key, phase="update"):
        return {r: v for r, v in M.get((phase, tool, step, key), {}).items() if isinstance(v, float)}

    def ratio(a, b):
        """median and range of per-repetition a/b"""
        rs = [a[r] / b[r] for r in a if r in b and b[r]]
        if not rs:
            return None, ""
        return statistics.median(rs), ("%.2f-%.2f" % (min(rs), max(rs)) if len(rs) > 1 else "")

    def best_peer(fn, step):
        """{rep: (value, peer)} minimum over the peers in each repetition"""
        out = {}
        for p in PEERS:
            for r, v in fn(p, step).items():
                if r not in out or v < out[r][0]:
                    out[r] = (v, p)
        return out

    def fratio(m):
        return "" if m is None else "%.2f" % m

    reps = sorted({r for (s, _, _), d in T.items() if s == "update" for r in d}, key=int)
    out = []
    p = out.append
    p("# slate update vs. peers over HTTP / rsync daemon on 127.0.0.1 (bench/update.sh)\n")
    p("**Machine:** %s CPUs (%s), %s RAM, kernel %s, %s; work dir %s on %s; corpus %s  " % (
        env.get("nproc", "?"), env.get("cpu", "?"), env.get("mem_total", "?"), env.get("kernel", "?"),
        env.get("os", "?"), env.get("work_dir", "?"), env.get("work_fs", "?"), env.get("corpus_dir", "?")))
    p("**Date:** %s; %d repetition(s); load average (1/5/15 min) %s at the start, %s at the end; "
      "network namespace: %s  " % (env.get("date", "?"), len(reps), env.get("load_start", "?"),
                                   env.get("load_end", "?"), env.get("netns", "?")))
    p("**Versions:** " + "; ".join("%s: %s" % (k, env[k]) for k in (
        "slate", "ostree", "casync", "rsync", "nginx", "time", "python3") if k in env) + "  ")
    p("**Trees:** " + "; ".join("%s: %s" % (k[5:], v) for k, v in env.items() if k.startswith("tree_")) + "\n")
    if commands:
        p("**Commands:**\n")
        p("```sh\n" + commands.rstrip("\n") + "\n```\n")
    p("**Method:** every client starts from scratch for every measurement and is brought, untimed, into the "
      "state given in the \"client held\" column. Every timed command ran under `/usr/bin/time -v` after an "
      "untimed `sync`, and was followed by a separately timed `sync` (\"+sync\"). The tools are interleaved "
      "inside each repetition and their order rotates per repetition. **lo MB** is every loopback byte in both "
      "directions (TCP/IP headers included) during the command, counted in a private network namespace that "
      "only the benchmark uses (peers.sh counted the machine's lo the same way). **payload MB** is each tool's "
      "own count: slate's `bytes_fetched` (response bodies), nginx's `$bytes_sent` (headers + bodies) for "
      "ostree/casync, rsync's \"Total bytes received\". **req.**: slate's JSON `requests` (content requests: "
      "range requests + a delta) / every request in the server log (fleet assignment and report, snapshot "
      "record and signatures, pack indexes, packs, deltas); for ostree/casync both are nginx's count. "
      "ostree's wall time is pull + checkout. Values are medians over the repetitions; ratios are medians of "
      "per-repetition ratios slate/peer (same run). MB = 10^6 bytes; RSS is \"Maximum resident set size\".\n")

    # ---------------------------------------------------------------- goals
    rows = []

    def verdict(m, ok):
        return "" if m is None else ("yes" if ok(m) else "**no**")

    lo = lambda t, s: metric(t, s, "lo_bytes")  # noqa: E731
    for step in STEPS:
        bp = best_peer(lo, step)
        for t in MAIN:
            a = lo(t, step)
            m, rng = ratio(a, {r: v[0] for r, v in bp.items()})
            peer = collections.Counter(v[1] for v in bp.values()).most_common(1)
            rows.append(("fewer bytes (lo) than every peer", step, "%s: %s MB" % (t, fmb(med(a))),
                         "fewest peer: %s %s MB" % (peer[0][0] if peer else "?",
                                                    fmb(med({r: v[0] for r, v in bp.items()}))),
                         "" if m is None else "%.3f" % m, rng, "< 1", verdict(m, lambda x: x < 1)))
    od = metric("ostree", "v1-v2", "delta_bytes", phase="delta")
    od_med = med(od)
    for t in MAIN:
        for key, what in (("lo_bytes", "lo"), ("payload_bytes", "payload")):
            a = metric(t, "v1-v2", key)
            m = med(a) / od_med if a and od_med else None
            rows.append(("v1->v2 bytes <= 0.8 x OSTree static delta", "v1-v2",
                         "%s %s: %s MB" % (t, what, fmb(med(a))),
                         "ostree static delta v1->v2 (Total Size): %s MB (0.8x = %s MB)" % (
                             fmb(od_med), fmb(0.8 * od_med if od_med else None)),
                         fratio(m), "", "<= 0.8", verdict(m, lambda x: x <= 0.8)))
    for sync in (False, True):
        for step in STEPS:
            bp = best_peer(lambda t, s: wall(t, s, sync), step)
            for t in MAIN:
                a = wall(t, step, sync)
                m, rng = ratio(a, {r: v[0] for r, v in bp.items()})
                peer = collections.Counter(v[1] for v in bp.values()).most_common(1)
                rows.append(("wall%s <= fastest peer" % (" + sync" if sync else ""), step,
                             "%s: %s s" % (t, fnum(med(a))),
                             "fastest: %s %s s" % (peer[0][0] if peer else "?",
                                                   fnum(med({r: v[0] for r, v in bp.items()}))),
                             fratio(m), rng, "<= 1", verdict(m, lambda x: x <= 1)))
    for step in STEPS:
        a = {r: x["wall"] for r, x in T.get(("delta", "slate", step), {}).items()}
        b = {r: x["wall"] for r, x in T.get(("delta", "ostree", step), {}).items()}
        if not a and not b:
            continue
        m, rng = ratio(a, b)
        rows.append(("delta generation <= 0.5 x `ostree static-delta generate`", step,
                     "slate delta: %s s (n=%d)" % (fnum(med(a)), len(a)),
                     "ostree: %s s (n=%d)" % (fnum(med(b)), len(b)), fratio(m), rng, "<= 0.5",
                     verdict(m, lambda x: x <= 0.5)))
    v3 = []
    for t in SLATES:
        for step in ("v2-v3", "v1-v3"):
            for r, v in rss(t, step).items():
                v3.append((v, t, step))
    if v3:
        mx = max(v3)
        rows.append(("agent peak RSS < 100 MB on v3", "v2-v3, v1-v3",
                     "max %s MB (%s %s)" % (fnum(mx[0] / MB, "%.0f"), mx[1], mx[2]),
                     "all slate runs that wrote v3 (min %s MB)" % fnum(min(v3)[0] / MB, "%.0f"), "", "",
                     "< 100 MB", "yes" if mx[0] < 100 * MB else "**no**"))
    p("## Goals\n")
    p("| goal | step | slate | reference | slate/ref | range | goal | met |")
    p("|---|---|---|---|---|---|---|---|")
    for r in rows:
        p("| " + " | ".join(r) + " |")
    p("")

    # ---------------------------------------------------------------- per step
    p("## Updates\n")
    p("slate rows: \"in place\" = the old version runs and the reserve slot also holds it (a copy of the running "
      "tree, like rsync's copy of the old tree), and only the changed entries of the reserve are rewritten; "
      "\"fresh slot\" = the old version runs in slot a and slot b is empty, so the whole new tree is written "
      "(local data is copied from slot a); \"A/B\" = v2 runs in slot b and slot a still holds v1 (the state "
      "after two A/B updates). The \"client held\" column is what the agent's `slate status` said before the "
      "measured pass. \"Δ÷\" and \"fr÷\" are slate with deltas (in place) and slate frames-only (in place) "
      "divided by the row, same repetition.\n")
    for step in STEPS:
        a, b = step.split("-")
        p("### %s -> %s\n" % (a, b))
        p("| tool / mode | client held before | lo MB | payload MB | req. (client / server) | wall s | +sync s "
          "| peak RSS MB | Δ÷ lo | Δ÷ wall | fr÷ lo | fr÷ wall |")
        p("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for t in SLATES + PEERS:
            if not T.get(("update", t, step)) and not M.get(("update", t, step, "lo_bytes")):
                continue
            if t.startswith("slate"):
                def sv(k):
                    d = M.get(("update", t, step, k), {})
                    return d[max(d, key=int)] if d else "?"
                held = "slots a=%s b=%s, runs %s" % (sv("before_slot_a"), sv("before_slot_b"), sv("before_active"))
            else:
                held = HELD[t].format(a=a, b=b)
            req_c = med(metric(t, step, "requests"))
            req_s = med(metric(t, step, "server_requests"))
            req = "-" if t.startswith("rsync") else "%s / %s" % (fnum(req_c, "%.0f"), fnum(req_s, "%.0f"))
            cells = [LABEL[t], held, fmb(med(lo(t, step))), fmb(med(metric(t, step, "payload_bytes"))), req,
                     fnum(med(wall(t, step))), fnum(med(wall(t, step, True))),
                     fnum(max(rss(t, step).values()) / MB, "%.0f") if rss(t, step) else ""]
            for s in MAIN:
                for fn in (lo, lambda tt, ss: wall(tt, ss)):
                    cells.append("" if t == s else fratio(ratio(fn(s, step), fn(t, step))[0]))
            p("| " + " | ".join(cells) + " |")
        p("")

    # ---------------------------------------------------------------- deltas
    p("## Delta preparation\n")
    p("| delta | `slate delta --level %s` s | RSS MB | size MB | `ostree static-delta generate` s | RSS MB "
      "| size MB (Total Size / delta dir) | n (slate / ostree) | time slate/ostree | size slate/ostree |" % env.get(
          "delta_level", "?"))
    p("|---|---|---|---|---|---|---|---|---|---|")
    for step in STEPS:
        ts = T.get(("delta", "slate", step), {})
        to = T.get(("delta", "ostree", step), {})
        if not ts and not to:
            continue
        ws = {r: x["wall"] for r, x in ts.items()}
        wo = {r: x["wall"] for r, x in to.items()}
        ss = metric("slate", step, "delta_bytes", "delta")
        so = metric("ostree", step, "delta_bytes", "delta")
        sf = metric("ostree", step, "delta_files_bytes", "delta")
        p("| %s | %s | %s | %s | %s | %s | %s / %s | %d / %d | %s | %s |" % (
            step, fnum(med(ws)), fnum(max((x["rss_kb"] for x in ts.values()), default=0) * 1024 / MB, "%.0f"),
            fmb(med(ss)), fnum(med(wo)),
            fnum(max((x["rss_kb"] for x in to.values()), default=0) * 1024 / MB, "%.0f"), fmb(med(so)),
            fmb(med(sf)), len(ws), len(wo), fratio(ratio(ws, wo)[0]), fratio(ratio(ss, so)[0])))
    p("")
    p("slate's size is its .delta file (everything the agent downloads for the delta). OSTree's \"Total Size\" "
      "(`ostree static-delta show`) includes its fallback objects, which are stored and fetched as loose "
      "objects; \"delta dir\" is the parts + superblock under deltas/. n=1 rows were generated once "
      "(minutes each), like peers.sh.\n")

    # ---------------------------------------------------------------- slate details
    p("## slate passes in detail (medians)\n")
    p("JSON requests is the agent's own count (range requests for content, plus 1 for a delta however many "
      "requests its download took); the server columns count every request in `slate serve`'s log.\n")
    p("| step | mode | bytes_fetched MB | bytes_local MB | JSON requests | server requests: fleet / snapshot "
      "/ idx / pack / delta / non-2xx | files written | bytes written MB | unchanged | removed | meta updated "
      "| JSON seconds |")
    p("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for step in STEPS:
        for t in SLATES:
            if not M.get(("update", t, step, "lo_bytes")):
                continue
            g = lambda k: med(metric(t, step, k))  # noqa: E731
            p("| %s | %s | %s | %s | %s | %s / %s / %s / %s / %s / %s | %s | %s | %s | %s | %s | %s |" % (
                step, t, fmb(g("json_bytes_fetched")), fmb(g("json_bytes_local")), fnum(g("json_requests"), "%.0f"),
                fnum(g("server_req_fleet"), "%.0f"), fnum(g("server_req_snapshots"), "%.0f"),
                fnum(g("server_req_idx"), "%.0f"), fnum(g("server_req_packs"), "%.0f"),
                fnum(g("server_req_deltas"), "%.0f"), fnum(g("server_non2xx"), "%.0f"),
                fnum(g("json_apply.files_written"), "%.0f"), fmb(g("json_apply.bytes_written")),
                fnum(g("json_apply.unchanged"), "%.0f"), fnum(g("json_apply.removed"), "%.0f"),
                fnum(g("json_apply.meta_updated"), "%.0f"), fnum(g("json_seconds"))))
    p("")
    rows = []
    for step in STEPS:
        for t in ("ostree", "ostree-delta"):
            d = metric(t, step, "http_bytes_deltas")
            o = metric(t, step, "http_bytes_objects")
            if d or o:
                rows.append("| %s | %s | %s | %s |" % (step, t, fmb(med(d)), fmb(med(o))))
    if rows:
        p("OSTree bytes by URL (nginx; ostree 2022.7 also fetches loose objects a delta carries, upstream #2053):\n")
        p("| step | mode | deltas/ MB | objects/ MB |")
        p("|---|---|---|---|")
        out.extend(rows)
        p("")

    # ---------------------------------------------------------------- fidelity, failures
    ver = {k: v for k, v in M.items() if k[0] == "verify"}
    if ver:
        p("## Fidelity of slate's results (treedigest.py vs. the source tree, last repetition)\n")
        p("| step | mode | slot written | result |")
        p("|---|---|---|---|")
        for (_, tool, step, _k), d in sorted(ver.items()):
            ok = list(d.values())[-1] == 1
            line = ""
            path = os.path.join(res, "fidelity", "%s.%s.txt" % (tool, step))
            if os.path.exists(path):
                with open(path) as f:
                    lines = [x.strip() for x in f if x.strip()]
                    line = lines[-1] if lines else ""
            slot = M.get(("update", tool, step, "json_slot"), {})
            p("| %s | %s | %s | %s%s |" % (step, tool, list(slot.values())[-1] if slot else "",
                                          "identical" if ok else "**differs**", (": " + line) if line and not ok
                                          else ""))
        p("")
    p("## Failures\n")
    if failures:
        p("| rep | step | tool | what | error |")
        p("|---|---|---|---|---|")
        for f in failures:
            p("| " + " | ".join(x.replace("|", "\\|") for x in f) + " |")
    else:
        p("None.")
    p("")

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
    print("\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
