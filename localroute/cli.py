"""`localroute serve | pull | status | ...`: the command line. Errors print one clear line, never a
traceback."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from localroute.config.models import LlamaCppModel
from localroute.config.schema import Config, load_config
from localroute.errors import ConfigError
from localroute.observe.status_text import format_status


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
    cfg = cfg.model_copy(update={"server": cfg.server.model_copy(update={"port": port})})
    try:
        cfg.replica()
    except ValueError as exc:
        print(f"localroute: {exc}", file=sys.stderr)
        return 2
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
        if isinstance(m, LlamaCppModel) and m.preload and not m.endpoints and not cfg.model_path(m).is_file()
    ]
    if missing:
        print(
            f"localroute: model(s) {', '.join(missing)} not downloaded; run `localroute pull` first.",
            file=sys.stderr,
        )
        return 1
    from localroute.routing.policy import Policy

    Policy(cfg)  # a bad `[routing] scorer` is refused here, in one line, before anything starts
    configure_logs(cfg.server.log_level, cfg.server.log_format)
    if args.workers > 1:
        from localroute.workers import serve

        return serve(
            cfg, Path(args.config) if args.config else default_config_path(), host, port, args.workers
        )
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


def cmd_engine(args: argparse.Namespace) -> int:
    from localroute.gateway.engine_app import run

    return run(args, _load(args.config))


def cmd_pull(args: argparse.Namespace) -> int:
    from localroute.host.pull import pull_models

    cfg = _load(args.config)
    return pull_models(cfg, names=args.models or None)


def cmd_init(args: argparse.Namespace) -> int:
    from localroute.host.init import Options, run
    from localroute.routing.probe_fit import fit_probe

    path = Path(args.config) if args.config else default_config_path()
    opts = Options(path, write=args.write, measure=not args.no_measure, budget=args.budget, reps=args.reps,
                   max_tokens=args.decode_tokens, threads=args.threads, probe=args.probe_questions,
                   probe_minutes=args.probe_minutes, fit=fit_probe)  # fmt: skip
    return run(opts, sys.stdout, sys.stderr)


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
    policy, name, also = Policy(cfg), "policy", []
    if args.scorer:
        from localroute.routing.scorer import load_scorer

        policy, name = Policy(cfg, load_scorer(Path(args.scorer))), "learned"
        also = [("heuristic", Policy(_heuristic(cfg)))]
    try:
        data = load_dataset(args.data, args.weak, args.strong)
        report = evaluate(data, policy, args.weak, args.strong, cost_model(cfg, args.output_tokens),
                          seed=args.seed, name=name, also=also)  # fmt: skip
        if args.plot:
            plot_report(report, args.plot)
    except EvalError as exc:
        print(f"localroute: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report_json(report)) if args.json else format_table(report), flush=True)
    if args.plot:
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _heuristic(cfg: Config) -> Config:
    return cfg.model_copy(update={"routing": cfg.routing.model_copy(update={"scorer": "heuristic"})})


def _with_scorer(cfg: Config, scorer: str | None) -> Config:
    """`--scorer PATH` overrides `[routing] scorer` (and drops its pin, which names another file)."""
    if not scorer:
        return cfg
    path = str(Path(scorer).resolve())
    update = {"scorer": path, "scorer_sha256": None}
    return cfg.model_copy(update={"routing": cfg.routing.model_copy(update=update)})


def cmd_train(args: argparse.Namespace) -> int:
    from localroute.routing.train_cmd import main

    return main(args, _heuristic(_load(args.config)))


def cmd_explain(args: argparse.Namespace) -> int:
    from localroute.routing.explain import run

    cfg = _with_scorer(_load(args.config), args.scorer)
    if args.file and args.file != "-":
        with open(args.file, encoding="utf-8") as fh:
            return run(cfg, fh, args.jsonl, privacy=args.privacy)
    return run(cfg, None, args.jsonl, privacy=args.privacy)


def _audit_logs(args: argparse.Namespace) -> list[Path] | None:
    """The logs named on the command line, or, by default, the configured log and every replica's
    beside it (`audit.jsonl`, `audit.<replica>.jsonl`, or what `{replica}` in the path makes)."""
    if args.path:
        paths = [Path(p) for p in args.path]
    else:
        cfg = _load(args.config)
        configured = cfg.audit_path()
        name = Path(os.environ.get("LOCALROUTE_AUDIT_PATH") or cfg.privacy.audit_path).name
        stem, suffix = Path(name).stem, Path(name).suffix
        patterns = [name.replace("{replica}", "*")] if "{replica}" in name else [name, f"{stem}.*{suffix}"]
        found = {p for pat in patterns for p in configured.parent.glob(pat) if p.is_file()}
        paths = sorted(found) or [configured]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        print(f"localroute: no audit log at {missing[0]}", file=sys.stderr)
        return None
    return paths


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from localroute.privacy.audit_set import verify_set

    paths = _audit_logs(args)
    if paths is None:
        return 2
    result = verify_set(paths)
    print(result.report())
    return 0 if result.ok else 1


def cmd_report(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from localroute.observe.report import build, format_report
    from localroute.observe.stats import parse_since

    paths = _audit_logs(args)
    if paths is None:
        return 2
    now = datetime.now(UTC)
    try:
        since = parse_since(args.since, now) if args.since else None
    except ValueError as exc:
        print(f"localroute: --since: {exc}", file=sys.stderr)
        return 2
    summary = build(paths, since, now)
    print(json.dumps(summary, indent=2) if args.json else format_report(summary))
    return 0


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
        "--workers", type=int, default=1, choices=range(1, 65), metavar="N",
        help="gateway processes on the one port; the engines run once (docs/scale-out.md)",
    )  # fmt: skip
    s.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow binding a non-loopback address without [[keys]] (only behind another auth layer)",
    )
    s.set_defaults(func=cmd_serve)
    en = sub.add_parser("engine", help="serve one local rung on its own, for gateways on other hosts")
    en.add_argument("--config", help="path to models.toml")
    en.add_argument("--model", required=True, help="the rung to serve (a llama_cpp or vllm model)")
    en.add_argument("--listen", required=True, help="HOST:PORT to bind, e.g. 10.0.0.5:9000")
    en.add_argument("--token-env", help="variable with the shared secret (default LOCALROUTE_ENGINE_TOKEN)")
    en.add_argument("--token-file", help="file holding the shared secret (instead of the variable)")
    en.set_defaults(func=cmd_engine)
    pl = sub.add_parser("pull", help="download every model the config names")
    pl.add_argument("--config", help="path to models.toml")
    pl.add_argument("models", nargs="*", help="only these models (default: all)")
    pl.set_defaults(func=cmd_pull)
    it = sub.add_parser("init", help="propose a ladder for this box, measure it, write models.toml")
    it.add_argument("--config", help="models.toml to write (default: ./models.toml or $LOCALROUTE_CONFIG)")
    it.add_argument("--write", action="store_true", help="replace an existing file (default: show a diff)")
    it.add_argument("--no-measure", action="store_true", help="skip measuring (keeps a file's old figures)")
    it.add_argument("--budget", default="70%", help="memory for local models: '70%%' of RAM, '8GiB' ...")
    it.add_argument("--reps", type=int, default=3, help="measurement repetitions per model (median)")
    it.add_argument("--decode-tokens", type=int, default=64, help="tokens decoded per measurement")
    it.add_argument("--threads", type=int, help="llama.cpp threads per rung (default: physical cores, <= 8)")
    it.add_argument("--probe-questions", type=int, default=60, help="checked questions per rung for its "
                    "confidence threshold (0: keep the default thresholds)")  # fmt: skip
    it.add_argument("--probe-minutes", type=float, default=5.0, help="time limit of those per rung")
    it.set_defaults(func=cmd_init)
    st = sub.add_parser("status", help="show a running gateway's models, memory and GPUs (its /health)")
    st.add_argument("--url", default="http://127.0.0.1:8000", help="gateway address (default: %(default)s)")
    st.add_argument("--json", action="store_true", help="print /health as JSON")
    st.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    st.set_defaults(func=cmd_status)
    au = sub.add_parser("audit", help="work with the hash-chained audit log")
    au_sub = au.add_subparsers(dest="audit_command", required=True)
    av = au_sub.add_parser("verify", help="check the chain; count private records that touched a remote rung")
    av.add_argument("path", nargs="*", help="audit logs, one per replica (default: privacy.audit_path's)")
    av.add_argument("--config", help="path to models.toml")
    av.set_defaults(func=cmd_audit_verify)
    rp = sub.add_parser("report", help="requests, local share, cost and savings, from the audit log")
    rp.add_argument("path", nargs="*", help="audit logs, merged (default: privacy.audit_path's)")
    rp.add_argument("--config", help="path to models.toml")
    rp.add_argument("--since", help="ISO-8601 time, or a span back from now: 15m, 1h, 7d")
    rp.add_argument("--json", action="store_true", help="print the same JSON as /v1/localroute/stats")
    rp.set_defaults(func=cmd_report)
    ex = sub.add_parser("explain", help="show the routing decision for requests, offline")
    ex.add_argument("--config", help="path to models.toml")
    ex.add_argument("--jsonl", action="store_true", help="one request per line")
    ex.add_argument("--scorer", help="a `localroute train` artifact to score with (overrides the config)")
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
    ev.add_argument("--scorer", help="score with this learned artifact, beside the heuristic")
    ev.set_defaults(func=cmd_eval)
    tr = sub.add_parser("train", help="fit a learned scorer; report leave-groups-out APGR")
    tr.add_argument("--data", nargs="+", help="CSV or JSONL files, or folders of them")
    tr.add_argument("--weak", help="weak model's boolean column (a,b: first one present)")
    tr.add_argument("--strong", help="strong model's boolean column (a,b: first one present)")
    tr.add_argument(
        "--from-traffic", action="store_true", help="fit on the feedback store's labelled requests"
    )
    tr.add_argument("--out", required=True, help="where to write the artifact (.json)")
    tr.add_argument("--config", help="path to models.toml (the heuristic shown beside the scorer)")
    tr.add_argument("--folds", type=int, default=8, help="leave-groups-out folds (default 8)")
    tr.add_argument("--no-cv", action="store_true", help="fit only, no cross-validation report")
    tr.add_argument("--json", action="store_true", help="print one JSON object")
    tr.set_defaults(func=cmd_train)
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
