"""`vikhr chat MODEL`: a terminal chat that streams the model's answer as it is generated.

Lines starting with `/` are commands: /reset, /system TEXT, /quit (Ctrl-D too), /help. Ctrl-C while the model is
answering stops that answer and keeps what was said so far. Reading from a pipe works the same (no prompts shown).
"""

from __future__ import annotations

import sys
from typing import TextIO

from vikhr.serve.engine import Delta, Engine, Failed, SamplingParams

HELP = "/reset clears the conversation · /system TEXT sets the system prompt (/system alone removes it) · /quit leaves"


def chat_loop(
    engine: Engine,
    params: SamplingParams,
    *,
    system: str | None = None,
    stdin: TextIO = sys.stdin,
    stdout: TextIO = sys.stdout,
    name: str = "model",
) -> int:
    """Read user turns from `stdin`, stream answers to `stdout`; returns the number of answered turns."""
    interactive = stdin.isatty()
    history: list[dict] = []
    turns = 0
    stdout.write(f"vikhr chat · {name} · {HELP}\n")
    while True:
        if interactive:
            stdout.write("\n> ")
            stdout.flush()
        line = stdin.readline()
        if not line:  # end of input
            break
        line = line.rstrip("\n")
        if not line.strip():
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/quit", "/exit", "/q"):
                break
            if cmd == "/reset":
                history.clear()
                stdout.write("[conversation cleared]\n")
            elif cmd == "/system":
                system = arg.strip() or None
                stdout.write(f"[system prompt {'set' if system else 'removed'}]\n")
            else:
                stdout.write(HELP + "\n")
            continue
        history.append({"role": "user", "content": line})
        answer = _answer(engine, params, _fit(engine, params, system, history), stdout)
        history.append({"role": "assistant", "content": answer})
        turns += 1
    return turns


def _fit(engine: Engine, params: SamplingParams, system: str | None, history: list[dict]) -> list[int]:
    """Prompt ids for the conversation, dropping the oldest turns while it does not fit the context."""
    head = [{"role": "system", "content": system}] if system else []
    while True:
        ids = engine.chat_ids(head + history)
        if len(ids) + params.max_tokens <= engine.context_length or len(history) <= 1:
            return ids
        del history[:2]  # the oldest user turn and its answer


def _answer(engine: Engine, params: SamplingParams, ids: list[int], stdout: TextIO) -> str:
    """Stream one answer; Ctrl-C stops it and keeps the part already shown."""
    if len(ids) + params.max_tokens > engine.context_length:
        stdout.write(f"[the message is too long for the model's context of {engine.context_length} tokens]\n")
        return ""
    req = engine.submit(ids, params)
    text = []
    try:
        for ev in req.stream():
            if isinstance(ev, Delta):
                text.append(ev.text)
                stdout.write(ev.text)
                stdout.flush()
            elif isinstance(ev, Failed):
                stdout.write(f"\n[error: {ev.message}]")
    except KeyboardInterrupt:
        req.cancel()
        stdout.write(" [stopped]")
    stdout.write("\n")
    stdout.flush()
    return "".join(text)
