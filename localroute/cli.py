"""`localroute serve | pull | status | ...`: the command line. Errors print one clear line, never a
traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config, load_config
from localroute.errors import ConfigError


def default_config_path() -> Path:
    env = os.environ.get("LOCALROUTE_CONFIG")
    return Path(env) if env else Path("models.toml")


def _load(path: str | None) -> Config:
    return load_config(Path(path) if path else default_config_path())


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from localroute.gateway.app import create_app
    from localroute.gateway.edge import EdgeProtocol
    from localroute.gateway.security import exposure_problem, is_loopback
    from localroute.observe.logs import configure as configure_logs
    from localroute.observe.logs import level_from

    cfg = _load(args.config)
    host = args.host or cfg.server.host
    port = cfg.server.port if args.port is None else args.port
    problem = exposure_problem(host, cfg.keys, args.insecure_no_auth)
    if problem is not None:
        print(f"localroute: {problem}", file=sys.stderr)
        return 2
    if args.insecure_no_auth and not cfg.keys and not is_loopback(host):
        print(
            f"localroute: WARNING: serving {host} with no authentication (--insecure-no-auth)",
            file=sys.stderr,
        )
    for key in cfg.keys:  # a key the gateway cannot recognise would silently lose its privacy policy
        if key.env and not os.environ.get(key.env):
            print(
                f"localroute: key '{key.name}' reads its value from ${key.env}, which is not set.",
                file=sys.stderr,
            )
            return 2
    missing = [
        m.name
        for m in cfg.models
        if isinstance(m, LlamaCppModel) and m.preload and not cfg.model_path(m).is_file()
    ]
    if missing:
        print(
            f"localroute: model(s) {', '.join(missing)} not downloaded; run `localroute pull` first.",
            file=sys.stderr,
        )
        return 1
    configure_logs(cfg.server.log_level, cfg.server.log_format)
    uvicorn.run(
        create_app(cfg),
        host=host,
        port=port,
        log_config=None,  # our handler (configure_logs) formats uvicorn's lines too
        log_level=level_from(cfg.server.log_level),
        access_log=False,
        timeout_graceful_shutdown=cfg.server.shutdown_grace_s,
        http=EdgeProtocol,  # malformed HTTP is answered in the OpenAI error shape too
    )
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from localroute.host.pull import pull_models

    cfg = _load(args.config)
    return pull_models(cfg, names=args.models or None)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from localroute.routing.evaluate import (
        EvalError,
        cost_model,
        evaluate,
        format_table,
        load_dataset,
        plot_report,
        report_json,
    )
    from localroute.routing.policy import Policy

    try:
        if args.plot:
            import matplotlib  # noqa: F401  (fail before the work, not after)
    except ImportError:
        print("localroute: --plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 1
    cfg = _load(args.config)
    try:
        data = load_dataset(args.data, args.weak, args.strong)
        report = evaluate(data, Policy(cfg), args.weak, args.strong, cost_model(cfg, args.output_tokens),
                          seed=args.seed)  # fmt: skip
        if args.plot:
            plot_report(report, args.plot)
    except EvalError as exc:
        print(f"localroute: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report_json(report)) if args.json else format_table(report), flush=True)
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from localroute.routing.explain import run

    cfg = _load(args.config)
    if args.file and args.file != "-":
        with open(args.file, encoding="utf-8") as fh:
            return run(cfg, fh, args.jsonl, privacy=args.privacy)
    return run(cfg, None, args.jsonl, privacy=args.privacy)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from localroute.privacy.audit import verify

    if args.path:
        path = Path(args.path)
    else:
        path = _load(args.config).audit_path()
    if not path.is_file():
        print(f"localroute: no audit log at {path}", file=sys.stderr)
        return 2
    result = verify(path)
    print(result.report())
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from localroute.observe.report import build, format_report
    from localroute.observe.stats import parse_since

    path = Path(args.path) if args.path else _load(args.config).audit_path()
    if not path.is_file():
        print(f"localroute: no audit log at {path}", file=sys.stderr)
        return 2
    now = datetime.now(UTC)
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        print(f"localroute: --since: {exc}", file=sys.stderr)
        return 2
    summary = build(path, since, now)
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    return 0


def _cell(value: object, suffix: str = "") -> str:
    return "-" if value is None else f"{value}{suffix}"


def format_status(health: dict[str, Any], url: str) -> str:
    """A running gateway's /health as a table a person can read."""
    lines = [f"localroute at {url}: {health.get('status', '?')}"]
    res = health.get("resources")
    if isinstance(res, dict):
        gpus = res.get("gpus") or []
        gpu = ", ".join(f"{g['name']} ({g['free_mib']}/{g['total_mib']} MiB free)" for g in gpus) or "none"
        lines += [
            f"RAM {res['ram_available_mib']} of {res['ram_total_mib']} MiB available; "
            f"disk {res['disk_free_mib']} MiB free; GPUs: {gpu}",
            f"memory budget {res['budget_mib']} MiB ({res['memory_budget']}), "
            f"{res['reserved_mib']} MiB reserved by loaded models; on_over_budget = {res['on_over_budget']}; "
            f"{res['evictions']} eviction(s)",
        ]
    head = ("MODEL", "ENGINE", "STATE", "PID", "RSS MiB", "EST MiB", "LAST USE", "LOAD s", "SERVED")
    rows = [head]
    for name, e in (health.get("engines") or {}).items():
        ago = e.get("last_used_s_ago")
        rows.append((
            name, _cell(e.get("engine")), _cell(e.get("state")), _cell(e.get("pid")),
            _cell(e.get("rss_mib")), _cell(e.get("estimated_mib")),
            "never" if ago is None and "last_used_s_ago" in e else _cell(ago, "s ago"),
            _cell(e.get("load_seconds")), _cell(e.get("served")),
        ))  # fmt: skip
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(head))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def cmd_status(args: argparse.Namespace) -> int:
    import httpx

    url = args.url.rstrip("/")
    try:
        r = httpx.get(url + "/health", timeout=args.timeout)
        health = r.json()
    except (httpx.HTTPError, ValueError) as exc:
        print(f"localroute: no gateway answered at {url}: {exc.__class__.__name__}", file=sys.stderr)
        return 1
    if not isinstance(health, dict) or not isinstance(health.get("engines"), dict):
        print(f"localroute: {url}/health did not answer like a localroute gateway", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(health, indent=2))
    else:
        print(format_status(health, url))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="localroute", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="start the OpenAI-compatible gateway")
    s.add_argument("--config", help="path to models.toml (default: ./models.toml or $LOCALROUTE_CONFIG)")
    s.add_argument("--host", help="address to bind (default from config: 127.0.0.1)")
    s.add_argument("--port", type=int, help="port to bind (default from config: 8000)")
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding a non-loopback address without [[keys]] (only behind another auth layer)",
    )
    s.set_defaults(func=cmd_serve)
    pl = sub.add_parser("pull", help="download every model the config names")
    pl.add_argument("--config", help="path to models.toml")
    pl.add_argument("models", nargs="*", help="only these models (default: all)")
    pl.set_defaults(func=cmd_pull)
    st = sub.add_parser("status", help="show a running gateway's models, memory and GPUs (its /health)")
    st.add_argument("--url", default="http://127.0.0.1:8000", help="gateway address (default: %(default)s)")
    st.add_argument("--json", action="store_true", help="print /health as JSON")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    st.set_defaults(func=cmd_status)
    au = sub.add_parser("audit", help="work with the hash-chained audit log")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    av = au_sub.add_parser("verify", help="check the chain; count private records that touched a remote rung")
    av.add_argument("path", nargs="?", help="audit log (default: privacy.audit_path from the config)")
    av.add_argument("--config", help="path to models.toml")
    av.set_defaults(func=cmd_audit_verify)
    rp = sub.add_parser("report", help="requests, local share, cost and savings, from the audit log")
    rp.add_argument("path", nargs="?", help="audit log (default: privacy.audit_path from the config)")
    rp.add_argument("--config", help="path to models.toml")
    rp.add_argument("--since", help="ISO-8601 time, or a span back from now: 15m, 1h, 7d")
    rp.add_argument("--json", action="store_true", help="print the same JSON as /v1/localroute/stats")
    rp.set_defaults(func=cmd_report)
    ex = sub.add_parser("explain", help="show the routing decision for requests, offline")
    ex.add_argument("--config", help="path to models.toml")
    ex.add_argument("--jsonl", action="store_true", help="one request per line")
    ex.add_argument("file", nargs="?", help="requests file (default: stdin)")
    ex.add_argument("--privacy", choices=["private", "public"], help="as the X-LocalRoute-Privacy header")
    ex.set_defaults(func=cmd_explain)
    ev = sub.add_parser("eval", help="score the routing policy on labelled prompts (APGR, CPT, savings)")
    ev.add_argument("--data", nargs="+", required=True, help="CSV files or folders of them")
    ev.add_argument("--weak", required=True, help="boolean column: the weak model answered correctly")
    ev.add_argument("--strong", required=True, help="boolean column: the strong model answered correctly")
    ev.add_argument("--config", help="path to models.toml (policy weights and prices)")
    ev.add_argument("--plot", help="write a PNG of quality against the share of strong calls")
    ev.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    ev.add_argument("--seed", type=int, default=0, help="seed of the random baseline (default 0)")
    ev.add_argument("--output-tokens", type=int, default=256, help="assumed output tokens per request")
    ev.set_defaults(func=cmd_eval)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        print(f"localroute: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
