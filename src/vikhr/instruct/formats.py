"""Instruction and preference data in the common formats, normalised to chat messages.

Formats (`detect_format` picks one per record; a source may also name it):
- `alpaca`: {instruction, input?, output} (also `system`).
- `sharegpt`: {conversations: [{from: system|human|user|gpt|assistant, value}]} (also `messages` in that shape).
- `messages`: OpenAI chat {messages: [{role, content}]}.
- `preference`: {prompt?, chosen, rejected} where chosen/rejected are strings, message lists, or HH-RLHF
  transcripts ("\\n\\nHuman: ...\\n\\nAssistant: ..."); as instruction data the chosen reply is the answer.
- `seed`: the rulm seed-task form {instruction, instances: [{input, output}]} (one example per instance).

Inputs: .jsonl / .json (a list of records) / .parquet files, or a folder written by `datasets.save_to_disk`.

Nothing is dropped silently: every record that cannot become an example comes back as a `Rejected` with its
reason (`bad_record`, `no_assistant`, `empty_answer`, `not_alternating`, `unknown_format`, `identical_pair`, ...).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vikhr.corpus.readers import InputError
from vikhr.log import get_logger

log = get_logger(__name__)

Messages = list[dict[str, str]]
"""A conversation: [{"role": "system"|"user"|"assistant", "content": str}, ...]."""

FORMATS = ("alpaca", "sharegpt", "messages", "preference", "seed")
ROLES = ("system", "user", "assistant")
ROLE_MAP = {
    "system": "system", "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "chatgpt": "assistant", "bing": "assistant",
}  # fmt: skip
"""Role names of common ShareGPT dumps (lower-cased) -> chat roles; any other name is kept and is a `bad_role`."""
_TURN = re.compile(r"(?:\A\s*|\n\n)(Human|Assistant):")
"""An HH-RLHF turn marker: "Human:" / "Assistant:" at the start or after a blank line."""
BATCH_ROWS = 1024


@dataclass
class Example:
    """One instruction conversation: optional system message, then user/assistant turns alternating, ending with an
    assistant reply."""

    messages: Messages
    source: str
    """The source name it came from (the config's key, or the file stem)."""
    id: str
    """Stable id: `<source>:<record index>` (`:<instance>` appended for seed tasks with several instances)."""
    where: str
    """`file:line` (jsonl) or `file:row` (parquet / json / datasets) for error messages and reports."""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The user turns joined (what deduplication compares)."""
        return "\n\n".join(m["content"] for m in self.messages if m["role"] == "user")


@dataclass
class Pair:
    """One preference pair: the conversation before the final reply, the preferred and the other reply."""

    prompt: Messages
    """Messages before the reply (may be empty when the data has no explicit prompt)."""
    chosen: str
    rejected: str
    source: str
    id: str
    where: str


@dataclass
class Rejected:
    """A record that did not become an example or a pair, with why."""

    source: str
    id: str
    where: str
    reason: str
    detail: str
    record: Any = None
    """The raw record (or the raw line for unparseable JSON), so nothing is lost."""

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "id": self.id, "where": self.where, "reason": self.reason,
                "detail": self.detail, "record": self.record}  # fmt: skip


class _Unusable(Exception):
    """Raised inside the builders: a record that cannot become an example or a pair, with why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass
class BadLine:
    """A .jsonl line (or .json list item) that is not a JSON object: the raw text and what is wrong with it."""

    raw: str
    error: str


# ------------------------------------------------------------------------------------------------- reading


def read_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """(index from 0, where, record) for every record of a .jsonl / .json / .parquet file or a `save_to_disk` folder.

    A .jsonl line that is not a JSON object comes back as a `BadLine`; blank lines are skipped. A missing path, an
    unsupported suffix, bytes that are not UTF-8 or an unreadable file raise `InputError` naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    if path.is_dir():
        rows = _dataset_rows(path)
    else:
        readers = {".jsonl": _jsonl_rows, ".json": _json_rows, ".parquet": _parquet_rows}
        read = readers.get(path.suffix.lower())
        if read is None:
            expected = ", ".join(readers)
            raise InputError(
                f"{path}: unsupported input type {path.suffix!r} (expected {expected} or a folder)"
            )
        rows = read(path)
    for index, (where, record) in enumerate(rows):
        yield index, where, record


def _decode(data: bytes, path: Path, line: int | None = None, offset: int = 0) -> str:
    """UTF-8 text of `data` (read from `path` at byte `offset`); an InputError naming the line and byte if not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = line or data[: e.start].count(b"\n") + 1
        msg = (
            f"{path}:{line}: not valid UTF-8 (byte {offset + e.start}: {e.reason}); convert the file to UTF-8"
        )
        raise InputError(msg) from e


def _json_object(text: str) -> Any:
    """The JSON object in `text`, or a `BadLine` saying why it is not one."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return BadLine(text, f"invalid JSON ({e.msg} at column {e.colno})")
    return obj if isinstance(obj, dict) else BadLine(text, f"expected a JSON object, got {_kind(obj)}")


def _jsonl_rows(path: Path) -> Iterator[tuple[str, Any]]:
    offset = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            text = _decode(raw, path, lineno, offset)
            offset += len(raw)
            if lineno == 1:
                text = text.removeprefix("\ufeff")
            if text.strip():
                yield f"{path}:{lineno}", _json_object(text.rstrip("\r\n"))


def _json_rows(path: Path) -> Iterator[tuple[str, Any]]:
    text = _decode(path.read_bytes(), path).removeprefix("\ufeff")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON ({e.msg} at column {e.colno})") from e
    if not isinstance(data, list):
        raise InputError(f"{path}: expected a JSON list of records, got {_kind(data)}")
    for row, obj in enumerate(data, 1):
        if not isinstance(obj, dict):
            obj = BadLine(json.dumps(obj, ensure_ascii=False), f"expected a JSON object, got {_kind(obj)}")
        yield f"{path}:row {row}", obj


def _arrow_rows(batches: Iterable[Any], where: Path) -> Iterator[tuple[str, Any]]:
    row = 0
    for batch in batches:
        for record in batch.to_pylist():
            row += 1
            yield f"{where}:row {row}", record


def _parquet_rows(path: Path) -> Iterator[tuple[str, Any]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise InputError(f"{path}: cannot read as parquet ({e})") from e
    yield from _arrow_rows(pf.iter_batches(batch_size=BATCH_ROWS), path)


def _dataset_rows(path: Path) -> Iterator[tuple[str, Any]]:
    from datasets import DatasetDict, load_from_disk

    try:
        ds = load_from_disk(str(path))
    except FileNotFoundError as e:
        raise InputError(f"{path}: not a folder written by datasets' save_to_disk ({e})") from e
    where = path
    if isinstance(ds, DatasetDict):
        if "train" not in ds:
            raise InputError(f"{path}: DatasetDict has no 'train' split (splits: {', '.join(ds)})")
        ds, where = ds["train"], path / "train"
    yield from _arrow_rows(ds.with_format("arrow").iter(batch_size=BATCH_ROWS), where)


# ----------------------------------------------------------------------------------------- formats and checks


def _from_value(items: Any) -> bool:
    """True for a list of messages in ShareGPT's {from, value} shape."""
    return isinstance(items, list) and bool(items) and isinstance(items[0], dict) and "from" in items[0]


_SHAPES: dict[str, Callable[[dict], bool]] = {
    "seed": lambda r: "instruction" in r and "instances" in r,
    "alpaca": lambda r: "instruction" in r and "output" in r,
    "preference": lambda r: "chosen" in r and "rejected" in r,
    "sharegpt": lambda r: isinstance(r.get("conversations"), list) or _from_value(r.get("messages")),
    "messages": lambda r: isinstance(r.get("messages"), list) and not _from_value(r["messages"]),
}
"""What a record of each format has, in the order `detect_format` tries them (seed before alpaca)."""

_NEEDS = {
    "seed": "instruction, instances", "alpaca": "instruction, output", "preference": "chosen, rejected",
    "sharegpt": "conversations (or messages of {from, value})", "messages": "messages of {role, content}",
}  # fmt: skip


def detect_format(record: dict) -> str | None:
    """The format of one record by the keys it has (see the module docstring), or None when none fits."""
    if not isinstance(record, dict):
        return None
    return next((fmt for fmt, looks in _SHAPES.items() if looks(record)), None)


def parse_transcript(text: str) -> Messages:
    """User/assistant messages of an HH-RLHF transcript ("\\n\\nHuman: ...\\n\\nAssistant: ..."), contents stripped;
    [] when the text is not one (no markers, or text before the first)."""
    parts = _TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return []
    return [
        {"role": "user" if who == "Human" else "assistant", "content": body.strip()}
        for who, body in zip(parts[1::2], parts[2::2], strict=True)
    ]


def _roles(messages: Messages, most: int = 12) -> str:
    roles = [m["role"] for m in messages]
    more = f", ... ({len(roles)} in all)" if len(roles) > most else ""
    return ", ".join(roles[:most]) + more


def check_messages(messages: Messages) -> tuple[str, str] | None:
    """(reason, detail) when a conversation cannot be an SFT example, else None.

    Reasons, in the order checked: `bad_role`, `no_assistant`, `empty_answer`, `empty_prompt`, `not_alternating`
    (after an optional system message: user, assistant, user, ..., ending with assistant).
    """
    for i, m in enumerate(messages, 1):
        if m["role"] not in ROLES:
            return "bad_role", f"message {i} has role {m['role']!r} (expected {', '.join(ROLES)})"
        if m["role"] == "system" and i > 1:
            return "bad_role", f"message {i} is a system message; only the first may be"
    if not any(m["role"] == "assistant" for m in messages):
        return "no_assistant", f"no assistant message (roles: {_roles(messages) or 'none'})"
    for role, reason in (("assistant", "empty_answer"), ("user", "empty_prompt")):
        for i, m in enumerate(messages, 1):
            if m["role"] == role and not m["content"].strip():
                return reason, f"message {i} ({role}) is empty"
    start = 1 if messages[0]["role"] == "system" else 0
    for i in range(start, len(messages)):
        expected = "user" if (i - start) % 2 == 0 else "assistant"
        if messages[i]["role"] != expected:
            detail = (
                f"message {i + 1} is {messages[i]['role']}, expected {expected} (roles: {_roles(messages)})"
            )
            return "not_alternating", detail
    if messages[-1]["role"] != "assistant":
        return "not_alternating", f"ends with a {messages[-1]['role']} message (roles: {_roles(messages)})"
    return None


# ----------------------------------------------------------------------------------------- building records


def _kind(value: Any) -> str:
    return "missing or null" if value is None else type(value).__name__


def _text(value: Any, name: str) -> str:
    """`value` when it is a string, else `bad_record` naming the field."""
    if not isinstance(value, str):
        raise _Unusable("bad_record", f"field {name!r} is {_kind(value)}, expected a string")
    return value


def _optional(record: dict, key: str, name: str = "") -> str:
    """An optional string field ('' when absent or null)."""
    value = record.get(key)
    return "" if value is None else _text(value, name or key)


def _first(item: dict, *keys: str) -> Any:
    return next((item[k] for k in keys if item.get(k) is not None), None)


def _turns(items: Any, name: str) -> Messages:
    """Messages from a list of {role, content} or {from, value}; ShareGPT role names mapped, empty system dropped."""
    if not isinstance(items, list):
        raise _Unusable("bad_record", f"field {name!r} is {_kind(items)}, expected a list of messages")
    out: Messages = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise _Unusable("bad_record", f"field '{name}[{i}]' is {_kind(item)}, expected a message object")
        role = _text(_first(item, "role", "from"), f"{name}[{i}].role")
        content = _text(_first(item, "content", "value"), f"{name}[{i}].content")
        role = ROLE_MAP.get(role.strip().lower(), role)
        if role != "system" or content.strip():
            out.append({"role": role, "content": content})
    return out


def _alpaca_messages(instruction: str, inp: str, output: str, system: str) -> Messages:
    user = f"{instruction}\n\n{inp}" if inp.strip() else instruction
    head = [{"role": "system", "content": system}] if system.strip() else []
    return head + [{"role": "user", "content": user}, {"role": "assistant", "content": output}]


def _alpaca(record: dict) -> list[tuple[Messages, dict]]:
    instruction, inp = _text(record.get("instruction"), "instruction"), _optional(record, "input")
    output, system = _text(record.get("output"), "output"), _optional(record, "system")
    return [(_alpaca_messages(instruction, inp, output, system), {})]


def _seed(record: dict) -> list[tuple[Messages, dict]]:
    instruction, system = _text(record.get("instruction"), "instruction"), _optional(record, "system")
    instances = record.get("instances")
    if not isinstance(instances, list) or not instances:
        what = "an empty list" if isinstance(instances, list) else _kind(instances)
        raise _Unusable("bad_record", f"field 'instances' is {what}, expected a list of {{input, output}}")
    meta = {k: record[k] for k in ("name", "orig_instruction") if record.get(k) is not None}
    out = []
    for k, inst in enumerate(instances):
        if not isinstance(inst, dict):
            raise _Unusable("bad_record", f"field 'instances[{k}]' is {_kind(inst)}, expected an object")
        inp = _optional(inst, "input", f"instances[{k}].input")
        output = _text(inst.get("output"), f"instances[{k}].output")
        out.append((_alpaca_messages(instruction, inp, output, system), dict(meta)))
    return out


def _conversation(record: dict) -> list[tuple[Messages, dict]]:
    key = "conversations" if isinstance(record.get("conversations"), list) else "messages"
    messages = _turns(record.get(key), key)
    system = _optional(record, "system")
    if system.strip() and not (messages and messages[0]["role"] == "system"):
        messages.insert(0, {"role": "system", "content": system})
    return [(messages, {})]


def _record_prompt(record: dict) -> Messages:
    """The `prompt` field as messages: a message list, an HH transcript (a trailing empty "Assistant:" dropped) or
    plain text (one user message); [] when absent."""
    prompt = record.get("prompt")
    if prompt is None:
        return []
    if not isinstance(prompt, str):
        return _turns(prompt, "prompt")
    turns = parse_transcript(prompt)
    if turns and turns[-1]["role"] == "assistant" and not turns[-1]["content"]:
        turns.pop()
    return turns or [{"role": "user", "content": prompt}]


def _side(record: dict, key: str) -> tuple[Messages, str]:
    """(prompt, reply) of the `chosen` or `rejected` side of a preference record.

    A plain string is the reply to the `prompt` field; an HH transcript or a message list ends with the reply and
    carries its own prompt (the `prompt` field is used only when the list holds the reply alone).
    """
    value = record.get(key)
    if isinstance(value, str):
        turns = parse_transcript(value)
        if not turns:
            return _record_prompt(record), value
    elif isinstance(value, list):
        turns = _turns(value, key)
    else:
        raise _Unusable(
            "bad_record", f"field {key!r} is {_kind(value)}, expected a string or a list of messages"
        )
    if not any(m["role"] == "assistant" for m in turns):
        raise _Unusable("no_assistant", f"{key}: no assistant reply (roles: {_roles(turns) or 'none'})")
    if turns[-1]["role"] != "assistant":
        raise _Unusable("not_alternating", f"{key}: ends with a {turns[-1]['role']} message, not the reply")
    return turns[:-1] or _record_prompt(record), turns[-1]["content"]


def _preference(record: dict) -> list[tuple[Messages, dict]]:
    prompt, reply = _side(record, "chosen")
    return [(prompt + [{"role": "assistant", "content": reply}], {})]


_BUILDERS: dict[str, Callable[[dict], list[tuple[Messages, dict]]]] = {
    "alpaca": _alpaca, "sharegpt": _conversation, "messages": _conversation, "preference": _preference,
    "seed": _seed,
}  # fmt: skip


def _resolve(record: Any, fmt: str) -> str:
    """The record's format: detected for `auto`, else `fmt` when the record has its keys (`bad_record` if not)."""
    if not isinstance(record, dict):
        raise _Unusable("bad_record", f"expected an object, got {_kind(record)}")
    keys = ", ".join(record) or "none"
    if fmt == "auto":
        found = detect_format(record)
        if found is None:
            raise _Unusable(
                "unknown_format", f"no known format fits the keys: {keys} (formats: {', '.join(FORMATS)})"
            )
        return found
    if not _SHAPES[fmt](record):
        raise _Unusable("bad_record", f"not a {fmt} record: needs {_NEEDS[fmt]}; has {keys}")
    return fmt


def record_examples(record: Any, fmt: str, source: str, index: int, where: str) -> list[Example] | Rejected:
    """The examples of one record (several for a seed task with several instances) or why it has none.

    `fmt` is one of FORMATS or `auto`. A seed task is rejected whole when any of its instances is unusable.
    """
    rid = f"{source}:{index}"
    try:
        fmt = _resolve(record, fmt)
        convs = _BUILDERS[fmt](record)
        for k, (messages, _) in enumerate(convs):
            if problem := check_messages(messages):
                reason, detail = problem
                raise _Unusable(reason, f"instance {k}: {detail}" if fmt == "seed" else detail)
    except _Unusable as e:
        return Rejected(source, rid, where, e.reason, e.detail, record)
    return [
        Example(messages, source, f"{rid}:{k}" if fmt == "seed" else rid, where, meta)
        for k, (messages, meta) in enumerate(convs)
    ]


def _prompt_difference(a: Messages, b: Messages) -> str:
    k = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    return f"chosen and rejected prompts differ at message {k + 1} ({len(a)} and {len(b)} messages)"


def record_pair(record: Any, fmt: str, source: str, index: int, where: str) -> Pair | Rejected:
    """The preference pair of one record (`fmt` = `preference` or `auto`), or why it is not one.

    Reasons: `prompt_mismatch` (the two sides have different prompts), `empty_answer`, `identical_pair`, the
    `check_messages` reasons for prompt + chosen reply, `bad_record` and `unknown_format`.
    """
    rid = f"{source}:{index}"
    try:
        found = _resolve(record, fmt)
        if found != "preference":
            raise _Unusable("bad_record", f"a {found} record, not a preference pair (needs chosen, rejected)")
        prompt, chosen = _side(record, "chosen")
        other, rejected = _side(record, "rejected")
        if prompt != other:
            raise _Unusable("prompt_mismatch", _prompt_difference(prompt, other))
        for name, reply in (("chosen", chosen), ("rejected", rejected)):
            if not reply.strip():
                raise _Unusable("empty_answer", f"the {name} reply is empty")
        if chosen.strip() == rejected.strip():
            raise _Unusable("identical_pair", "the chosen and rejected replies are the same")
        if prompt and (problem := check_messages(prompt + [{"role": "assistant", "content": chosen}])):
            raise _Unusable(*problem)
    except _Unusable as e:
        return Rejected(source, rid, where, e.reason, e.detail, record)
    return Pair(prompt, chosen, rejected, source, rid, where)


# ---------------------------------------------------------------------------------------------- whole inputs


def _read(
    path: Path, source: str | None, fmt: str, limit: int, build: Callable[..., Any], what: str
) -> tuple[list, list]:
    """Items and rejected records of the first `limit` records (all when 0); checks records = producing + rejected."""
    path = Path(path)
    source = source or path.stem
    kept: list[Any] = []
    rejected: list[Rejected] = []
    records = producing = 0
    for index, where, record in itertools.islice(read_records(path), limit or None):
        records += 1
        if isinstance(record, BadLine):
            out: Any = Rejected(source, f"{source}:{index}", where, "bad_record", record.error, record.raw)
        else:
            out = build(record, fmt, source, index, where)
        if isinstance(out, Rejected):
            rejected.append(out)
        else:
            producing += 1
            kept.extend(out if isinstance(out, list) else [out])
    if records == 0:
        raise InputError(f"{path}: no records")
    if producing + len(rejected) != records:
        raise RuntimeError(f"{path}: {records} records read but {producing} used + {len(rejected)} rejected")
    reasons = ", ".join(f"{r} {n}" for r, n in Counter(r.reason for r in rejected).most_common()) or "none"
    log.info(
        "%s: %d records -> %d %s from %d records, %d rejected (%s)",
        path, records, len(kept), what, producing, len(rejected), reasons,
    )  # fmt: skip
    return kept, rejected


def _check_fmt(fmt: str, allowed: Sequence[str]) -> None:
    if fmt != "auto" and fmt not in allowed:
        raise ValueError(f"unknown format {fmt!r} (expected auto or one of: {', '.join(allowed)})")


def read_examples(
    path: Path, source: str | None = None, fmt: str = "auto", limit: int = 0
) -> tuple[list[Example], list[Rejected]]:
    """Instruction examples of a file or `save_to_disk` folder, and every record that gave none, with why.

    `source` defaults to the file/folder stem; `fmt` is `auto` (detected per record) or one of FORMATS; `limit`
    reads the first N records only. An empty input is an InputError.
    """
    _check_fmt(fmt, FORMATS)
    return _read(path, source, fmt, limit, record_examples, "examples")


def read_pairs(
    path: Path, source: str | None = None, fmt: str = "auto", limit: int = 0
) -> tuple[list[Pair], list[Rejected]]:
    """Preference pairs of a file or `save_to_disk` folder, and every record that gave none, with why.

    Arguments as in `read_examples`; `fmt` is `auto` or `preference` (other records are rejected `bad_record`).
    """
    if fmt in FORMATS and fmt != "preference":
        raise ValueError(f"read_pairs reads preference records (fmt auto or preference), not {fmt!r}")
    _check_fmt(fmt, FORMATS)
    return _read(path, source, fmt, limit, record_pair, "pairs")
