"""Cascade Studio: Stability AI's open models on your own GPU, in one local web app.

Entry point only: parse the flags (each also readable from a ``STUDIO_<FLAG>`` environment
variable), build the Studio, build the UI from the tab modules, launch. Importing this module
loads no model and touches no GPU.
"""

from __future__ import annotations

import argparse
import importlib
import ipaddress
import logging
import os
import platform
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence

logger = logging.getLogger("cascade_studio")

DESCRIPTION = ("Stable Cascade, SD3.5, SDXL, Stable Video Diffusion, SV3D, StableLM and Stable Audio Open on "
               "your own GPU.")
ALL_TABS = ("image", "variation", "video", "orbit", "chat", "audio", "system")
#: Tabs this version ships; the others are named in the contract and arrive with later releases.
BUILT_TABS = ("image", "variation", "video", "orbit", "chat", "audio", "system")
TAB_TITLES = {"image": "Image", "variation": "Variation / img2img", "video": "Video",
              "orbit": "3D orbit", "chat": "Chat", "audio": "Audio", "system": "System"}
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")
#: Uploads above this are refused before they reach a handler (LAN users share one machine).
MAX_UPLOAD = "25mb"
AUTH_MESSAGE = "Cascade Studio: log in with the user and password from the console or --auth."


def _env_flag(environ: Mapping[str, str], name: str, parser: argparse.ArgumentParser) -> bool:
    value = environ.get(name, "").strip().lower()
    if value not in TRUE + FALSE:
        parser.error(f"environment variable {name}={value!r}: use 1/0, true/false, yes/no or on/off")
    return value in TRUE


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    """The command line of DESIGN.md; each default comes from ``STUDIO_<FLAG>`` when set."""
    parser = argparse.ArgumentParser(prog="app.py", description=DESCRIPTION)
    env = environ.get
    parser.add_argument("--preset", default=env("STUDIO_PRESET", "auto"),
                        help="lite, bf16, full, cpu, tiny, a name in presets/user/, or auto (default: from VRAM)")
    parser.add_argument("--listen", action="store_true", default=_env_flag(environ, "STUDIO_LISTEN", parser),
                        help="serve on 0.0.0.0 for the LAN; a login is required, even with --host 127.0.0.1 "
                             "(a proxy on this machine may pass others in), unless --no-auth")
    parser.add_argument("--host", default=env("STUDIO_HOST"), help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=int(env("STUDIO_PORT")) if env("STUDIO_PORT") else None,
                        help="port (default 7860 or the next free one)")
    parser.add_argument("--auth", action="append", metavar="USER:PASS",
                        default=[a for a in env("STUDIO_AUTH", "").split(",") if a],
                        help="login; may be repeated (env: comma-separated)")
    parser.add_argument("--auth-file", type=Path, default=env("STUDIO_AUTH_FILE"),
                        help="file with one user:pass per line")
    parser.add_argument("--no-auth", action="store_true", default=_env_flag(environ, "STUDIO_NO_AUTH", parser),
                        help="explicitly allow --listen without a login")
    parser.add_argument("--share", action="store_true", default=_env_flag(environ, "STUDIO_SHARE", parser),
                        help="create a Gradio share link (needs the internet)")
    parser.add_argument("--vram-budget", type=float, metavar="GB",
                        default=float(env("STUDIO_VRAM_BUDGET")) if env("STUDIO_VRAM_BUDGET") else None,
                        help="use at most this much device memory (also caps the CPU device)")
    parser.add_argument("--models-dir", type=Path, default=env("STUDIO_MODELS_DIR"),
                        help="hub cache folder (default: HF_HOME / HF_HUB_CACHE rules)")
    parser.add_argument("--outputs", type=Path, default=Path(env("STUDIO_OUTPUTS", "outputs")),
                        help="where results are saved (default ./outputs)")
    parser.add_argument("--offline", action="store_true", default=_env_flag(environ, "STUDIO_OFFLINE", parser),
                        help="never contact the hub (on automatically with --preset tiny)")
    parser.add_argument("--tabs", default=env("STUDIO_TABS", ",".join(ALL_TABS)),
                        help=f"comma-separated subset of {','.join(ALL_TABS)}")
    parser.add_argument("--cluster", default=env("STUDIO_CLUSTER"), metavar="local|ADDRESS",
                        help="run GPU work on Ray Serve replicas: local starts Ray here, ADDRESS joins a "
                             "running cluster (auto, ray://host:10001); needs requirements-cluster.txt")
    parser.add_argument("--replicas", type=int, default=int(env("STUDIO_REPLICAS")) if env("STUDIO_REPLICAS") else None,
                        help="replicas with --cluster (default: one per GPU; CPU-only: 1)")
    parser.add_argument("--mcp", action="store_true", default=_env_flag(environ, "STUDIO_MCP", parser),
                        help="also serve the endpoints as MCP tools at /gradio_api/mcp/ (behind the login)")
    parser.add_argument("--download-only", action="store_true",
                        help="download every file the preset needs, then exit")
    return parser


