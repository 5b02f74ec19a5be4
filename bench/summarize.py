#!/usr/bin/env python3
"""bench/summarize.py -- turn bench/run.sh's raw results into medians, ratios
to the best peer, CSVs, gnuplot PNGs and docs/benchmarks.md.

    summarize.py --results bench/results [--doc docs/benchmarks.md --img docs/img]

Input: <results>/raw.txt (one key=value line per run, written by run.sh),
<results>/callgrind.csv and callgrind.md (bench/callgrind.sh), and
<results>/spike_rss/<alloc>.rep<N>.csv (RSS over time).
Output: <results>/throughput.csv, memory.csv, spike.csv (medians); with
--doc/--img the Markdown report and the plots. Standard library only.
"""
import argparse
import csv
import math
import os
import platform
import shlex
import statistics
import subprocess
import shutil
import sys
import tempfile

PEER_ORDER = ["glibc", "jemalloc", "tcmalloc", "mimalloc"]
ALL_ORDER = ["trimalloc"] + PEER_ORDER
WL_TEXT = {
    "larson": "server churn, random lifetimes, arrays inherited by new threads",
    "xmalloc": "producer -> consumer, every block freed by another thread",
    "scratch": "passive false sharing (cache-scratch)",
    "thrash": "active false sharing (cache-thrash)",
    "sizes": "size sweep 8 B .. 1 MiB, every page of a block touched",
    "realloc": "realloc-heavy: grow by 1.5x to 64 KiB, shrink",
    "tight": "single tight malloc+free loop per thread, 16-512 B",
    "batch": "batches of 1000 blocks of 8-1000 B allocated, then freed in two passes (sh6bench-like)",
}
MIB = 1 << 20
PLOT_TMP = tempfile.mkdtemp(prefix="trimalloc-bench-")  # gnuplot's data files


def parse_raw(path):
    meta, libs, skipped, runs = {}, {}, [], []
    with open(path) as f:
        for line in f:
            toks = shlex.split(line.strip())
            if not toks:
                continue
            kv = {}
            words = []
            for t in toks:
                if "=" in t:
                    k, v = t.split("=", 1)
                    kv[k] = v
                else:
                    words.append(t)
            if words and words[0] == "meta":
                meta.update(kv)
            elif words and words[0] == "end":
                meta.update(kv)
            elif words and words[0] == "tmlib":
                meta.update({"tm_" + k: v for k, v in kv.items()})
            elif words and words[0] == "lib":
                libs[kv["alloc"]] = kv["path"]
            elif words and words[0] == "skipped":
                skipped.append(kv.get("note", ""))
            elif "rep" in kv:
                kv["bench"] = words[0] if words else "?"
                runs.append(kv)
    return meta, libs, skipped, runs


def fnum(x, default=None):
    try:
        return float(x)
    except (TypeError, ValueError):
        return default


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def r2(x):
    """A ratio as the tables print it (two decimals): targets are judged on
    that, so a cell printed 1.10x is not listed as above 1.1x."""
    return round(x, 2)


def geomean(xs):
    xs = [x for x in xs if x and x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else None


def order_allocs(names):
    known = [a for a in ALL_ORDER if a in names]
    return known + sorted(a for a in names if a not in ALL_ORDER)


def fmt(x, nd=1, suffix=""):
    if x is None:
        return "n/a"
    return f"{x:.{nd}f}{suffix}"


def sh(cmd):
    try:
        return subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=20).stdout.strip()
    except Exception:  # noqa: BLE001 -- a missing tool only loses a version string
        return ""


