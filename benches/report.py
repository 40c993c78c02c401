#!/usr/bin/env python3
"""Write benches/RESULTS.md and the chart's input from the JSON a `benches/run` run collected.

Nothing in RESULTS.md is typed by hand except its "## Notes" section, which this writer keeps
as it finds it (the analysis of missed targets). The targets P1-P10 and how each is judged are
in TARGETS below: the one place to change when a target changes.

usage: benches/report.py [--results benches/results/results.json] [--out benches/RESULTS.md]
                         [--ratios benches/results/ratios.json]
"""
import argparse
import json
import os
import statistics

HERE = os.path.dirname(os.path.abspath(__file__))

# (target, what, depotfs measurement, peer measurement or None, ">=" or "<=", threshold, unit)
# With a peer, the judged figure is median(depotfs) / median(peer); without, median(depotfs).
TARGETS = [
    # Issue 21 raised P1 (4x), P7 (1.5x; fetched 3x touched) and added the P3 and P4 rows
    # against squashfuse_ll and ext4. P1 is shown as measured on the work dir's disk and with
    # the disk taken out (both tools writing to tmpfs); its ceilings are in BOUNDS.
    ("P1", "publish throughput vs `casync make`, store on this disk", "p1.depotfs_mbps", "p1.casync_mbps", ">=",
     8.0, "x"),
    ("P1", "publish throughput vs `casync make`, both writing to tmpfs (no disk)", "p1.tmpfs.depotfs_mbps",
     "p1.tmpfs.casync_mbps", ">=", 8.0, "x"),
    ("P2", "publish all/ from scratch", "p2.scratch_s", None, "<=", 30.0, "s"),
    ("P2", "add + publish one more image", "p2.one_more_s", None, "<=", 1.0, "s"),
    ("P2", "new metadata for that publish", "p2.meta_kib", None, "<=", 64.0, "KiB"),
    ("P3", "`ls -f all/`, fresh mount over HTTP", "ls.f.depotfs_fresh", "ls.f.ext4_cold", "<=", 0.5, "s"),
    ("P3", "`ls -f all/`, fresh mount vs a fresh squashfuse_ll mount", "ls.f.depotfs_fresh",
     "ls.f.squashfuse_ll_fresh", "<=", 1.0, "x"),
    ("P3", "`ls -f all/` warm vs squashfuse_ll", "ls.f.depotfs_warm", "ls.f.squashfuse_ll_warm", "<=", 1.2, "x"),
    ("P3", "`ls -l all/` warm vs ext4", "ls.l.depotfs_warm", "ls.l.ext4_warm", "<=", 1.5, "x"),
    ("P4", "cold read over HTTP vs `casync mount`", "read.depotfs_cold", "read.casync_cold", ">=", 5.0, "x"),
    ("P4", "cold read over HTTP, absolute", "read.depotfs_cold", None, ">=", 460.0, "MiB/s"),
    ("P4", "cold read over HTTP vs the same file cold from ext4 (time)", "read.depotfs_cold_s", "read.plain_cold_s",
     "<=", 1.5, "x"),
    ("P5", "warm read vs squashfuse on a local image (cold)", "read.depotfs_warm", "read.squashfuse_cold", ">=",
     1.0, "x"),
    ("P6", "hot read vs a plain local file (hot)", "read.depotfs_hot", "read.plain_hot", ">=", 0.9, "x"),
    ("P7", "container start vs the local image", "ct.depotfs_s", "ct.local_s", "<=", 1.1, "x"),
    ("P7", "container start: bytes fetched / bytes touched", "ct.fetched_mb", "ct.touched_mb", "<=", 1.5, "x"),
    ("P7", "with prefetch from the access list: start vs local", "ct.prefetch_depotfs_s", "ct.local_s", "<=", 1.1,
     "x"),
    ("P7", "with prefetch: bytes fetched / bytes the start touches (measured without the list: with it, the "
     "page cache answers most reads)", "ct.prefetch_fetched_mb", "ct.touched_mb", "<=",
     1.5, "x"),
    ("P9", "client RSS (VmHWM) after listing all/ and reading 5 GB", "rss.hwm_mb", None, "<=", 200.0, "MB"),
    ("P10", "16 parallel cold readers vs one reader (aggregate)", "par.many_mibps", "par.one_mibps", ">=", 1.5, "x"),
]

