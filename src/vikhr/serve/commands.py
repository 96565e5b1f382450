"""The `vikhr serve` and `vikhr chat` command lines."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from vikhr.log import get_logger, setup_logging

log = get_logger(__name__)

API_KEY_ENV = "VIKHR_SERVE_API_KEY"


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "model", help="model folder, alias (smollm2-135m-instruct) or hub id; a run dir's stage output works"
    )
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="weights dtype (auto: vikhr.precision.compute_dtype: bfloat16 where the device computes "
                        "it natively, a recent GPU or a CPU with AVX512-BF16/AMX, else float32; "
                        "$VIKHR_COMPUTE_DTYPE overrides)")  # fmt: skip
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    p.add_argument("--max-model-len", type=int, help="cap the context length (default: the model's)")
    p.add_argument("--log-level", default="INFO")


def _sampling_args(p: argparse.ArgumentParser, temperature: float) -> None:
    p.add_argument("--temperature", type=float, default=temperature)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--max-tokens", type=int, default=512, help="longest answer, in tokens")
    p.add_argument("--seed", type=int, help="makes sampling reproducible")


def add_commands(sub) -> None:
    """Register `serve` and `chat` on the main parser's subparsers."""
    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server (chat/completions, completions, models)")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    p.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed when ready)")
    p.add_argument(
        "--served-model-name", help="the `model` clients send (default: the MODEL argument's name)"
    )
    p.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY'; better set ${API_KEY_ENV}=KEY instead, which keeps the key "
        "out of the process list",
    )
    p.add_argument("--max-batch", type=int, default=16, help="sequences decoded together")
    p.add_argument("--max-pending", type=int, default=256, help="waiting requests before answering 429")
    p.add_argument("--max-tokens-limit", type=int, default=4096, help="largest max_tokens a request may ask")
    p.add_argument("--default-max-tokens", type=int, default=512, help="max_tokens when a request gives none")
    p.add_argument("--max-n", type=int, default=8, help="largest n (choices per prompt)")
    p.add_argument("--max-body-mb", type=float, default=4.0, help="largest request body")
    p.add_argument(
        "--drain", type=float, default=10.0, help="seconds running requests get to finish on shutdown"
    )
    p.add_argument(
        "--timeout-read", type=float, default=30.0,
        help="seconds a client gets to send a request's headers, and then its body (else 408 and closed)",
    )  # fmt: skip
    p.add_argument(
        "--timeout-keep-alive",
        type=float,
        default=5.0,
        help="seconds an idle keep-alive connection stays open",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("chat", help="chat with a model in the terminal, answers streamed")
    _model_args(p)
    p.add_argument("--system", help="system prompt")
    _sampling_args(p, temperature=0.7)
    p.set_defaults(func=cmd_chat)


def _engine(args, **kwargs):
    from vikhr.serve.engine import Engine

    log.info("loading %s", args.model)
    return Engine.load(
        args.model, dtype=args.dtype, device=args.device, context_length=args.max_model_len, **kwargs
    )


def _name(model: str) -> str:
    path = Path(model).expanduser()
    if path.is_dir():
        # runs/demo/transplant/model -> "transplant-model"; a plain folder -> its name
        return (
            path.resolve().name if path.resolve().name != "model" else f"{path.resolve().parent.name}-model"
        )
    return model


def cmd_serve(args) -> int:
    from vikhr.serve.protocol import Limits
    from vikhr.serve.server import App, serve

    setup_logging(args.log_level)
    key = args.api_key or os.environ.get(API_KEY_ENV) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        log.warning(
            "serving on %s without an API key: anyone who can reach this port can use the model", args.host
        )
    limits = Limits(
        max_tokens=args.max_tokens_limit, default_max_tokens=args.default_max_tokens, max_n=args.max_n,
        max_body_bytes=int(args.max_body_mb * (1 << 20)),
    )  # fmt: skip
    engine = _engine(args, max_batch=args.max_batch, max_pending=args.max_pending)
    app = App(
        engine, args.served_model_name or _name(args.model), key, limits, read_timeout_s=args.timeout_read
    )

    def ready(url: str) -> None:
        sys.stderr.write(f"vikhr serve: model {app.model_name} ready at {url} (Ctrl-C stops)\n")
        sys.stderr.flush()

    serve(
        app,
        args.host,
        args.port,
        drain_s=args.drain,
        timeout_keep_alive=args.timeout_keep_alive,
        on_ready=ready,
    )
    return 0


def cmd_chat(args) -> int:
    from transformers.utils import logging as hf_logging

    from vikhr.serve.chat import chat_loop
    from vikhr.serve.engine import SamplingParams

    setup_logging(args.log_level if args.log_level != "INFO" else "WARNING")
    hf_logging.disable_progress_bar()  # no weight-loading bar in the middle of a conversation
    engine = _engine(args, max_batch=1).start()
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, top_p=args.top_p, seed=args.seed
    )
    try:
        chat_loop(engine, params, system=args.system, name=_name(args.model))
    except KeyboardInterrupt:
        sys.stdout.write("\n")
    finally:
        engine.stop(0)
    return 0