def versions(allocs, libs, meta):
    v = {}
    pk = {"jemalloc": "libjemalloc2", "tcmalloc": "libgoogle-perftools4 libtcmalloc-minimal4",
          "mimalloc": "libmimalloc2.0", "glibc": "libc6"}
    for a in allocs:
        if a == "trimalloc" and meta.get("tm_sha256"):
            v[a] = (f"`{meta.get('tm_orig')}` built {meta.get('tm_mtime')} (sha256 {meta.get('tm_sha256')}...), "
                    f"repo HEAD {meta.get('tm_head')} at the start of the run; measured from a copy")
        elif a == "trimalloc":
            rev = sh("git -C '%s' rev-parse --short HEAD" % os.path.dirname(os.path.abspath(__file__)))
            dirty = sh("git -C '%s' status --porcelain -- src include" % os.path.dirname(os.path.abspath(__file__)))
            v[a] = "repo HEAD " + (rev or "?") + (" + uncommitted src changes" if dirty else "")
            lib = libs.get(a)
            if lib and os.path.exists(lib):
                import time
                v[a] += time.strftime("; library built %Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(lib)))
        elif a in pk:
            for p in pk[a].split():
                out = sh("dpkg-query -W -f '${Version}' %s 2>/dev/null" % p)
                if out:
                    v[a] = out
                    break
    return v


def machine():
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    # Transparent huge pages change every allocator's peak RSS (docs/options.md, "thp")
    thp = "?"
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            words = f.read().split()
        thp = next((w.strip("[]") for w in words if w.startswith("[")), "?")
    except OSError:
        thp = "not in this kernel"
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, transparent huge pages: {thp}"


class Data:
    def __init__(self, results):
        self.results = results
        self.meta, self.libs, self.skipped, self.runs = parse_raw(os.path.join(results, "raw.txt"))
        names = {r.get("alloc") for r in self.runs if r.get("alloc")} | set(self.libs)
        self.allocs = order_allocs(names)
        self.peers = [a for a in self.allocs if a != "trimalloc"]
        self.has_tm = "trimalloc" in self.allocs

    def cells(self, bench):
        """{(workload, threads): {alloc: [runs]}} for throughput, keyed by alloc for spike."""
        out = {}
        for r in self.runs:
            if r["bench"] != bench:
                continue
            key = (r.get("workload", "spike"), int(r.get("threads", 0)))
            out.setdefault(key, {}).setdefault(r.get("alloc"), []).append(r)
        return out


def status_of(runs):
    bad = [r["status"] for r in runs if r.get("status") != "ok"]
    return bad[0] if bad else "ok"


def throughput_tables(d):
    """Rows of medians: workload, threads, {alloc: (mops, peak_rss, peak_live, status)}."""
    cells = d.cells("throughput")
    wl_order = ["larson", "xmalloc", "scratch", "thrash", "sizes", "realloc", "tight", "batch"]
    keys = sorted(cells, key=lambda k: (wl_order.index(k[0]) if k[0] in wl_order else 99, k[0], k[1]))
    rows = []
    for k in keys:
        per = {}
        for a in d.allocs:
            runs = cells[k].get(a, [])
            ok = [r for r in runs if r.get("status") == "ok"]
            per[a] = {
                "mops": median(fnum(r.get("mops")) for r in ok),
                "rss": median(fnum(r.get("peak_rss")) for r in ok),
                "live": median(fnum(r.get("peak_live")) for r in ok),
                "n": len(ok),
                "status": status_of(runs) if runs else "missing",
                "all_mops": [fnum(r.get("mops")) for r in ok],
                "mops_cpu": median(fnum(r.get("ops"), 0) / fnum(r.get("cpu_secs")) / 1e6
                                   for r in ok if fnum(r.get("cpu_secs"))),
            }
        rows.append((k[0], k[1], per))
    return rows


def best_peer(per, field, higher_better):
    vals = [(per[a][field], a) for a in per if a != "trimalloc" and per[a][field] is not None]
    if not vals:
        return None, None
    v, a = (max if higher_better else min)(vals)
    return v, a


def spike_table(d):
    cells = d.cells("spike_trim")
    per = {}
    for runs in cells.values():
        for a, rs in runs.items():
            ok = [r for r in rs if r.get("status") == "ok"]
            m = lambda f: median(fnum(r.get(f)) for r in ok)  # noqa: E731
            per[a] = {
                "status": status_of(rs), "n": len(ok),
                "trim_call": (ok or rs)[0].get("trim_call", "?"),
                "threads": (ok or rs)[0].get("threads", "?"),
                "spike": m("spike_bytes"), "surv": m("survivor_bytes"),
                "start": m("rss_start"), "peak": m("rss_peak"), "before": m("rss_before_trim"),
                "after": m("rss_after_trim"), "end": m("rss_end"), "trim_us": m("trim_us"),
                "stall": m("stall_max_us"), "stall_own": m("stall_own_us"),
                "base": m("stall_base_us"), "base_own": m("stall_base_own_us"),
                "stall_all": [fnum(r.get("stall_own_us")) for r in ok],
                "stall_call_own": m("stall_call_own_us"),
                "window_ms": (ok or rs)[0].get("stall_window_ms"),
                "verify": "ok" if rs and all(r.get("verify") == "ok" for r in rs) else "FAIL",
            }
    return per


def write_csvs(d, rows, spike):
    with open(os.path.join(d.results, "throughput.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["workload", "threads", "allocator", "runs_ok", "status", "mops_median",
                    "ratio_to_best_peer", "best_peer", "peak_rss_mib_median", "peak_live_mib_median",
                    "rss_ratio_to_best_peer", "mops_min", "mops_max", "mops_per_cpu_second_median"])
        for wl, t, per in rows:
            bp, bpa = best_peer(per, "mops", True)
            br, bra = best_peer(per, "rss", False)
            for a in d.allocs:
                p = per[a]
                w.writerow([wl, t, a, p["n"], p["status"], fmt(p["mops"], 3),
                            fmt(p["mops"] / bp if p["mops"] and bp else None, 3), bpa or "",
                            fmt(p["rss"] / MIB if p["rss"] else None, 2),
                            fmt(p["live"] / MIB if p["live"] is not None else None, 3),
                            fmt(p["rss"] / br if p["rss"] and br else None, 3),
                            fmt(min(p["all_mops"]) if p["all_mops"] else None, 3),
                            fmt(max(p["all_mops"]) if p["all_mops"] else None, 3),
                            fmt(p["mops_cpu"], 3)])
    with open(os.path.join(d.results, "spike.csv"), "w", newline="") as f:
        w = csv.writer(f)
        cols = ["status", "n", "threads", "trim_call", "spike", "surv", "start", "peak", "before",
                "after", "end", "trim_us", "stall", "stall_own", "base", "base_own", "verify"]
        w.writerow(["allocator"] + cols)
        for a in d.allocs:
            if a in spike:
                w.writerow([a] + [spike[a][c] for c in cols])


# ---- plots ----------------------------------------------------------------

def gnuplot(script):
    try:
        r = subprocess.run(["gnuplot"], input=script, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        print("note: gnuplot not installed: no plots (apt-get install gnuplot-nox)", file=sys.stderr)
        return False
    if r.returncode != 0:
        print("note: gnuplot failed:\n" + r.stderr, file=sys.stderr)
        return False
    return True


COLORS = {"trimalloc": "#d62728", "glibc": "#1f77b4", "jemalloc": "#2ca02c",
          "tcmalloc": "#9467bd", "mimalloc": "#ff7f0e"}


def plot_spike(d, spike, series_dir, out_png, title_extra=""):
    """RSS over time, one line per allocator, x aligned on the trim call."""
    runs = {}
    for r in d.runs:
        if r["bench"] == "spike_trim" and r.get("status") == "ok":
            runs.setdefault(r["alloc"], []).append(r)
    plots = []
    tmpdir = PLOT_TMP
    for a in d.allocs:
        if a not in runs:
            continue
        # the repetition whose RSS after trim is the median one
        rs = sorted(runs[a], key=lambda r: fnum(r.get("rss_end"), 0))
        r = rs[len(rs) // 2]
        src = os.path.join(series_dir, f"{a}.rep{r['rep']}.csv")
        if not os.path.exists(src):
            continue
        t0 = fnum(r.get("ms_trim"), 0)
        dst = os.path.join(tmpdir, f"{a}.aligned.dat")
        with open(src) as fi, open(dst, "w") as fo:
            next(fi)
            for line in fi:
                t, v = line.strip().split(",")
                fo.write(f"{float(t) - t0:.2f} {v}\n")
        plots.append(f"'{dst}' using 1:2 with lines lw 2 lc rgb '{COLORS.get(a, '#000000')}' title '{a}'")
    if not plots:
        return False
    if spike:
        surv = fnum(next(iter(spike.values()))["surv"], 0) / MIB
        plots.append(f"{surv:.3f} with lines dt 3 lw 1 lc rgb '#000000' title 'live data ({surv:.0f} MiB)'")
    thr = next(iter(spike.values()))["threads"] if spike else "?"
    mib = fnum(next(iter(spike.values()))["spike"], 0) / MIB if spike else 0
    script = f"""
set terminal pngcairo size 1000,500 font ',10'
set output '{out_png}'
set title "spike-and-trim: RSS over time ({thr} worker threads, {mib:.0f} MiB spike, 5% kept{title_extra})"
set xlabel 'ms relative to the trim call'
set ylabel 'RSS (MiB)'
set grid
set key outside bottom center horizontal
set arrow from 0, graph 0 to 0, graph 1 nohead dt 2 lc rgb '#444444'
set label 'trim call' at first 10, graph 0.04
plot {', '.join(plots)}
"""
    return gnuplot(script)


def plot_bars(d, rows, field, higher_better, out_png, ylabel, title):
    """Grouped bars: per workload/threads, each allocator normalised to the best peer."""
    dat = os.path.join(PLOT_TMP, f"bars_{field}.dat")
    with open(dat, "w") as f:
        f.write("# cell " + " ".join(d.allocs) + "\n")
        for wl, t, per in rows:
            bp, _ = best_peer(per, field, higher_better)
            vals = []
            for a in d.allocs:
                v = per[a][field]
                vals.append(f"{v / bp:.4f}" if v and bp else "NaN")
            f.write(f"{wl}/T{t} " + " ".join(vals) + "\n")
    cols = ", ".join(
        f"'{dat}' using {i + 2}:xtic(1) title '{a}' lc rgb '{COLORS.get(a, '#000000')}'"
        for i, a in enumerate(d.allocs))
    script = f"""
set terminal pngcairo size 1100,480 font ',10'
set output '{out_png}'
set title "{title}"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel '{ylabel}'
set yrange [0:*]
set grid ytics
set key outside top center horizontal
set xtics rotate by -30
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lc rgb '#444444'
plot {cols}
"""
    return gnuplot(script)


# ---- the report -------------------------------------------------------------

def md_table(header, rows, align=None):
    align = align or ["---"] + ["---:"] * (len(header) - 1)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def report(d, rows, spike, imgs, doc_path):
    L = []
    meta = d.meta
    vers = versions(d.allocs, d.libs, meta)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    results_shown = os.path.relpath(os.path.abspath(d.results), repo)
    if results_shown.startswith(".."):
        results_shown = os.path.abspath(d.results)
    reps = meta.get("reps", "?")
    L.append("# trimalloc benchmarks\n")
    cmd = ("bench/run.sh " + meta.get("args", "")).strip()
    L.append(f"Generated by `{cmd}` on {meta.get('date', '?')}; "
             f"{reps} repetition(s), allocators interleaved (order rotated every repetition), "
             "medians shown. Regenerate with `bench/run.sh` (about 3 minutes on 2 cores with the default 3 repetitions, 5 with `--reps 5`; `--quick` for a smoke "
             "test, whose report goes to `build-bench/quick/`). "
             f"Raw and median data: `{results_shown}`.\n")
    load = ""
    if meta.get("load_start"):
        load = (f" Load average (1, 5, 15 min) {meta['load_start']} at the start of the run, "
                f"{meta.get('load_end', '?')} at the end of the timed runs: a load above the core "
                "count means other work competed for the CPUs, and the multi-thread cells suffer most.")
    L.append(f"Machine: {machine()}. Runs on a 2-core machine that others share are noisy "
             "(±30% between repetitions is common), so small differences mean nothing." + load + "\n")
    L.append(md_table(["allocator", "version", "loaded as"],
                      [[a, vers.get(a, "?"), f"`LD_PRELOAD={d.libs[a]}`" if d.libs.get(a, "none") != "none"
                        else "system malloc (no preload)"] for a in d.allocs], ["---", "---", "---"]))
    L.append("")
    for s in d.skipped:
        L.append(f"- **Skipped:** {s}")
    if d.skipped:
        L.append("")
    if meta.get("quick") == "1":
        L.append("**This is a `--quick` run (1 repetition, a quarter of the work): a smoke test, "
                 "not numbers to quote.**\n")

    shortfalls = []
    targets = []
    # --- throughput vs best peer
    ratios = []
    low = []
    for wl, t, per in rows:
        bp, bpa = best_peer(per, "mops", True)
        tm = per.get("trimalloc", {}).get("mops") if d.has_tm else None
        if tm and bp:
            ratios.append(tm / bp)
            if r2(tm / bp) < 0.8:
                low.append(f"{wl} T={t}: {tm / bp:.2f}x of {bpa}")
        elif d.has_tm and per.get("trimalloc", {}).get("status") not in (None, "ok"):
            low.append(f"{wl} T={t}: {per['trimalloc']['status']}")
    gm = geomean(ratios)
    # --- memory
    rss_ratios = []
    rss_high = []
    for wl, t, per in rows:
        br, bra = best_peer(per, "rss", False)
        tr = per.get("trimalloc", {}).get("rss") if d.has_tm else None
        if tr and br:
            rss_ratios.append(tr / br)
            if r2(tr / br) > 1.1:
                rss_high.append(f"{wl} T={t}: {tr / br:.2f}x of {bra} ({tr / MIB:.1f} vs {br / MIB:.1f} MiB)")
    if d.has_tm:
        targets.append(["throughput geomean >= 1.0x best peer",
                        f"{gm:.2f}x over {len(ratios)} cells" if gm else "n/a",
                        "met" if gm and r2(gm) >= 1.0 else "**missed**"])
        targets.append(["no workload < 0.8x best peer",
                        "none below" if not low else f"{len(low)} below: " + "; ".join(low),
                        "met" if not low else "**missed**"])
        cpu_ratios = []
        cpu_low = []
        for wl, t, per in rows:
            bc, bca = best_peer(per, "mops_cpu", True)
            tc = per.get("trimalloc", {}).get("mops_cpu")
            if tc and bc:
                cpu_ratios.append(tc / bc)
                if r2(tc / bc) < 0.8:
                    cpu_low.append(f"{wl} T={t} {tc / bc:.2f}x")
        gmc = geomean(cpu_ratios)
        if gmc:
            targets.append(["(cross-check) the same two by CPU time, robust to a loaded machine",
                            f"geomean {gmc:.2f}x; below 0.8x: " + (", ".join(cpu_low) if cpu_low else "none"),
                            "met" if r2(gmc) >= 1.0 and not cpu_low else "**missed**"])
        worst = max(rss_ratios) if rss_ratios else None
        targets.append(["peak RSS <= 1.1x best peer (each workload)",
                        (f"worst {worst:.2f}x, geomean {geomean(rss_ratios):.2f}x" if worst else "n/a")
                        + ("" if not rss_high else "; above: " + "; ".join(rss_high)),
                        "met" if worst and not rss_high else "**missed**"])
        if low:
            shortfalls.append("Throughput below 0.8x the best peer: " + "; ".join(low) + ".")
        if gm and gm < 1.0:
            shortfalls.append(f"Throughput geomean is {gm:.2f}x the best peer of each cell (target 1.0x).")
        if rss_high:
            shortfalls.append("Peak RSS above 1.1x the best peer: " + "; ".join(rss_high) + ".")
    # --- spike
    tm_s = spike.get("trimalloc")
    peers_s = {a: s for a, s in spike.items() if a != "trimalloc" and s["n"]}
    if d.has_tm and tm_s and tm_s["n"] and peers_s:
        ba = min(peers_s, key=lambda a: peers_s[a]["end"])
        ok = tm_s["end"] <= peers_s[ba]["end"]
        targets.append(["spike-and-trim: lowest RSS after trim",
                        f"trimalloc {tm_s['end'] / MIB:.1f} MiB; best peer {ba} {peers_s[ba]['end'] / MIB:.1f} MiB",
                        "met" if ok else "**missed**"])
        if not ok:
            shortfalls.append(f"RSS after trim: trimalloc {tm_s['end'] / MIB:.1f} MiB, {ba} "
                              f"{peers_s[ba]['end'] / MIB:.1f} MiB.")
        bs = min(peers_s, key=lambda a: peers_s[a]["stall_own"])
        ok = tm_s["stall_own"] <= peers_s[bs]["stall_own"]
        targets.append(["spike-and-trim: smallest worst stall (own, same window for all)",
                        f"trimalloc {tm_s['stall_own']:.0f} us; best peer {bs} {peers_s[bs]['stall_own']:.0f} us",
                        "met" if ok else "**missed**"])
        if not ok:
            shortfalls.append(f"Worst malloc/free stall seen by another thread in the stall window: trimalloc "
                              f"{tm_s['stall_own']:.0f} us (its trim call took {tm_s['trim_us'] / 1000:.1f} ms), "
                              f"{bs} {peers_s[bs]['stall_own']:.0f} us (its call took "
                              f"{peers_s[bs]['trim_us'] / 1000:.1f} ms and left "
                              f"{peers_s[bs]['end'] / MIB:.0f} MiB resident).")
    elif d.has_tm and tm_s:
        targets.append(["spike-and-trim", f"trimalloc run: {tm_s['status']}", "**failed**"])
        shortfalls.append(f"spike-and-trim did not complete under trimalloc: {tm_s['status']}.")
    for wl, t, per in rows:
        st = per.get("trimalloc", {}).get("status")
        if d.has_tm and st not in (None, "ok"):
            shortfalls.append(f"{wl} T={t} did not complete under trimalloc: {st}.")
    if tm_s and tm_s["verify"] != "ok":
        shortfalls.append("spike-and-trim: surviving bytes changed under trimalloc (verify FAIL).")

    L.append("## Summary against the targets\n")
    if not d.has_tm:
        L.append("**trimalloc was not measured in this run** (see Skipped above); the tables "
                 "compare the peers only.\n")
    else:
        L.append(md_table(["target", "result", "verdict"], targets, ["---", "---", "---"]))
        L.append("")
        L.append("### Where trimalloc falls short\n")
        if shortfalls:
            L += [f"- {s}" for s in shortfalls]
        else:
            L.append("- Nowhere in this run, within its noise.")
        L.append("")
        L.append("\"Best peer\" is the best of glibc, jemalloc, tcmalloc and mimalloc in that cell, so "
                 "trimalloc is compared with a different winner in each row.\n")

    # --- spike table
    if spike:
        L.append("## Spike-and-trim\n")
        s0 = next(iter(spike.values()))
        L.append(f"{s0['threads']} worker threads allocate {fnum(s0['spike'], 0) / MIB:.0f} MiB together "
                 "(16 B - 256 KiB blocks, every byte written), free all but 5% (a quarter of the frees "
                 "by another thread), then stay alive and idle. The main thread makes the allocator's own "
                 "trim call while a prober thread times every malloc/free it makes. "
                 f"Surviving data: {fnum(s0['surv'], 0) / MIB:.1f} MiB, checked byte by byte "
                 "after the trim. Medians of the repetitions.\n")
        hdr = ["allocator", "trim call", "RSS peak", "RSS before trim", "RSS after trim", "trim time",
               "worst stall in the stall window (own / all)", "prober noise floor (own / all)", "data"]
        tr = []
        for a in d.allocs:
            if a not in spike:
                continue
            s = spike[a]
            if not s["n"]:
                tr.append([a, s["trim_call"], s["status"], "", "", "", "", "", s["verify"]])
                continue
            tr.append([f"**{a}**" if a == "trimalloc" else a, f"`{s['trim_call']}`",
                       f"{s['peak'] / MIB:.0f} MiB", f"{s['before'] / MIB:.0f} MiB",
                       f"{s['end'] / MIB:.1f} MiB", f"{s['trim_us'] / 1000:.2f} ms",
                       f"{s['stall_own']:.0f} / {s['stall']:.0f} us",
                       f"{s['base_own']:.0f} / {s['base']:.0f} us", s["verify"]])
        L.append(md_table(hdr, tr, ["---", "---"] + ["---:"] * 6 + ["---"]))
        L.append("")
        L.append("RSS after trim is read after a further pause (the `rss_end` field), so an allocator "
                 "that releases lazily gets the benefit. \"Own\" stalls leave out calls during which the "
                 "scheduler preempted the prober (its involuntary context-switch count went up); "
                 "\"all\" includes them and on 2 shared cores is mostly scheduler noise. The stall window "
                 f"runs from the trim call's start for {s0.get('window_ms') or 100} ms, or until the call "
                 "returns if it takes longer: one length for every allocator, since the worst of more "
                 "calls is larger, and a call that returns at once would otherwise be judged on a few "
                 "dozen probe calls. The noise floor "
                 "is the same prober's worst call in a window of that length before the trim. Only trimalloc's "
                 "`_heapmin()` is specified to reach other threads' caches; jemalloc's "
                 "`thread.tcache.flush` and mimalloc's `mi_collect` act on the calling thread's cache "
                 "(plus shared state), so memory idle in the workers' caches stays for them.\n")
        if imgs.get("spike"):
            L.append("![RSS over time during spike-and-trim](img/spike_rss.png)\n")

    # --- throughput
    if rows:
        L.append("## Throughput\n")
        L.append("Million operations per second (median; an operation is one malloc+free, one "
                 "realloc, or for scratch/thrash one malloc + 100 writes + free). Higher is better. "
                 "The last columns give trimalloc over the best peer of the row; **bold** marks "
                 "below 0.8x.\n")
        hdr = ["workload", "T"] + d.allocs + (["trimalloc / best peer"] if d.has_tm else [])
        tr = []
        for wl, t, per in rows:
            bp, bpa = best_peer(per, "mops", True)
            cells = []
            for a in d.allocs:
                p = per[a]
                cells.append(fmt(p["mops"], 1) if p["mops"] is not None else p["status"])
            if d.has_tm:
                tm = per["trimalloc"]["mops"]
                if tm and bp:
                    r = tm / bp
                    cells.append((f"**{r:.2f}x**" if r2(r) < 0.8 else f"{r:.2f}x") + f" ({bpa})")
                else:
                    cells.append(per["trimalloc"]["status"])
            tr.append([wl, t] + cells)
        if d.has_tm:
            tr.append(["**geomean**", "", *[""] * len(d.allocs), f"**{gm:.2f}x**" if gm else "n/a"])
        L.append(md_table(hdr, tr))
        L.append("")
        L.append("The same runs measured by CPU time instead of wall time: million operations per "
                 "CPU-second of the whole process (all threads). On a machine whose load is above its "
                 "core count, wall time also counts the time spent waiting for a CPU; CPU time does not, "
                 "but it does not reward scaling across threads either (and counts spinning).\n")
        tr = []
        for wl, t, per in rows:
            bc, bca = best_peer(per, "mops_cpu", True)
            cells = [fmt(per[a]["mops_cpu"], 1) if per[a]["mops_cpu"] is not None else per[a]["status"]
                     for a in d.allocs]
            if d.has_tm:
                tc = per["trimalloc"]["mops_cpu"]
                if tc and bc:
                    r = tc / bc
                    cells.append((f"**{r:.2f}x**" if r2(r) < 0.8 else f"{r:.2f}x") + f" ({bca})")
                else:
                    cells.append(per["trimalloc"]["status"])
            tr.append([wl, t] + cells)
        if d.has_tm:
            gmc = geomean([per["trimalloc"]["mops_cpu"] / best_peer(per, "mops_cpu", True)[0]
                           for _, _, per in rows
                           if per["trimalloc"]["mops_cpu"] and best_peer(per, "mops_cpu", True)[0]])
            tr.append(["**geomean**", "", *[""] * len(d.allocs), f"**{gmc:.2f}x**" if gmc else "n/a"])
        L.append(md_table(hdr, tr))
        L.append("")
        for wl in dict.fromkeys(r[0] for r in rows):
            L.append(f"- `{wl}`: {WL_TEXT.get(wl, '')}")
        L.append("")
        if imgs.get("throughput"):
            L.append("![Throughput relative to the best peer](img/throughput.png)\n")

        L.append("## Memory efficiency\n")
        L.append("Peak RSS (VmHWM at exit, MiB, median) per workload, and the peak live bytes the "
                 "program had requested (sampled every millisecond). Lower RSS is better. The RSS "
                 "includes the process baseline (binary, libc, thread stacks, and each allocator's "
                 "start-up footprint), which dominates the workloads that hold little live data.\n")
        hdr = ["workload", "T", "peak live"] + d.allocs + (["trimalloc / best peer"] if d.has_tm else [])
        tr = []
        for wl, t, per in rows:
            br, bra = best_peer(per, "rss", False)
            lives = [per[a]["live"] for a in d.allocs if per[a]["live"] is not None]
            cells = [fmt(max(lives) / MIB, 2) if lives else "n/a"]
            for a in d.allocs:
                p = per[a]
                cells.append(fmt(p["rss"] / MIB, 1) if p["rss"] else p["status"])
            if d.has_tm:
                trr = per["trimalloc"]["rss"]
                if trr and br:
                    r = trr / br
                    cells.append((f"**{r:.2f}x**" if r2(r) > 1.1 else f"{r:.2f}x")
                                 + f" ({bra}, {(trr - br) / MIB:+.1f} MiB)")
                else:
                    cells.append(per["trimalloc"]["status"])
            tr.append([wl, t] + cells)
        L.append(md_table(hdr, tr))
        L.append("")
        if imgs.get("rss"):
            L.append("![Peak RSS relative to the best peer](img/peak_rss.png)\n")

    # --- callgrind
    cgmd = os.path.join(d.results, "callgrind.md")
    if os.path.exists(cgmd):
        L.append("## Instructions per malloc+free pair (callgrind)\n")
        L.append("From `bench/callgrind.sh` (part of `bench/run.sh`): `bench/callgrind_pair` runs under "
                 "`valgrind --tool=callgrind --collect-atstart=no --toggle-collect=cgp_measure` twice per "
                 "allocator and size, with N1 and N2 pairs, and the count is the difference over N2-N1, "
                 "so start-up and warm-up cancel. Eight blocks of each size stay live throughout (a real "
                 "program always has neighbours; without them mimalloc retires its page on every free). "
                 "Deterministic: one run each. The burst row allocates 100 000 blocks of 16-80 B and "
                 "then frees them in allocation order, as a program builds and drops a tree: more than "
                 "any thread cache holds, so it counts the batches to and from the arenas too (its "
                 "warm-up is one burst). 16384 B is a size class in trimalloc (since 2026-12-08; "
                 "until then a run of pages carved and coalesced under its arena's lock), served from "
                 "the thread cache as jemalloc and tcmalloc serve it; glibc takes its arena lock for it.\n")
        with open(cgmd) as f:
            L.append(f.read().strip())
        L.append("")

    L.append("## How the suite works\n")
    L.append("- Every program (`bench/throughput.c`, `bench/spike_trim.c`, `bench/callgrind_pair.c`) "
             "calls plain malloc/free and is run under `LD_PRELOAD=<lib>` (glibc: no preload); each "
             "names the allocator it found by dlsym probes, and run.sh marks a run whose allocator is "
             "not the one meant as `wrong-allocator`.")
    L.append("- Every block carries a tag checked before it is freed; a bad tag or a changed "
             "surviving byte makes the run `FAIL`. A crash or a hang (300 s) is recorded as such, not "
             "retried.")
    L.append("- Each thread times itself from a common barrier; a cell's time runs from the first "
             "thread's start to the last thread's end.")
    L.append("- Peers the machine does not have are skipped with a note; no number is ever "
             "carried over from another run.")
    L.append("")
    with open(doc_path, "w") as f:
        f.write("\n".join(L))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--doc")
    ap.add_argument("--img")
    ap.add_argument("--spike-only", action="store_true", help="print the compact spike table only")
    ap.add_argument("--spike-png", help="with --spike-only: write the spike RSS plot here")
    args = ap.parse_args()

    d = Data(args.results)
    rows = throughput_tables(d)
    spike = spike_table(d)
    write_csvs(d, rows, spike)
    series = os.path.join(args.results, "spike_rss")

    if args.spike_only:
        print_spike_compact(d, spike)
        if args.spike_png and plot_spike(d, spike, series, args.spike_png):
            print(f"RSS over time: {args.spike_png}")
        return 0

    imgs = {}
    if args.img:
        os.makedirs(args.img, exist_ok=True)
        if spike:
            imgs["spike"] = plot_spike(d, spike, series, os.path.join(args.img, "spike_rss.png"))
        if rows:
            imgs["throughput"] = plot_bars(
                d, rows, "mops", True, os.path.join(args.img, "throughput.png"),
                "throughput / best peer", "Throughput relative to the best peer of each workload (higher is better)")
            imgs["rss"] = plot_bars(
                d, rows, "rss", False, os.path.join(args.img, "peak_rss.png"),
                "peak RSS / best peer", "Peak RSS relative to the best peer of each workload (lower is better)")
    if args.doc:
        report(d, rows, spike, imgs, args.doc)
        print(f"wrote {args.doc}", file=sys.stderr)
    # a short console summary
    if rows:
        print_console(d, rows)
    if spike:
        print_spike_compact(d, spike)
    return 0


def print_console(d, rows):
    print("\nthroughput (Mops/s, median):")
    print(f"{'workload':<10}{'T':>3} " + "".join(f"{a:>11}" for a in d.allocs))
    for wl, t, per in rows:
        print(f"{wl:<10}{t:>3} " + "".join(
            f"{fmt(per[a]['mops'], 1) if per[a]['mops'] is not None else per[a]['status']:>11}"
            for a in d.allocs))


def print_spike_compact(d, spike):
    print("\nspike-and-trim (medians): memory the process holds, and the cost of getting it back")
    hdr = f"{'allocator':<11}{'peak':>9}{'before trim':>13}{'after trim':>12}{'trim took':>11}{'worst stall':>13}  data"
    print(hdr)
    print("-" * len(hdr))
    for a in d.allocs:
        if a not in spike:
            continue
        s = spike[a]
        if not s["n"]:
            print(f"{a:<11}{s['status']:>9}")
            continue
        print(f"{a:<11}{s['peak'] / MIB:>6.0f} MiB{s['before'] / MIB:>9.0f} MiB{s['end'] / MIB:>8.1f} MiB"
              f"{s['trim_us'] / 1000:>8.1f} ms{s['stall_own']:>10.0f} us  {s['verify']}")
    s0 = next(iter(spike.values()))
    calls = ", ".join(f"{a}: {spike[a]['trim_call']}" for a in d.allocs if a in spike)
    print(f"trim calls: {calls}")
    print(f"({s0['threads']} threads spike to {fnum(s0['spike'], 0) / MIB:.0f} MiB and keep "
          f"{fnum(s0['surv'], 0) / MIB:.1f} MiB live; 'after trim' is what stays resident once each "
          "allocator's own trim call has run; 'worst stall' is the longest malloc/free another thread "
          "saw from the call's start until 100 ms later (or the call's end), not counting preemption "
          "by the scheduler.)")


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        shutil.rmtree(PLOT_TMP, ignore_errors=True)