# Floors and ceilings measured in the same run, judged against their target's threshold: when a
# bound already misses the target, the target is out of reach on this machine by that bound's
# argument (the project's rule: a target this machine cannot reach is shown with the
# measurement of why). Same shape as TARGETS, plus why the bound holds.
BOUNDS = [
    ("P1", "the most this disk's write rate allows depotfs (its objects written again as `add` writes "
     "them), vs `casync make`", "p1.disk_ceiling_mbps", "p1.casync_mbps", ">=", 8.0, "x",
     "`add` cannot store faster than the disk takes its objects"),
    ("P1", "on tmpfs, at each tool's CPU seconds per GiB: depotfs on all cores free vs casync on one",
     "p1.tmpfs.depotfs_cpu_bound_mbps", "p1.tmpfs.casync_cpu_bound_mbps", ">=", 8.0, "x",
     "a tool cannot go faster than its CPU cost allows on the cores it can use (as P10)"),
    ("P3", "fresh `ls -f all/`: depotfs's own warm listing (no network at all) vs a fresh squashfuse_ll mount",
     "ls.f.depotfs_warm", "ls.f.squashfuse_ll_fresh", "<=", 1.0, "x",
     "a fresh listing does all the warm listing's work and downloads the directory besides"),
    ("P3", "fresh `ls -f all/` at its CPU ceiling (the daemon's, nginx's and ls's CPU seconds spread over 2 idle "
     "cores) vs a fresh squashfuse_ll mount", "ls.f.depotfs_fresh_ceiling_s", "ls.f.squashfuse_ll_fresh", "<=", 1.0,
     "x", "the daemon, nginx and ls cannot use more than the 2 cores: at today's CPU cost per listing, only a "
     "cheaper listing (fewer, larger directory nodes) can go faster"),
    ("P4", "cold read at its CPU ceiling (the read's CPU seconds spread over 2 idle cores) vs ext4 cold, time",
     "read.depotfs_cold_ceiling_s", "read.plain_cold_s", "<=", 1.5, "x",
     "the daemon, nginx and the reader cannot use more than the 2 cores"),
    ("P7", "container start without an access list on depotfs, warm (chunks in its disk cache, no network) "
     "vs the local image", "ct.depotfs_warm_s", "ct.local_s", "<=", 1.1, "x",
     "without a list, a cold start makes the warm start's reads in the same order, each chunk from HTTP "
     "instead of its local cache file: faster fetching cannot take it below the warm start (with a list, "
     "chunks load side by side ahead of the reads, a different path)"),
    ("P10", "most aggregate gain of parallel readers: 100 % / one reader's CPU busy",
     "par.ceiling_x", None, ">=", 1.5, "x",
     "parallel readers can at best keep every CPU busy"),
]

NOTES_HEADING = "## Notes"


def med(m):
    return statistics.median(m["values"])


def fmt(x):
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def judge(measurements, t):
    """(value, met, text) of target row `t` (or bound row: its first seven fields), or None
    when it was not measured. A ratio ("x") without a peer is a measured ratio itself."""
    _p, _what, dk, pk, op, thr, unit = t[:7]
    if dk is None or dk not in measurements or (pk and pk not in measurements):
        return None
    if unit == "x" and pk:
        value = med(measurements[dk]) / med(measurements[pk])
    else:
        value = med(measurements[dk])
    met = value >= thr if op == ">=" else value <= thr
    return value, met, f"{fmt(value)}{'x' if unit == 'x' else ' ' + unit}"


def measurement_row(m):
    xs = m["values"]
    extra = f" ({m['extra']})" if m.get("extra") else ""
    return (f"| {m['label']}{extra} | {fmt(statistics.median(xs))} | {fmt(min(xs))} | {fmt(max(xs))} | "
            f"{m['unit']} | {len(xs)} |")


STAGE_ORDER = ["http", "decompress", "hash", "cache_write", "cache_wait", "cache_load", "read", "reply"]
STAGE_WHAT = {
    "http": "HTTP receive: request sent until the whole body is in memory (downloads overlap)",
    "decompress": "zstd decompression",
    "hash": "blake3 of the plaintext against its name (verification)",
    "cache_write": "verified bytes written to the disk cache",
    "cache_wait": "a download waiting for room in the cache writer's queue (the disk slower than the network)",
    "cache_load": "cached object read back from disk",
    "read": "FUSE read request: arrival until its bytes are ready (the reader's wait)",
    "reply": "reply written to /dev/fuse (the kernel copies it into the page cache)",
}


