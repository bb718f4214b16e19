"""report.html: the single self-contained page a person reads first after a `ci` run.

Order of importance: the verdict and regressions, the check matrix, what failed and why (the
model-vs-kernel diffs), the mutant table, then the plots and the figures of every check."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from harness.cache import atomic_write_text
from harness.report.plots import convergence_plots, counters_timeline

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1300px; color: #222; }
h1 { margin-bottom: .2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
.banner { padding: .8em 1em; border-radius: 6px; font-size: 1.2em; font-weight: 600; }
.pass { background: #e6f4ea; color: #137333; } .fail, .regression { background: #fce8e6; color: #a50e0e; }
.infra { background: #fef7e0; color: #8a5a00; }
table { border-collapse: collapse; margin: .5em 0; } td, th { border: 1px solid #ddd; padding: .3em .6em; }
th { background: #f5f5f5; text-align: left; } td.v-pass { color: #137333; font-weight: 600; }
td.v-fail, td.v-hang, td.v-survived { color: #a50e0e; font-weight: 600; }
td.v-error, td.v-unverified { color: #8a5a00; font-weight: 600; } td.v-not-run, td.v-not-applicable { color: #777; }
td.v-killed { color: #137333; font-weight: 600; }
pre { background: #f8f8f8; padding: .6em; overflow-x: auto; font-size: 12px; }
.meta td:first-child { color: #666; } figure { margin: 1em 0; } figcaption { color: #555; font-size: 12px; }
img.plot { max-width: 100%; border: 1px solid #eee; }
"""


def escape(value: Any) -> str:
    return html.escape(str(value))


def render(summary: dict[str, Any]) -> str:
    status = summary["status"]
    css = {"pass": "pass", "check-failed": "fail", "regression": "regression", "infrastructure-failure": "infra"}[status]
    kernel = summary["kernel"]
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>numa-harness ci: {escape(status)}</title>"
             f"<style>{STYLE}</style></head><body>",
             "<h1>numa-harness ci report</h1>",
             f"<div class='banner {css}' id='verdict'>{escape(_headline(summary))}</div>"]
    if summary["regressions"]:
        parts.append("<h2 id='regressions'>Regressions against the baseline</h2><ul>")
        parts.extend(f"<li>{escape(r['message'])}</li>" for r in summary["regressions"])
        parts.append(f"</ul><p>Baseline: {escape(summary.get('baseline'))}</p>")
    if summary["errors"]:
        parts.append("<h2>Infrastructure errors</h2>")
        parts.extend(f"<pre>{escape(e)}</pre>" for e in summary["errors"])
    patches = ", ".join(p.get("name", "?") for p in kernel.get("patches") or []) or "none"
    parts.append("<table class='meta'>" + "".join(f"<tr><td>{escape(k)}</td><td>{escape(v)}</td></tr>" for k, v in (
        ("kernel", kernel.get("kernel_release")), ("build-id", kernel.get("build_id")),
        ("config sha256", kernel.get("config_sha256")), ("patches", patches),
        ("source", source_text(kernel.get("source"))), ("build", f"{kernel.get('build_seconds')} s"
                                                       f"{' (cache hit)' if kernel.get('cache_hit') else ''}"),
        ("started", summary["started"]), ("took", f"{summary['seconds']} s"),
        ("host", f"{summary['host'].get('qemu')}, drgn {summary['host'].get('drgn')}, "
                 f"{summary['host'].get('cpus')} CPUs"))) + "</table>")
    parts.append(_matrix(summary))
    parts.append(_failures(summary))
    parts.append(_mutants(summary))
    parts.append(_plots(summary))
    parts.append(_figures(summary))
    parts.append("</body></html>")
    return "\n".join(parts)


def source_text(source: dict[str, Any] | None) -> str:
    """The kernel source as a reader names it: kind, version, identity (not a JSON dict)."""
    if not source:
        return "unknown"
    version = f" {source['version']}" if source.get("version") else ""
    return f"{source.get('kind', '?')}{version}: {source.get('identity', '?')}"


def _headline(summary: dict[str, Any]) -> str:
    checks = [c for t in summary["topologies"] for c in t["checks"]]
    passed = sum(c["passed"] for c in checks)
    text = f"{summary['status'].upper()}: {passed} of {len(checks)} checks passed on {len(summary['topologies'])} topologies"
    if summary["mutants"]:
        text += f"; {summary['mutants']['killed']} of {summary['mutants']['total']} mutants killed"
    if summary["regressions"]:
        text += f"; {len(summary['regressions'])} regressions"
    return text