def parse_args(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> argparse.Namespace:
    """Parse and check the flags; errors name the flag and exit like argparse does."""
    environ = os.environ if environ is None else environ
    parser = build_parser(environ)
    args = parser.parse_args(argv)
    wanted = [t.strip() for t in args.tabs.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in ALL_TABS]
    if unknown or not wanted:
        parser.error(f"--tabs: unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(ALL_TABS)}")
    args.tabs = [t for t in ALL_TABS if t in wanted and t in BUILT_TABS]
    if not args.tabs:
        parser.error(f"--tabs: none of {','.join(wanted)} is in this version yet; available: {','.join(BUILT_TABS)}")
    if args.vram_budget is not None and args.vram_budget <= 0:
        parser.error(f"--vram-budget: must be a positive number of GB, got {args.vram_budget}")
    if args.replicas is not None and (args.replicas < 1 or not args.cluster):
        parser.error(f"--replicas: needs --cluster and a count of 1 or more, got {args.replicas}"
                     + ("" if args.cluster else " without --cluster"))
    args.auth_pairs = _auth_pairs(args, parser)
    if environ.get("SPACE_ID") and args.host is None:
        # On a Hugging Face Space the platform proxies the app and decides who may see it (public
        # or private Space); it must bind 0.0.0.0 and has no console to show a password.
        args.host, args.no_auth = "0.0.0.0", not args.auth_pairs
        from backends.runtime import zerogpu

        if args.preset == "auto" and zerogpu.enabled(environ):
            # ZeroGPU has no GPU at start-up to measure; zerogpu.SPACE_PRESET says why lite.
            args.preset = zerogpu.SPACE_PRESET
    if args.host is None:
        args.host = "0.0.0.0" if args.listen else "127.0.0.1"
    return args


def _auth_pairs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    lines = list(args.auth or [])
    if args.auth_file is not None:
        try:
            lines += [ln.strip() for ln in args.auth_file.read_text(encoding="utf-8").splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
        except OSError as error:
            parser.error(f"--auth-file: cannot read {args.auth_file}: {error.strerror}")
    pairs = []
    for line in lines:
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            parser.error(f"--auth: expected USER:PASS, got {line!r}")
        pairs.append((user, password))
    return pairs


def _exposed(host: str) -> bool:
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def resolve_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """Logins for launch(); never None when other machines can reach the app, unless --no-auth.

    Other machines reach it through a non-loopback address (``--listen``, ``--host``) or through a
    ``--share`` link, which is public on the internet: both get a generated password by default.
    ``--listen`` always promises a login, even with ``--host 127.0.0.1``: only this machine can
    connect then, but a reverse proxy on it may be what the LAN reaches, and the console says so.
    """
    if args.auth_pairs:
        return args.auth_pairs
    reachable = _exposed(args.host) or args.share or args.listen
    if args.listen and not args.no_auth and not (_exposed(args.host) or args.share):
        logger.warning("--listen with --host %s: only this machine can connect, but a login is asked for "
                       "anyway, since a proxy here may pass other machines in (--no-auth turns it off)",
                       args.host)
    if not reachable or args.no_auth:
        if args.no_auth and reachable:
            where = "through a public share link" if args.share else f"on {args.host}"
            logger.warning("serving %s WITHOUT a login (--no-auth): anyone who can reach it can use it", where)
        return None
    password = secrets.token_urlsafe(12)
    logger.warning("LAN access needs a login. User: studio  Password: %s  (set your own with --auth USER:PASS)",
                   password)
    return [("studio", password)]


def private_paths(args: argparse.Namespace) -> list[str]:
    """Folders gradio must never serve, even when ``--outputs`` is set to a folder above them.

    gradio serves every file under ``allowed_paths`` (the outputs), so ``--outputs ~`` would
    otherwise hand out the hub token (``~/.cache/huggingface/token``) and the model weights;
    ``blocked_paths`` wins over ``allowed_paths``. A folder that holds the outputs themselves is
    left out, or no result could be shown.
    """
    from huggingface_hub import constants

    outputs = Path(args.outputs).resolve()
    folders = [Path(constants.HF_HOME), Path(constants.HF_HUB_CACHE), Path(constants.HF_TOKEN_PATH).parent,
               cache_dir(args.models_dir)]
    if args.models_dir is not None:
        folders.append(Path(args.models_dir))
    blocked = {folder.resolve() for folder in folders}
    return sorted(str(folder) for folder in blocked if not outputs.is_relative_to(folder))


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses other devices can reach (loopback and link-local left out)."""
    import socket

    import psutil

    found = []
    for entries in psutil.net_if_addrs().values():
        for entry in entries:
            if entry.family == socket.AF_INET:
                address = ipaddress.ip_address(entry.address)
                if not (address.is_loopback or address.is_link_local):
                    found.append(entry.address)
    return sorted(set(found))


def cache_dir(models_dir: Path | None) -> Path:
    """Where tiny models and converted weights go: beside the hub cache."""
    if models_dir is not None:
        return Path(models_dir) / "cascade-studio"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cascade-studio"


def build_studio(args: argparse.Namespace) -> Any:
    """The Studio for ``args``; on ZeroGPU also ``spaces`` first and every model of the preset loaded.

    ZeroGPU (``backends.runtime.zerogpu``): ``spaces`` is imported before the Studio asks torch
    about CUDA, and the preset's families are loaded and placed on ``cuda`` here, at start-up, as
    the Spaces docs require, with the device planned from the GPU size rather than read.
    """
    from backends.families import FAMILIES
    from backends.runtime import zerogpu
    from backends.runtime.probe import parse_budget_gb
    from backends.runtime.studio import Studio, StudioConfig

    zero_gpu = zerogpu.enabled()
    if zero_gpu:
        zerogpu.import_spaces()
    config = StudioConfig(preset=args.preset, vram_budget_bytes=parse_budget_gb(args.vram_budget),
                          models_dir=args.models_dir, outputs_dir=args.outputs,
                          cache_dir=cache_dir(args.models_dir), offline=args.offline,
                          cluster=getattr(args, "cluster", None), replicas=getattr(args, "replicas", None),
                          zero_gpu=zero_gpu)
    studio = Studio(config, FAMILIES)
    if config.cluster:  # Ray is imported here only: the embedded app never loads it
        from backends.cluster.front import attach

        attach(studio)
    elif zero_gpu and not getattr(args, "download_only", False):
        studio.preload()
    return studio


def build_ui(studio: Any, tabs: Sequence[str] = BUILT_TABS) -> Any:
    """The whole app as ``gr.Blocks``: a header, one tab per module, and the API-only endpoints."""
    import gradio as gr

    from tabs import openai_chat, session, system
    from tabs.common import end_jobs_with_the_page

    preset = studio.preset
    with gr.Blocks(title="Cascade Studio") as demo:
        gr.Markdown(f"# Cascade Studio\n{DESCRIPTION} Preset **{preset.name}**: "
                    f"{preset.settings.description}. Stable Cascade weights are licensed for "
                    "non-commercial use.")
        handles: dict[str, dict[str, Any]] = {}
        built: dict[str, Any] = {}
        with gr.Tabs() as tab_set:
            for name in tabs:
                with gr.Tab(TAB_TITLES[name], id=name) as built[name]:
                    handles[name] = importlib.import_module(f"tabs.{name}").build(studio) or {}
        _wire_send_to(handles, tab_set)
        system.register_api(studio)
        if "chat" in tabs:  # the queued job behind /v1/chat/completions (tabs/openai_routes.py)
            openai_chat.register(studio)
        end_jobs_with_the_page(studio, demo)
        session.remember(demo, tab_set, built)
    return demo


def _wire_send_to(handles: dict[str, dict[str, Any]], tab_set: Any) -> None:
    """Add "Send to …" buttons under each picture result for each tab that takes a picture.

    A tab with results hands ``app.py`` a ``send_row`` and its ``selected_image`` (Image,
    Variation); a tab that takes a picture hands its ``image`` input (Variation, Video, 3D
    orbit). Where both tabs have a ``prompt``, it travels with the picture. Tabs never import
    each other; ``app.py`` connects them.
    """
    import gradio as gr

    for origin, source in handles.items():
        if "send_row" not in source or "selected_image" not in source:
            continue
        for name, target in handles.items():
            if "image" not in target:
                continue
            carry = name != origin and "prompt" in source and "prompt" in target
            inputs = [source["selected_image"], *([source["prompt"]] if carry else [])]
            outputs = [target["image"], tab_set, *([target["prompt"]] if carry else [])]

            def send(path: str | None, *text: Any, name: str = name) -> tuple[Any, ...]:
                if not path:
                    gr.Warning(f"Send to {TAB_TITLES[name]}: there is no result to send yet. Generate one "
                               "first (or click a picture in the result).")
                    return (gr.skip(),) * (2 + len(text))
                return (path, gr.Tabs(selected=name), *text)

            # The Image tab's buttons keep their first ids (send-to-<tab>); others name their tab.
            elem_id = f"send-to-{name}" if origin == "image" else f"{origin}-send-to-{name}"
            with source["send_row"]:
                button = gr.Button(f"Send to {TAB_TITLES[name]}", size="sm", elem_id=elem_id)
            # Queued (in a group of its own, never behind the GPU): gradio drops gr.Warning from
            # events outside the queue, and the no-result notice is the point.
            button.click(send, inputs, outputs, api_visibility="private", concurrency_limit=None,
                         concurrency_id="send-to", show_progress="hidden")


def launch(args: argparse.Namespace, prevent_thread_lock: bool = False,
           studio: Any | None = None) -> tuple[Any, str]:
    """Build and start the app; returns the Blocks and the local URL.

    ``studio`` lets tests keep the Studio they serve, to arm faults or count loads; the app
    itself always builds its own from ``args``.
    """
    from starlette.middleware import Middleware

    from tabs import keys, mcp, queue_wait, web_guard
    from tabs.common import widen_gpu_queue
    from tabs.openai_routes import OpenAIRoutes

    studio = studio if studio is not None else build_studio(args)
    demo = build_ui(studio, args.tabs)
    demo.queue(default_concurrency_limit=4)
    widen_gpu_queue(demo, studio.gpu_slots)  # --cluster: one GPU job per replica at once
    auth = resolve_auth(args)
    # Login on every route, a failed-login throttle, named missing API inputs (tabs/web_guard.py);
    # then the page's queue-wait route and the OpenAI routes, behind the login like every other.
    guards = [*web_guard.middleware(demo, AUTH_MESSAGE, on_cancel=studio.stop_job),
              queue_wait.middleware(studio.queue_wait)]
    if "chat" in args.tabs:
        guards.append(Middleware(OpenAIRoutes, studio=studio, blocks=demo))
    try:
        _, local_url, share_url = demo.launch(
            server_name=args.host, server_port=args.port, auth=auth, share=args.share,
            allowed_paths=[str(Path(args.outputs).resolve())], blocked_paths=private_paths(args),
            max_file_size=MAX_UPLOAD, mcp_server=args.mcp,
            prevent_thread_lock=True, quiet=True, auth_message=AUTH_MESSAGE, app_kwargs={"middleware": guards},
            js=keys.SHORTCUTS_JS)  # Ctrl+Enter generates, Esc stops (tabs/keys.py)
    except Exception:
        # gradio 6.31 checks the page after its server started (``networking.url_ok``) and raises
        # when that check fails, leaving the server listening on the port: close it.
        demo.close()
        raise
    mcp.install(demo)  # --mcp: gradio 6.31's MCP gaps (tabs/mcp.py); nothing without the flag
    logger.info("Cascade Studio is running at %s%s", local_url, f" (share: {share_url})" if share_url else "")
    if "chat" in args.tabs:
        logger.info("OpenAI-compatible chat at %sv1 (api_key: any without a login, else USER:PASS)", local_url)
    if _exposed(args.host):
        port = demo.server_port
        addresses = lan_addresses() if args.host == "0.0.0.0" else [args.host]
        for address in addresses:
            logger.info("On your network: http://%s:%s/", address, port)
        if platform.system() == "Windows":
            logger.info("Windows may ask whether Python may accept connections: allow it for private "
                        "networks, or other devices cannot connect.")
    if not prevent_thread_lock:
        try:
            demo.block_thread()
        finally:
            studio.close()
    return demo, local_url


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point."""
    logging.basicConfig(level=os.environ.get("STUDIO_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Gradio health check
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    args = parse_args(argv)
    if args.download_only:
        raise SystemExit(download_only(args))
    launch(args)


def download_only(args: argparse.Namespace) -> int:
    """``--download-only``: fetch the preset's files with console progress; 0 on success."""
    from backends.runtime.errors import StudioError

    try:
        studio = build_studio(args)
        fetched = studio.download_all()
    except StudioError as error:
        logger.error("%s", error)
        return 1
    logger.info("preset %s is ready: %.2f GB downloaded, nothing else missing", studio.preset.name,
                fetched / 1e9)
    return 0


if __name__ == "__main__":
    main()