def stage_table(runs):
    """Markdown lines: one stage table per measured read (`read.py`'s `stage_runs`): each
    stage's calls, summed time, bytes and rate, then the CPU seconds of the daemon, nginx and
    the reader. Summed times of overlapping tasks may exceed the wall time; CPU seconds do not
    depend on how loaded the machine was, in proportion."""
    L = []
    for i, r in enumerate(runs):
        st = r.get("stages") or {}
        wall = r["wall_s"]
        L += [f"#### {r['kind']} read {i // 2 + 1}: {wall:.2f} s wall ({r['conditions']})", ""]
        if not st:
            L += ["This depotfs has no stage counters (`user.depotfs.stages`).", ""]
        else:
            L += ["| stage | calls | time, summed | × wall | bytes | MiB/s of stage time |",
                  "|---|---|---|---|---|---|"]
            for name in STAGE_ORDER:
                if name not in st:
                    continue
                calls, secs, nbytes = st[name]
                if not calls:
                    continue
                rate = f"{nbytes / 2**20 / secs:.0f}" if secs > 0 else ""
                L.append(f"| {name}: {STAGE_WHAT.get(name, '')} | {calls} | {secs:.3f} s | {secs / wall:.2f} | "
                         f"{nbytes / 2**20:.1f} MiB | {rate} |")
            L.append("")
        cpu = r.get("cpu_s") or {}
        if cpu:
            total = sum(cpu.values())
            mib = (st.get("read") or (0, 0, 0))[2] / 2**20
            L.append("CPU seconds during the read: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) +
                     f"; all {total:.2f} of {2 * wall:.2f} available on 2 cores ({100 * total / (2 * wall):.0f} %)")
            if mib and total:
                # The load-independent bound: what these CPU seconds allow on 2 otherwise idle cores.
                L.append(f"At {total / (mib / 1024):.2f} CPU seconds per GiB, 2 idle cores allow at most "
                         f"{mib / (total / 2):.0f} MiB/s for this read")
        c = r.get("counters") or {}
        if c:
            L.append("Counters after it: " + "; ".join(f"{k} = {v}" for k, v in c.items()))
        L.append("")
    return L


def bounds_table(meas):
    """Markdown lines: the BOUNDS measured in this run, each judged against its target."""
    rows = []
    for b in BOUNDS:
        j = judge(meas, b)
        if j is None:
            continue
        p, what, dk, pk, op, thr, unit, why = b
        value, within, text = j
        target = f"{op.replace('>=', '≥').replace('<=', '≤')} {thr:g}{'x' if unit == 'x' else ' ' + unit}"
        verdict = "reachable by this bound" if within else "**out of reach here**"
        rows.append(f"| {p} | {what} | {text} | {target} | {verdict} | {why} |")
    if not rows:
        return []
    return ["", "### What this machine allows: floors and ceilings measured in this run", "",
            "A bound that already misses its target means the target cannot be met on this machine "
            "along that bound's path, whatever the code does there (the last column says which path); "
            "one within it means the miss (if any) is the code's.", "",
            "| target | bound | figure | target | verdict | why it bounds the target |",
            "|---|---|---|---|---|---|", *rows]


def old_notes(path):
    if not os.path.exists(path):
        return NOTES_HEADING + "\n\n(none yet)\n"
    with open(path) as f:
        text = f.read()
    i = text.find("\n" + NOTES_HEADING + "\n")
    if i < 0:
        return NOTES_HEADING + "\n\n(none yet)\n"
    return text[i + 1:]


