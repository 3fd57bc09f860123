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
sudo make bench                      # all of it: set-up (--bench), the benchmarks, this report
.venv/bin/python bench/overhead.py   # 1. exec overhead against nothing, bpftrace and auditd
.venv/bin/python bench/kernel_cost.py    # 2. kernel ns per exec, per program
.venv/bin/python bench/storm.py          # 3. loss under a storm, 4. user-space CPU
.venv/bin/python bench/extension_bench.py  # 5. query latency, 6. memory and start-up
.venv/bin/python bench/syscall_tax.py    # 7. the tax on syscalls that are not execs
.venv/bin/python bench/judge_rate.py     # 8. rows/s that watch's detection rounds judge
.venv/bin/python bench/pack_cost.py      # 9. each pack's run time, the schedule's CPU against osquery's watchdog
.venv/bin/python bench/verdicts.py       # 10. content verdicts: the cold start and the steady state
.venv/bin/python bench/sockets.py        # 11. the socket side: what untracked and tracked sockets pay, a tracked scan
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
             "brackets. *floor* is tracepoint mode's six tracepoints with empty programs: what attaching syscall "
             "tracepoints costs every process by itself, before any program runs. *sched-floor* is the two sched/task "
             "tracepoints alone, empty: about what btf mode's two raw tracepoints cost before their programs run.", "",
             "| watching execs with | wall time | ratio to nothing | per exec | spawners' CPU | the tool's own CPU |",
             "|---|---|---|---|---|---|"]
    for name, t in tools.items():
        w = t["wall"]
        lines.append(f"| {name} | {w['median'] * 1e3:.0f} ms ({w['min'] * 1e3:.0f}-{w['max'] * 1e3:.0f}) | **{t['ratio']:.3f}** | "
                     f"{t['us_per_exec']:.1f} µs | {t['cpu']['median']:.2f} s | {t['tool_cpu']['median']:.2f} s |")
    if {"floor", "netutil-tracepoint", "sched-floor", "netutil-btf"} <= set(tools):
        lines += ["", f"netutil-tracepoint / floor = **{tools['netutil-tracepoint']['ratio'] / tools['floor']['ratio']:.3f}**, "
                      f"netutil-btf / sched-floor = **{tools['netutil-btf']['ratio'] / tools['sched-floor']['ratio']:.3f}**: "
                      "what our programs add; the rest is what the hooks cost with nothing to run."]
    lines += ["", "![exec overhead](overhead.png)", ""]
    names = list(tools)
    ratios = [tools[n]["ratio"] for n in names]
    low = [tools[n]["ratio"] - tools[n]["wall"]["min"] / tools["none"]["wall"]["median"] for n in names]
    high = [tools[n]["wall"]["max"] / tools["none"]["wall"]["median"] - tools[n]["ratio"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    colours = {"none": "#999", "sched-floor": "#ccc", "floor": "#bbb", "netutil-btf": "#2a7", "netutil-tracepoint": "#7c9",
               "bpftrace": "#48c", "auditd": "#c74"}
    ax.bar(names, ratios, yerr=[low, high], capsize=4, color=[colours.get(n, "#777") for n in names])
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.02, color="#2a7", linewidth=0.8, linestyle="--", label="target for netutil: 1.02")
    ax.set_ylabel("fork+exec wall time / nothing attached")
    ax.set_ylim(0.9, max(ratios) * 1.1)
    ax.legend(loc="upper left")
    ax.set_title("Exec overhead per tool (median, min-max)")
    _save(fig, "overhead.png")
    return lines


def kernel_section(data: dict[str, Any]) -> list[str]:
    modes = [m for m in ("btf", "btf_without_verdicts", "tracepoint") if m in data]
    lines = ["## 2. Kernel cost per exec", "", machine_line(data), "",
             f"Run time of each probe program from the kernel's BPF statistics (`kernel.bpf_stats_enabled`), "
             f"{data['execs']:,} execs per round, median of {data['rounds']} rounds, in each probe mode.", ""]
    fig, axes = plt.subplots(1, len(modes), figsize=(4 * len(modes), 3.5), sharey=True, squeeze=False)
    for mode, ax in zip(modes, axes[0]):
        nc, c = data[mode]["non_catalog"], data[mode]["catalog"]
        programs = [p for p in nc["programs"] if nc["programs"][p]["runs_per_exec"] or c["programs"][p]["runs_per_exec"]]
        lines += [f"**{mode} mode**", "", "| program | non-catalog exec (filtered in the kernel) | catalog exec (forwarded) |",
                  "|---|---|---|"]
        lines += [f"| `{p}` | {nc['programs'][p]['ns_per_exec']:.0f} ns | {c['programs'][p]['ns_per_exec']:.0f} ns |" for p in programs]
        lines += [f"| **all programs** | **{nc['total_ns']:.0f} ns** ({nc['min_ns']:.0f}-{nc['max_ns']:.0f}) | "
                  f"**{c['total_ns']:.0f} ns** ({c['min_ns']:.0f}-{c['max_ns']:.0f}) |", ""]
        bottom = [0.0, 0.0]
        for p in programs:
            values = [nc["programs"][p]["ns_per_exec"], c["programs"][p]["ns_per_exec"]]
            ax.bar(["non-catalog", "catalog"], values, bottom=bottom, label=p)
            bottom = [b + v for b, v in zip(bottom, values)]
        ax.axhline(1500, color="black", linestyle="--", linewidth=0.8, label="target: 1,500 ns (non-catalog)")
        ax.set_title(f"{mode} mode")
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel("kernel ns per exec")
    _save(fig, "kernel_ns.png")
    return lines + ["![kernel ns per exec](kernel_ns.png)", ""]


def storm_section(data: dict[str, Any]) -> list[str]:
    lines = ["## 3. Loss under a storm, 4. user-space cost", "", machine_line(data), "",
             "Catalog execs (a 129-byte static ELF named `nc`) from one spawner per core at full speed, through the whole "
             "sensor (probe, enrichment, store), doubling from 20,000.", "",
             "| execs spawned | rate | rows made | rows stored | lost |", "|---|---|---|---|---|"]
    for s in data["storms"]:
        lines.append(f"| {s['execs']:,} | {s['rate']:,.0f}/s | {s['rows']:,} | {s['stored']:,} | {s['lost']:,} |")
    lines += ["", f"Outcome: {data['why']}.", "",
              f"User-space CPU: **{data['cpu_per_1000_non_catalog_s'] * 1e3:.1f} ms per 1,000 non-catalog execs** "
              f"(the kernel drops them), **{data.get('cpu_per_1000_dropped_s', 0) * 1e3:.1f} ms per 1,000 execs forwarded by name "
              f"and dropped by the catalog's args** (openssl without s_client) "
              f"and **{data['cpu_per_1000_catalog_s'] * 1e3:.0f} ms per 1,000 catalog execs** "
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
    lines.append("| all detections, embedded host | " + " | ".join(f"{s['pack_run'][0] * 1e3:.0f} ms" for s in sizes) + " |")
    lines.append("| registered after start | " + " | ".join(f"{s['registered_s']:.2f} s" for s in sizes) + " |")
    lines.append("| probe attached after start | " + " | ".join(f"{s['attached_s']:.2f} s" for s in sizes) + " |")
    lines.append("| RSS at rest (anonymous + file-backed) | "
                 + " | ".join(f"{s['rss_rest'][0]:.0f} + {s['rss_rest'][1]:.0f} MB" for s in sizes) + " |")
    lines.append("| RSS after the queries | "
                 + " | ".join(f"{s['rss_after'][0]:.0f} + {s['rss_after'][1]:.0f} MB" for s in sizes) + " |")
    lines += ["", "File-backed RSS is the libraries' code: Python, libbcc, APSW. LLVM and clang (85 MB) are paged out "
              "once the probe is compiled (`memory.page_out_compiler`).", "", "![query latency](query_latency.png)", ""]
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


def ratio_rows(heading: str, table: dict[str, dict[str, Any]], decimals: int) -> list[str]:
    """A Markdown table of common.ratio_table's figures: per condition and loop, the median
    in ns (min-max) and the ratio to the baseline."""
    loops = list(next(iter(table.values())))
    rows = [f"| {heading} | " + " | ".join(loops) + " |", "|---|" + "---|" * len(loops)]
    for name, by_loop in table.items():
        rows.append(f"| {name} | " + " | ".join(
            f"{by_loop[loop]['median']:.{decimals}f} ns ({by_loop[loop]['min']:.{decimals}f}-{by_loop[loop]['max']:.{decimals}f}), "
            f"**×{by_loop[loop]['ratio']:.3f}**" for loop in loops) + " |")
    return rows


def syscall_tax_section(data: dict[str, Any]) -> list[str]:
    tools = data["tools"]
    loops = list(next(iter(tools.values())))
    lines = ["## 7. Syscall tax", "", machine_line(data), "",
             f"A C loop of `getppid()` and of one-byte `read()`s from /dev/zero, with each way of watching execs attached; "
             f"a measurement is the fastest of {data['repeat']} runs of {data['calls']:,} calls (steal time on this VM "
             f"only adds), {data['rounds']} rounds interleaved. Medians, min-max in brackets. Any "
             "`syscalls:*` tracepoint sends every syscall of every process down the slow path; btf mode attaches none.", "",
             *ratio_rows("watching execs with", tools, 1)]
    lines += ["", "![syscall tax](syscall_tax.png)", ""]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(loops)
    for i, loop in enumerate(loops):
        ax.bar([k + i * width for k in range(len(tools))], [t[loop]["ratio"] for t in tools.values()], width, label=loop)
    ax.set_xticks([k + width * (len(loops) - 1) / 2 for k in range(len(tools))], list(tools))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.axhline(1.02, color="#2a7", linewidth=0.8, linestyle="--", label="target for btf: 1.02")
    ax.set_ylim(0.9, max(t[loop]["ratio"] for t in tools.values() for loop in loops) * 1.05)
    ax.set_ylabel("ns per syscall / nothing attached")
    ax.set_title("Syscall tax of each way of watching execs")
    ax.legend()
    _save(fig, "syscall_tax.png")
    return lines


def judge_rate_section(data: dict[str, Any]) -> list[str]:
    return ["## 8. Detection throughput", "", machine_line(data), "",
            f"`watch` judges each stored row once, by eid: {data['rows']:,} rows shaped like a ping sweep run by a /tmp "
            f"script under a web server, judged by all {data['detections']} detections batch by batch: "
            f"**{data['rows_per_s']:,.0f} rows/s** ({data['lines']:,} detection lines in {data['seconds']:.1f} s). "
            "Compare with the probe's own maximum (section 3): a storm faster than this builds a backlog that drains "
            "after it; no row is skipped.", ""]


def pack_cost_section(data: dict[str, Any]) -> list[str]:
    sizes = list(data["costs"])
    lines = ["## 9. What the scheduled packs cost", "", machine_line(data), "",
             "Seconds per run of each detection with N rows in its window (the packs' fixture rows, repeated): "
             "*embedded* is the embedded host (table read through the plugin, functions in Python); *osqueryd* the same "
             "SQL in plain SQLite with regex_match in C++ compiled at every call, as osquery does (the worker's share); "
             "*extension* the plugin answering osquery's generate for the window, encoded for thrift as the "
             "extension sends it (the extension's share).", "",
             "| detection | " + " | ".join(f"embedded {int(n):,} | osqueryd {int(n):,}" for n in sizes)
             + f" | extension {int(sizes[-1]):,} |",
             "|---|" + "---:|" * (2 * len(sizes) + 1)]
    for name in data["costs"][sizes[0]]:
        cells = " | ".join(f"{data['costs'][n][name]['embedded_s']:.3f} | {data['costs'][n][name]['osqueryd_s']:.3f}" for n in sizes)
        lines.append(f"| {name} | {cells} | {data['costs'][sizes[-1]][name]['extension_s']:.3f} |")
    totals = " | ".join(f"**{data['totals'][n]['embedded_s']:.2f}** | **{data['totals'][n]['osqueryd_s']:.2f}**" for n in sizes)
    lines += [f"| all together | {totals} | **{data['totals'][sizes[-1]]['extension_s']:.2f}** |", ""]
    if data["cpu_share_per_hour"]:
        lines += ["CPU of the whole schedule, as a share of one core (osquery's watchdog stops a worker above 10 %):", ""]
        lines += [f"- {int(rate):,} rows an hour: osqueryd **{share['osqueryd_s']:.2%}**, extension **{share['extension_s']:.2%}** "
                  f"(embedded host {share['embedded_s']:.2%})" for rate, share in data["cpu_share_per_hour"].items()]
        lines.append("")
    return lines


def verdicts_section(data: dict[str, Any]) -> list[str]:
    return ["## 10. Content verdicts: a host's first minute and after", "", machine_line(data), "",
            f"btf mode judges every executable once by content. {data['images']:,} distinct images (copies of a static "
            f"binary), each exec'd once per pass under the sensor's probe and enrichment, against no probe in the same "
            f"script (median of {data['rounds']} rounds):", "",
            "| pass | exec rate vs no probe | kernel ns per exec |", "|---|---:|---:|",
            f"| cold: each image's first exec, forwarded and judged | {data['cold_exec_ratio']:.3f} | "
            f"{data['cold_kernel_ns_per_exec']:,.0f} |",
            f"| steady: each image known to the kernel | {data['steady_exec_ratio']:.3f} | "
            f"{data['steady_kernel_ns_per_exec']:,.0f} |", "",
            f"The sensor's CPU (probe reader and enrichment) per judged image in the cold pass: "
            f"**{data['cold_cpu_ms_per_image']:.2f} ms**. Steady-state cost per non-catalog exec is in section 2 (btf against "
            "btf_without_verdicts).", ""]


def sockets_section(data: dict[str, Any]) -> list[str]:
    conditions = data["conditions"]
    lines = ["## 11. The socket side", "", machine_line(data), "",
             f"A C loop of loopback TCP connects (accepted and closed), 64-byte UDP send-and-receive and 64-byte TCP "
             f"request/response, {data['ops']:,} operations a run, pinned to one core, {data['rounds']} rounds with the "
             "conditions alternating run by run in an order shuffled every round (the hooks are linked and detached "
             "between runs); ns per operation as "
             "median (min-max), and the ratio to no socket hook as the median of each round's own ratio (this VM's speed "
             "drifts by tens of percent over seconds). *sensor*: the sensor's socket programs (btf mode: the cgroup "
             "programs connect4/6 and post_bind4/6, the raw tracepoint on sock:sock_send_length that reads what tracked "
             "processes send, and those on sock:inet_sk_error_report and tcp:tcp_destroy_sock that read TCP outcomes), "
             "the loop untracked; "
             "*tracked*: the loop run from /tmp (its events reported until its budget is spent, then counted); "
             "*skb_floor* and *sendlen_floor*: only a cgroup_skb egress program, or only a raw tracepoint on "
             "sock:sock_send_length, doing one array lookup (the fixed cost of the hook tracepoint mode reads sends at, "
             "per packet, and of the one btf mode reads them at, per send); *connect4_floor*, *destroy_floor* and "
             "*sockops_floor*: only a connect4 program doing one array lookup, only a raw tracepoint on "
             "tcp:tcp_destroy_sock reading a socket's cookie, or only a sock_ops program that returns (the hooks a "
             "connect passes: btf mode reads outcomes at tcp_destroy_sock, tracepoint mode at sock_ops).", "",
             *ratio_rows("condition", conditions, 0)]
    send = data.get("send_hook")
    if send:
        lines += ["", f"The send hook alone (the udp loop, {len(send['none']['udp']['runs'])} rounds; ratio to none "
                  "and the 95 % interval of the median ratio): " + "; ".join(
                      f"*{name}* ×{v['udp']['ratio']:.3f} ({v['udp']['ratio_95'][0]:.3f}-{v['udp']['ratio_95'][1]:.3f})"
                      for name, v in send.items() if name != "none")
                  + ". *sendlen_empty* is an empty program on sock:sock_send_length: what the hook costs by itself."]
    kernel = data["kernel"]
    lines += ["", "What the kernel counts (bpf_stats, a pass of its own, the loop untracked): per program that ran, its "
              "runs per operation × ns per run. Deterministic where the ratios above are not, but without the hook's "
              "own dispatch around the program.", "",
              "| condition | " + " | ".join(kernel) + " |", "|---|" + "---|" * len(kernel)]
    for name in next(iter(kernel.values())):
        lines.append(f"| {name} | " + " | ".join(", ".join(
            f"{prog} {v['runs_per_op']:.2f} × {v['ns_per_run']:.0f}" for prog, v in kernel[loop][name].items()) or "–"
            for loop in kernel) + " |")
    lines.append("")
    scan = data["scan"]
    if "skipped" in scan:
        lines += [f"Tracked scan: {scan['skipped']}.", ""]
    else:
        lines += [f"A tracked `nmap -sT` of {scan['ports']:,} loopback ports ({scan['seconds']} s) while the same script "
                  f"made {scan['exec_rows_expected']} exec rows: **{scan['exec_rows_kept']} kept**, {scan['events_lost']} "
                  f"exec events lost; {scan['socket_events']:,} socket events handed over, {scan['socket_events_lost']:,} "
                  f"counted as lost (over the budget or the ring), {scan['socket_rows']:,} rows of nmap's kept "
                  f"({scan['socket_rows_count_sum']:,} actions folded into them).", ""]
    return lines


def main() -> int:
    sections = {"overhead": overhead_section, "kernel_cost": kernel_section, "storm": storm_section, "extension": extension_section,
                "syscall_tax": syscall_tax_section, "judge_rate": judge_rate_section, "pack_cost": pack_cost_section,
                "verdicts": verdicts_section, "sockets": sockets_section}
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
