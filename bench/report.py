"""Write bench/results/REPORT.md and its plots from the JSON the benchmarks left in
bench/results/ (run them first: `make bench` does both)."""

from __future__ import annotations

import json
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common import RESULTS  # noqa: E402

COMMANDS = """```sh
sudo make bench                      # all of it: set-up (--bench), the four benchmarks, this report
.venv/bin/python bench/overhead.py   # 1. exec overhead against nothing, bpftrace and auditd
.venv/bin/python bench/kernel_cost.py    # 2. kernel ns per exec, per program
.venv/bin/python bench/storm.py          # 3. loss under a storm, 4. user-space CPU
.venv/bin/python bench/extension_bench.py  # 5. query latency, 6. memory and start-up
.venv/bin/python bench/report.py     # this file and the plots
```"""


def _save(fig: Any, name: str) -> None:
    fig.tight_layout()
    fig.savefig(RESULTS / name, dpi=110)
    plt.close(fig)


def load(name: str) -> dict[str, Any] | None:
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_line(data: dict[str, Any]) -> str:
    m = data["machine"]
    return f"_{m['cpu']}, {m['cores']} cores, kernel {m['kernel']}, Python {m['python']}, {m['date']}_"


def overhead_section(data: dict[str, Any]) -> list[str]:
    tools = data["tools"]
    lines = ["## 1. Exec overhead", "", machine_line(data), "",
             f"{data['execs']:,} fork+exec of a static binary (compiled from C by the bench) per run, one spawner per core, "
             f"{data['rounds']} rounds interleaved ({', '.join(tools)}, none, ...). Medians, min-max in "
             "brackets. *floor* is our six tracepoints with empty programs: what attaching syscall tracepoints costs "
             "every process by itself, before any program runs. *sched-floor* is the two sched/task tracepoints alone, "
             "empty: the least a probe without syscall tracepoints could cost (design.md requires them: argv must be "
             "read at syscall entry, before exec replaces the caller's memory).", "",
             "| watching execs with | wall time | ratio to nothing | per exec | spawners' CPU | the tool's own CPU |",
             "|---|---|---|---|---|---|"]
    for name, t in tools.items():
        w = t["wall"]
        lines.append(f"| {name} | {w['median'] * 1e3:.0f} ms ({w['min'] * 1e3:.0f}-{w['max'] * 1e3:.0f}) | **{t['ratio']:.3f}** | "
                     f"{t['us_per_exec']:.1f} µs | {t['cpu']['median']:.2f} s | {t['tool_cpu']['median']:.2f} s |")
    if "floor" in tools and "netutil" in tools:
        lines += ["", f"netutil / floor = **{tools['netutil']['ratio'] / tools['floor']['ratio']:.3f}**: what our programs "
                      "add; the rest is what the tracepoints cost with nothing to run."]
    lines += ["", "![exec overhead](overhead.png)", ""]
    names = list(tools)
    ratios = [tools[n]["ratio"] for n in names]
    low = [tools[n]["ratio"] - tools[n]["wall"]["min"] / tools["none"]["wall"]["median"] for n in names]
    high = [tools[n]["wall"]["max"] / tools["none"]["wall"]["median"] - tools[n]["ratio"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = {"none": "#999", "sched-floor": "#ccc", "floor": "#bbb", "netutil": "#2a7", "bpftrace": "#48c", "auditd": "#c74"}
    ax.bar(names, ratios, yerr=[low, high], capsize=4, color=[colours.get(n, "#777") for n in names])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.02, color="#2a7", linewidth=0.8, linestyle="--", label="target for netutil: 1.02")
    ax.set_ylabel("fork+exec wall time / nothing attached")
    ax.set_ylim(0.9, max(ratios) * 1.1)
    ax.legend(loc="upper left")
    ax.set_title("Exec overhead per tool (median, min-max)")
    _save(fig, "overhead.png")
    return lines


def kernel_section(data: dict[str, Any]) -> list[str]:
    lines = ["## 2. Kernel cost per exec", "", machine_line(data), "",
             f"Run time of each probe program from the kernel's BPF statistics (`kernel.bpf_stats_enabled`), "
             f"{data['execs']:,} execs per round, median of {data['rounds']} rounds.", "",
             "| program | non-catalog exec (filtered in the kernel) | catalog exec (forwarded) |", "|---|---|---|"]
    programs = [p for p in data["non_catalog"]["programs"] if data["non_catalog"]["programs"][p]["runs_per_exec"]
                or data["catalog"]["programs"][p]["runs_per_exec"]]
    for p in programs:
        lines.append(f"| `{p}` | {data['non_catalog']['programs'][p]['ns_per_exec']:.0f} ns | "
                     f"{data['catalog']['programs'][p]['ns_per_exec']:.0f} ns |")
    nc, c = data["non_catalog"], data["catalog"]
    lines += [f"| **all programs** | **{nc['total_ns']:.0f} ns** ({nc['min_ns']:.0f}-{nc['max_ns']:.0f}) | "
              f"**{c['total_ns']:.0f} ns** ({c['min_ns']:.0f}-{c['max_ns']:.0f}) |", "",
              "![kernel ns per exec](kernel_ns.png)", ""]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    bottom = [0.0, 0.0]
    for p in programs:
        values = [nc["programs"][p]["ns_per_exec"], c["programs"][p]["ns_per_exec"]]
        ax.bar(["non-catalog exec", "catalog exec"], values, bottom=bottom, label=p)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.axhline(1500, color="black", linestyle="--", linewidth=0.8, label="target: 1,500 ns (non-catalog)")
    ax.set_ylabel("kernel ns per exec")
    ax.set_title("Probe programs' kernel time per exec")
    ax.legend(fontsize=7)
    _save(fig, "kernel_ns.png")
    return lines


def storm_section(data: dict[str, Any]) -> list[str]:
    lines = ["## 3. Loss under a storm, 4. user-space cost", "", machine_line(data), "",
             "Catalog execs (a 129-byte static ELF named `nc`) from one spawner per core at full speed, through the whole "
             "sensor (probe, enrichment, store), doubling from 20,000.", "",
             "| execs spawned | rate | rows made | rows stored | lost |", "|---|---|---|---|---|"]
    for s in data["storms"]:
        lines.append(f"| {s['execs']:,} | {s['rate']:,.0f}/s | {s['rows']:,} | {s['stored']:,} | {s['lost']:,} |")
    lines += ["", f"Outcome: {data['why']}.", "",
              f"User-space CPU: **{data['cpu_per_1000_non_catalog_s'] * 1e3:.1f} ms per 1,000 non-catalog execs** "
              f"(the kernel drops them) and **{data['cpu_per_1000_catalog_s'] * 1e3:.0f} ms per 1,000 catalog execs** "
              f"(enrichment and store; ring buffer {data['ring_buffer_bytes'] >> 20} MiB).", ""]
    return lines


def extension_section(data: dict[str, Any]) -> list[str]:
    sizes = data["sizes"]
    head = "| | " + " | ".join(f"{s['rows']:,} rows" for s in sizes) + " |"
    rule = "|---|" + "---|" * len(sizes)
    lines = ["## 5. Query latency, 6. memory and start-up", "", machine_line(data), "",
             "The built `.ext`, launched as osquery launches it against the test extension manager. *thrift* is the "
             "extension's share of osquery's `call()` (request decoding, rows, reply encoding; osquery's client is C++); "
             "*socket* is the same call end to end from the Python test client; *host* is the embedded SQLite host. "
             "Medians of 5 calls; rows spread over 24 hours.", "", head, rule]
    labels = {"select_all": "`SELECT *`", "last_60s": "`WHERE time > now-60`", "netcat": "`WHERE utility = 'netcat'`"}
    for via in ("thrift", "socket", "host"):
        for key, label in labels.items():
            lines.append(f"| {via} {label} | " + " | ".join(f"{s[f'{via}_{key}'][0] * 1e3:.1f} ms" for s in sizes) + " |")
    lines.append("| all 12 detections, embedded host | " + " | ".join(f"{s['pack_run'][0] * 1e3:.0f} ms" for s in sizes) + " |")
    lines.append("| registered after start | " + " | ".join(f"{s['registered_s']:.2f} s" for s in sizes) + " |")
    lines.append("| probe attached after start | " + " | ".join(f"{s['attached_s']:.2f} s" for s in sizes) + " |")
    lines.append("| RSS at rest (anonymous + file-backed) | " + " | ".join(f"{s['rss_rest'][0]:.0f} + {s['rss_rest'][1]:.0f} MB" for s in sizes) + " |")
    lines.append("| RSS after the queries | " + " | ".join(f"{s['rss_after'][0]:.0f} + {s['rss_after'][1]:.0f} MB" for s in sizes) + " |")
    lines += ["", "File-backed RSS is the libraries' code: Python, libbcc, APSW. LLVM and clang (85 MB) are paged out once the probe is compiled (`memory.page_out_compiler`).", "", "![query latency](query_latency.png)", ""]
    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [s["rows"] for s in sizes]
    for via, style in (("thrift", "-"), ("host", "--")):
        for key, label in labels.items():
            ax.plot(rows, [s[f"{via}_{key}"][0] * 1e3 for s in sizes], style, marker="o", label=f"{via} {label.strip('`')}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("rows retained")
    ax.set_ylabel("ms per query")
    ax.set_title("Query latency against retained rows")
    ax.legend(fontsize=7)
    _save(fig, "query_latency.png")
    return lines


def main() -> int:
    sections = {"overhead": overhead_section, "kernel_cost": kernel_section, "storm": storm_section, "extension": extension_section}
    lines = ["# osquery-netutil benchmarks", "",
             "Generated by `bench/report.py` from the JSON in this directory. Each measurement ran in one process or "
             "script, so that its ratios hold on a noisy machine. Reproduce with:", "", COMMANDS, ""]
    missing = []
    for name, section in sections.items():
        data = load(name)
        if data is None:
            missing.append(name)
            continue
        lines += section(data)
    if missing:
        lines += [f"_Not run yet: {', '.join(missing)}._", ""]
    (RESULTS / "REPORT.md").write_text("\n".join(lines))
    print(f"wrote {RESULTS / 'REPORT.md'}" + (f" (missing: {', '.join(missing)})" if missing else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