def _matrix(summary: dict[str, Any]) -> str:
    topologies = summary["topologies"]
    names: list[str] = []
    for t in topologies:
        names.extend(c["name"] for c in t["checks"] if c["name"] not in names)
    rows = ["<h2 id='checks'>Checks</h2><table><tr><th>check</th>" +
            "".join(f"<th>{escape(t['topology'])}</th>" for t in topologies) + "</tr>"]
    for name in names:
        cells = []
        for t in topologies:
            check = next((c for c in t["checks"] if c["name"] == name), None)
            if check is None:
                cells.append("<td>-</td>")
            else:
                cells.append(f"<td class='v-{check['verdict']}' title='{escape(check['summary'])}'>{check['verdict']} "
                             f"({check['seconds']:.0f} s)</td>")
        rows.append(f"<tr><td>{escape(name)}</td>{''.join(cells)}</tr>")
    rows.append("<tr><td>console log</td>" + "".join(
        f"<td><a href='{escape(t['console_log'])}'>{escape(t['console_log'])}</a></td>" if t.get("console_log") else "<td>-</td>"
        for t in topologies) + "</tr>")
    rows.append("<tr><td>boot</td>" + "".join(
        f"<td>{t['boot_seconds']:.1f} s ({escape(t['accel'])})</td>" if t.get("boot_seconds") else
        f"<td class='v-fail'>{escape(t.get('kernel_bug') or t.get('error') or '-')}</td>" for t in topologies) + "</tr>")
    rows.append("</table>")
    return "".join(rows)


def _failures(summary: dict[str, Any]) -> str:
    parts = []
    for t in summary["topologies"]:
        for c in t["checks"]:
            if c["passed"]:
                continue
            parts.append(f"<h3>{escape(t['topology'])} / {escape(c['name'])}: {escape(c['verdict'])}</h3>"
                         f"<p>{escape(c['summary'])}</p>")
            if c.get("kernel_bugs"):
                parts.append("<p><b>Kernel bug:</b> " + ", ".join(escape(b) for b in c["kernel_bugs"]) + "</p>")
            if c["diffs"]:
                parts.append("<p>Model vs kernel:</p><pre>" + escape("\n".join(c["diffs"])) + "</pre>")
            if c.get("snapshot_file"):
                parts.append(f"<p>Guest state the diff refers to: <a href='{escape(c['snapshot_file'])}'>"
                             f"{escape(c['snapshot_file'])}</a></p>")
    if not parts:
        return ""
    return "<h2 id='failures'>What failed</h2>" + "".join(parts)


def _mutants(summary: dict[str, Any]) -> str:
    mutants = summary.get("mutants")
    if not mutants:
        return "<h2 id='mutants'>Mutation self-check</h2><p>Not run (--no-mutants).</p>"
    rows = ["<h2 id='mutants'>Mutation self-check</h2>",
            f"<p>{mutants['killed']} of {mutants['total']} mutants killed.</p>",
            "<table><tr><th>mutant</th><th>outcome</th><th>failed checks</th><th>seconds</th>"
            "<th>what it breaks</th><th>first diff</th></tr>"]
    for m in mutants["mutants"]:
        rows.append(f"<tr><td>{escape(m['mutant'])}</td><td class='v-{m['outcome']}'>{escape(m['outcome'])}</td>"
                    f"<td>{escape(', '.join(m['failed_checks']) or '-')}</td><td>{m['seconds']:.0f}</td>"
                    f"<td>{escape(m['subject'])}</td><td>{escape(m.get('detail', ''))}</td></tr>")
    rows.append("</table>")
    return "".join(rows)


def _plots(summary: dict[str, Any]) -> str:
    parts = ["<h2 id='plots'>Over time</h2>"]
    for t in summary["topologies"]:
        uri = counters_timeline(t["topology"], t.get("timeline", []))
        if uri:
            parts.append(f"<figure><img class='plot' alt='counters {escape(t['topology'])}' src='{uri}'>"
                         f"<figcaption>{escape(t['topology'])}: numa_* counters (global, /proc/vmstat) read at every "
                         f"check's start and end.</figcaption></figure>")
        convergence = next((c for c in t["checks"] if c["name"] == "convergence" and c["figures"].get("runs")), None)
        if convergence:
            for caption, uri in convergence_plots(t["topology"], convergence["figures"]["runs"]):
                parts.append(f"<figure><img class='plot' alt='{escape(caption)}' src='{uri}'>"
                             f"<figcaption>{escape(caption)}</figcaption></figure>")
    return "".join(parts)


def _figures(summary: dict[str, Any]) -> str:
    parts = ["<h2 id='figures'>Figures of every check</h2>"]
    for t in summary["topologies"]:
        for c in t["checks"]:
            figures = {k: v for k, v in c["figures"].items() if k != "runs"}
            parts.append(f"<details><summary>{escape(t['topology'])} / {escape(c['name'])}: {escape(c['summary'])}</summary>"
                         f"<pre>{escape(json.dumps({'figures': figures, 'vmstat_delta': c['vmstat_delta']}, indent=1))}"
                         f"</pre></details>")
    return "".join(parts)


def write_html(path: Path, summary: dict[str, Any]) -> None:
    atomic_write_text(path, render(summary))