def write(results, out, ratios_out):
    meas = {}
    for s in results["scripts"].values():
        meas.update(s["measurements"])
    notes = old_notes(out)
    mc = results["machine"]
    L = ["# Benchmark results", "",
         "Written by `benches/run` from `benches/results/results.json` (do not edit by hand, except the "
         "Notes section at the end, which the runner keeps). How to run: `benches/README.md`.", "",
         f"## Run: {results['date']}", "",
         f"- mode: **{results['mode']}**{' (small sizes, 1 rep: checks the runner, not the targets)' if results['mode'] == 'quick' else ''}; "
         f"duration {results['duration_s'] / 60:.1f} min",
         f"- commit: `{results['commit']}`{' (with uncommitted changes)' if results.get('dirty') else ''}; "
         f"depotfs binary: {results['depotfs_bin']}",
         f"- machine: {mc['cpu']}, {mc['cores']} cores, {mc['ram']} RAM, Linux {mc['kernel']}, "
         f"work dir on {mc['disk']}",
         f"- load average at start / end: {mc['load_start']} / {results.get('load_end', '?')}",
         f"- command: `{results['command']}`", ""]
    L += ["## Targets", "",
          "Ratios are of medians. Every measurement is repeated (n below); cold = page cache dropped.", "",
          "| target | what | depotfs | peer | ratio / value | target | result |", "|---|---|---|---|---|---|---|"]
    chart = []
    for t in TARGETS:
        p, what, dk, pk, op, thr, unit = t
        if dk is None:
            L.append(f"| {p} | {what} | | | | | not measured |")
            continue
        j = judge(meas, t)
        target = f"{op.replace('>=', '≥').replace('<=', '≤')} {thr:g}{'x' if unit == 'x' else ' ' + unit}"
        if j is None:
            reason = results["info"].get("container_trace", "") if dk.startswith("ct.prefetch") else ""
            L.append(f"| {p} | {what} | | | | {target} | {reason or 'not measured'} |")
            continue
        value, met, text = j
        dm = meas[dk]
        d_txt = f"{fmt(med(dm))} {dm['unit']}"
        p_txt = f"{fmt(med(meas[pk]))} {meas[pk]['unit']}" if pk else ""
        verdict = "**met**" if met else "**missed**"
        if results["mode"] == "quick":
            verdict += " (quick run: small sizes)"
        L.append(f"| {p} | {what} | {d_txt} | {p_txt} | {text} | {target} | {verdict} |")
        # Attainment: 1.0 = exactly the target, > 1 = better than the target.
        att = value / thr if op == ">=" else thr / value if value > 0 else float("inf")
        chart.append({"label": f"{p} {what}", "value": text, "target": target, "attainment": att, "met": met})
    L += bounds_table(meas)
    L += ["", "![target attainment](results/ratios.svg)", "",
          "The chart shows, per target, the measured figure divided by the target (for ≥ targets) or "
          "the target divided by the figure (for ≤ targets): 1 is the target, right of it is met.", ""]
    # Per-target sections: the measurements behind each target row, and the context rows.
    groups = [
        ("P1: publish throughput", "p1."),
        ("P2: publish at scale (all/)", "p2."),
        ("P3: directory listing", "ls."),
        ("P4-P6: sequential read of one large image", "read."),
        ("P7: container start", "ct."),
        ("P9: client memory", "rss."),
        ("P10: parallel cold readers", "par."),
    ]
    info = results["info"]
    # Facts that explain one section are printed under it (P1: the disk's ceiling, tmpfs).
    section_facts = {"p1.": ("conditions_publish", "p1_")}
    shown = set()
    for title, prefix in groups:
        rows = [m for k, m in meas.items() if k.startswith(prefix)]
        L += [f"## {title}", ""]
        if not rows:
            L += ["Not measured in this run.", ""]
            continue
        L += ["| measurement | median | min | max | unit | n |", "|---|---|---|---|---|---|"]
        L += [measurement_row(m) for m in rows]
        L.append("")
        facts = [k for k in info if k.startswith(section_facts[prefix])] if prefix in section_facts else []
        if facts:
            L += [f"- {k}: {info[k]}" for k in facts] + [""]
            shown.update(facts)
    runs = [r for s in results["scripts"].values() for r in s.get("stage_runs", [])]
    if runs:
        L += ["### P4: where a read's time goes (stage counters of the mount)", "",
              "From the mount's `user.depotfs.stages` (fusefs/src/stages.rs) read before and after each "
              "measured read; CPU seconds from /proc/PID/stat of the daemon and the nginx workers, and "
              "os.times() of the reader.", ""]
        L += stage_table(runs)
    rest = {k: v for k, v in info.items() if k not in shown}
    if rest:
        L += ["Facts of this run:", ""] + [f"- {k}: {v}" for k, v in rest.items()] + [""]
    L += ["## Micro-benchmarks (Criterion)", ""]
    crit = results.get("criterion") or []
    if crit:
        L += ["Criterion (`catalog/benches/catalog.rs`, `publisher/benches/pipeline.rs`; commands below): mean time per iteration with its 95 % "
              "confidence interval, and the throughput at the mean.", "",
              "| benchmark | mean | 95 % CI | throughput |", "|---|---|---|---|"]
        for c in crit:
            L.append(f"| {c['id']} | {c['mean']} | {c['ci']} | {c['throughput']} |")
    else:
        L.append("Not run in this run.")
    L += ["", "## Commands", ""] + [f"- {c}" for c in results["commands"]] + [""]
    text = "\n".join(L) + "\n" + notes
    with open(out, "w") as f:
        f.write(text)
    with open(ratios_out, "w") as f:
        json.dump({"title": f"depotfs targets, {results['date']} ({results['mode']})", "bars": chart}, f, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=os.path.join(HERE, "results", "results.json"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--ratios", default=os.path.join(HERE, "results", "ratios.json"))
    a = ap.parse_args()
    with open(a.results) as f:
        write(json.load(f), a.out, a.ratios)
    print(f"wrote {a.out} and {a.ratios}")


if __name__ == "__main__":
    main()
