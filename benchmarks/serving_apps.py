"""The serving benchmark's apps as ``--apps`` names them, variants of their Ray settings included, and the table
that compares every app of a run (requests/s, latency, CPU-ms per request).

    python -m benchmarks --serving --model efficientnet-lite0 --images 200 --rounds 2 --seconds 8 \
        --apps streamscore,peer,peer_on_serve_bare,streamscore@RAY_SERVE_HAPROXY_NBTHREAD=1

``APP@NAME=VALUE[+NAME=VALUE...]`` starts ``APP`` as it always starts, with those variables added to its
environment. A Ray-based app (``streamscore``, ``peer_on_serve``...) hands them to the local Ray instance it
starts, ahead of ``jobs/ingress.FAST_INGRESS`` (a value already in the environment wins there), so one run
measures each of Ray's per-request settings against the same peer, in the same minutes of the machine.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass
from typing import Any

BASE_APPS = ("streamscore", "peer", "peer_on_serve", "peer_on_serve_bare", "streamscore_grpc")
RAY_APPS = ("streamscore", "streamscore_grpc", "peer_on_serve", "peer_on_serve_bare")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")  # Ray core settings are RAY_lower_case


@dataclass(frozen=True)
class AppSpec:
    """An app of the benchmark (``base``, one of ``BASE_APPS``) and the environment variables added to it."""

    base: str
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, text: str) -> AppSpec:
        base, _, settings = text.partition("@")
        if base not in BASE_APPS:
            raise ValueError(f"unknown app {base!r} in {text!r}; known: {', '.join(BASE_APPS)}")
        env = []
        for item in filter(None, settings.split("+")):
            name, sep, value = item.partition("=")
            if not sep or not _NAME.fullmatch(name):
                raise ValueError(f"{item!r} in {text!r} is not NAME=VALUE")
            env.append((name, value))
        if env and base not in RAY_APPS:
            raise ValueError(f"{text!r}: only Ray's apps ({', '.join(RAY_APPS)}) take settings")
        return cls(base, tuple(env))

    @property
    def name(self) -> str:
        """As ``--apps`` wrote it: the key of this app in the report."""
        return self.base + ("@" + "+".join(f"{k}={v}" for k, v in self.env) if self.env else "")

    @property
    def settings(self) -> str:
        """The settings, shorter: Ray's ``RAY_SERVE_`` prefix left out."""
        return ", ".join(f"{k.removeprefix('RAY_SERVE_')}={v}" for k, v in self.env) or "-"

    @property
    def file_stem(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", self.name)


# Serve's ingress replica watches every HTTP request for a client disconnect, in a task of its own beside the one
# running the request (asyncio.wait on both), unless the request carries this header (Ray 2.60, replica.py).
_NO_DISCONNECT_WATCH = (b"x-request-disconnect-disabled", b"?1")


class _IgnoreClientDisconnects:
    """Pure ASGI middleware: marks every HTTP request as one whose client Serve need not watch."""

    def __init__(self, app: Any) -> None:
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope["headers"] = [*scope["headers"], _NO_DISCONNECT_WATCH]
        await self._app(scope, receive, send)


def without_disconnect_watch() -> list[Any]:
    """The variant ``streamscore@RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=benchmarks.serving_apps:without_disconnect_watch``:
    Serve wraps each ingress replica's HTTP server in what this returns (the benchmark puts the repository on the
    apps' ``PYTHONPATH``, so the replicas import it)."""
    from starlette.middleware import Middleware

    return [Middleware(_IgnoreClientDisconnects)]


def summarise_cpu(runs_of: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of one app at one concurrency: CPU-ms per request, in all and by process group."""
    measured = [x for x in runs_of if x.get("cpu_ms_per_request") is not None]
    if not measured:
        return {}
    groups = sorted({g for x in measured for g in x["cpu_ms_per_request_by_process"]})
    by_process = {
        g: statistics.median(x["cpu_ms_per_request_by_process"].get(g, 0.0) for x in measured) for g in groups
    }
    return {
        "cpu_ms_per_request": statistics.median(x["cpu_ms_per_request"] for x in measured),
        "cpu_cores_busy": statistics.median(x["cpu_cores_busy"] for x in measured),
        "other_cores": statistics.median(x.get("other_cores", float("nan")) for x in measured),
        "cpu_ms_per_request_by_process": by_process,
    }


QUIET_CORES = 0.1  # a window in which other work kept less busy than this counts as quiet


def apps_section(report: dict[str, Any]) -> list[str]:
    """The lines ``serving_table`` ends with: every app's row, where its CPU went at the most clients, and the
    same rows over the quiet windows alone when other work ran during some."""
    if "apps" not in report:  # reports from before CPU-ms and variants were measured have neither
        return []
    busiest = max(row["concurrency"] for row in report["summary"])
    intro = "Every app of the run (medians over rounds; CPU-ms: the app's whole process tree):"
    lines = ["", intro, "", apps_table(report), "", cpu_table(report, busiest)]
    windows = [x for per in report["runs"].values() for runs in per.values() for x in runs]
    if any(x.get("other_cores", 0.0) >= QUIET_CORES for x in windows):
        lines += ["", f"The same over the windows in which other work kept under {QUIET_CORES} cores busy:", ""]
        lines.append(apps_table(quiet_report(report)))
    return lines


def quiet_report(report: dict[str, Any], max_other_cores: float = QUIET_CORES) -> dict[str, Any]:
    """``report`` with its medians taken over the windows in which other work on the machine kept fewer than
    ``max_other_cores`` busy (a shared machine's quiet minutes); an app with no such window shows none."""
    summary = []
    for row in report["summary"]:
        c, quiet = row["concurrency"], {"concurrency": row["concurrency"]}
        for app in report["apps"]:
            windows = [x for x in report["runs"][app][str(c)] if x.get("other_cores", 1e9) < max_other_cores]
            if windows:
                quiet[f"{app}_requests_per_s"] = statistics.median(x["requests_per_s"] for x in windows)
                quiet[f"{app}_p50_ms"] = statistics.median(x["p50_ms"] for x in windows)
                quiet[f"{app}_failures"] = sum(sum(x["failures"].values()) for x in windows)
                quiet |= {f"{app}_{key}": value for key, value in summarise_cpu(windows).items()}
        summary.append(quiet)
    at_1 = next((row for row in summary if row["concurrency"] == 1), {})
    overhead = {
        app: at_1[f"{app}_p50_ms"] - report["in_process"][app]["p50_ms"]
        for app in report["apps"]
        if f"{app}_p50_ms" in at_1
    }
    return report | {"summary": summary, "p50_overhead_ms_at_concurrency_1": overhead}


def apps_table(report: dict[str, Any]) -> str:
    """Markdown: one row per app of the run: requests/s per concurrency (x the peer's), p50 at one client (and
    over the app's own code in-process), CPU-ms per request per concurrency (also less the idle background), the
    app's CPU use when idle, and the cores other work on the machine kept busy meanwhile (neither the app nor the
    load generator: the most over concurrencies of the medians over rounds)."""
    rows = report["summary"]
    apps = report.get("apps") or [a for a in BASE_APPS if f"{a}_requests_per_s" in rows[0]]
    concurrencies = [row["concurrency"] for row in rows]
    overhead = report.get("p50_overhead_ms_at_concurrency_1", {})
    idle = report.get("idle_cpu_cores", {})
    header = (
        "| app | settings beside FAST_INGRESS | "
        + " | ".join(f"req/s at {c} (x peer)" for c in concurrencies)
        + " | p50 ms at 1 (over in-process) | CPU-ms per request at "
        + " / ".join(str(c) for c in concurrencies)
        + " | the same, net of the idle CPU | idle CPU, cores | other work, cores | failures |"
    )
    lines = [header, "|" + "---|" * (len(concurrencies) + 8)]
    for app in apps:
        spec = AppSpec.parse(app)
        rates = []
        for row in rows:
            rate, peer = row.get(f"{app}_requests_per_s"), row.get("peer_requests_per_s")
            rates.append(_number(rate) + (f" ({rate / peer:.2f})" if rate is not None and peer else ""))
        at_1 = next((row for row in rows if row["concurrency"] == 1), None)
        p50 = f"{at_1[f'{app}_p50_ms']:.1f} ({overhead[app]:+.1f})" if at_1 and f"{app}_p50_ms" in at_1 else "-"
        cpu = " / ".join(_number(row.get(f"{app}_cpu_ms_per_request")) for row in rows)
        net = " / ".join(_number(_net_of_idle(row, app, idle.get(app))) for row in rows)
        failures = sum(row.get(f"{app}_failures", 0) for row in rows)
        others = [row[f"{app}_other_cores"] for row in rows if f"{app}_other_cores" in row]
        lines.append(
            f"| {spec.base} | {spec.settings} | {' | '.join(rates)} | {p50} | {cpu} | {net} | "
            f"{_number(idle.get(app), 2)} | {_number(max(others) if others else None, 2)} | {failures} |"
        )
    return "\n".join(lines)


def cpu_table(report: dict[str, Any], concurrency: int) -> str:
    """Markdown: where each app's CPU-ms per request went at ``concurrency``, by process group (medians)."""
    row = next(r for r in report["summary"] if r["concurrency"] == concurrency)
    apps = report.get("apps") or [a for a in BASE_APPS if f"{a}_requests_per_s" in row]
    lines = [f"| app | settings | CPU-ms per request at {concurrency} clients, by process |", "|---|---|---|"]
    for app in apps:
        by_process = row.get(f"{app}_cpu_ms_per_request_by_process")
        if not by_process:
            continue
        spec = AppSpec.parse(app)
        parts = [f"{g} {ms:.2f}" for g, ms in sorted(by_process.items(), key=lambda kv: -kv[1]) if ms >= 0.01]
        lines.append(f"| {spec.base} | {spec.settings} | {', '.join(parts)} |")
    return "\n".join(lines)


def _net_of_idle(row: dict[str, Any], app: str, idle_cores: float | None) -> float | None:
    """CPU-ms per request less the app's idle background over the same time: what each request adds, the figure
    that carries to a machine whose cores serve many more requests per second over the same background."""
    cpu, rate = row.get(f"{app}_cpu_ms_per_request"), row.get(f"{app}_requests_per_s")
    if cpu is None or not rate or idle_cores is None:
        return None
    return cpu - idle_cores * 1e3 / rate


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"
