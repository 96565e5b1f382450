"""The model card of a run's final model: `README.md` in the model folder, Hugging Face style.

YAML front matter (between `---` lines) says what the hub and tools read: `language` (the target language and
English), `base_model` (the source model's hub id when one is known: a hub id as given, the alias
`smollm2-135m-instruct` -> HuggingFaceTB/SmolLM2-135M-Instruct), `license` (inherited from the base: its README's
front matter or LICENSE file, a known base's licence, else `other` with a line saying it is unknown), `datasets`
(the run's text and instruction sources), `pipeline_tag: text-generation` and `tags`. The body says what was done,
the run's numbers for every evaluated model, the data and their licences, how to use the model (transformers and
`vikhr chat`) and its limitations, all from the data `vikhr.report.run.collect` read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from vikhr.config import Config, resolve_path
from vikhr.log import get_logger
from vikhr.report.run import MODEL_LABELS, fmt, table

log = get_logger(__name__)

KNOWN_BASES: dict[str, dict[str, str]] = {
    "smollm2-135m-instruct": {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
}
"""Aliases (`vikhr.models.ALIASES`) -> the hub id they are a copy of and its licence."""
KNOWN_LICENSES: dict[str, str] = {
    "huggingfacetb/smollm2-135m-instruct": "apache-2.0",
    "huggingfacetb/smollm2-135m": "apache-2.0",
    "mistralai/mistral-7b-v0.1": "apache-2.0",
}
"""Hub ids (lower case) whose licence is known without the hub (no network is used for the card)."""
BUNDLED: dict[str, tuple[str, str, str]] = {
    "bundled:ru": ("RusLit (Chekhov)", "Anton Chekhov's prose from the RusLit collection", "public domain"),
    "bundled:en": ("Project Gutenberg (English)", "English translations of Dostoevsky's *Notes from Underground* "
                   "(#600) and Lermontov's *A Hero of Our Time* (#913)", "public domain in the USA"),
    "bundled:instruct/ru_seed_tasks.jsonl": ("IlyaGusev/rulm seed tasks", "137 Russian self-instruct seed tasks of "
                                             "the Saiga author's rulm repository", "apache-2.0"),
    "bundled:instruct/hh_rlhf_harmless_sample.jsonl": ("Anthropic/hh-rlhf", "400 preference pairs of HH-RLHF's "
                                                       "harmless-base test split", "mit"),
}  # fmt: skip
"""The package's bundled data (src/vikhr/data/README.md): name for the front matter, description, licence."""
LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt")
_HUB_ID = re.compile(r"^[A-Za-z0-9_][\w.-]*/[A-Za-z0-9_][\w.-]*$")


def front_matter(text: str) -> dict:
    """The YAML front matter of a Markdown file (between a first `---` line and the next); {} when there is none.
    Raises ValueError on front matter that is not a YAML mapping."""
    lines = text.lstrip("\ufeff").split("\n")
    if not lines or lines[0].strip() != "---":
        return {}
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
    except StopIteration:
        return {}
    data = yaml.safe_load("\n".join(lines[1:end])) or {}
    if not isinstance(data, dict):
        raise ValueError("front matter is not a YAML mapping")
    return data


def folder_license(folder: Path) -> tuple[str | None, str]:
    """(licence id, where it was read) from a model folder's README front matter or LICENSE file; None when
    neither says."""
    readme = folder / "README.md"
    if readme.is_file():
        try:
            lic = front_matter(readme.read_text(encoding="utf-8")).get("license")
        except (ValueError, yaml.YAMLError, UnicodeDecodeError) as e:
            log.warning("model card: %s: unreadable front matter (%s)", readme, e)
            lic = None
        if lic:
            return str(lic), f"the `license` of {readme}"
    for name in LICENSE_FILES:
        f = folder / name
        if f.is_file():
            head = f.read_text(encoding="utf-8", errors="replace")[:4000]
            if "Apache License" in head and "2.0" in head:
                return "apache-2.0", str(f)
            if "MIT License" in head or "Permission is hereby granted, free of charge" in head:
                return "mit", str(f)
            return "other", f"{f} (not a licence this card recognises: read it)"
    return None, ""


def _hub_cache_license(hub_id: str) -> tuple[str | None, str]:
    """The licence in a hub model's README when the Hugging Face cache already holds it (never downloads)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, ""
    try:
        path = try_to_load_from_cache(hub_id, "README.md")
    except Exception:  # a malformed id or cache: the licence is just unknown
        return None, ""
    if isinstance(path, str) and Path(path).is_file():
        try:
            lic = front_matter(Path(path).read_text(encoding="utf-8")).get("license")
        except (ValueError, yaml.YAMLError, UnicodeDecodeError):
            return None, ""
        if lic:
            return str(lic), f"the cached README of {hub_id}"
    return None, ""


def base_model(cfg: Config) -> dict[str, Any]:
    """What the card says about the source model: {spec, hub_id (None when unknown), license, license_from}."""
    spec = cfg.source_model or ""
    out: dict[str, Any] = {"spec": spec, "hub_id": None, "license": None, "license_from": ""}
    local = resolve_path(cfg, spec) if spec else None
    known = KNOWN_BASES.get(spec.strip().lower())
    if local is not None and local.is_dir():
        record = local / "vikhr_import.json"
        if record.is_file():
            try:
                known = KNOWN_BASES.get(
                    str(json.loads(record.read_text(encoding="utf-8")).get("alias", "")).lower()
                )
            except (OSError, json.JSONDecodeError) as e:
                log.warning("model card: %s: unreadable (%s)", record, e)
        out["license"], out["license_from"] = folder_license(local)
    if known:
        out["hub_id"] = known["hub_id"]
        if not out["license"]:
            out["license"], out["license_from"] = known["license"], f"the licence of {known['hub_id']}"
    elif _HUB_ID.match(spec) and not (local is not None and local.exists()):
        out["hub_id"] = spec
        if spec.lower() in KNOWN_LICENSES:
            out["license"], out["license_from"] = KNOWN_LICENSES[spec.lower()], f"the licence of {spec}"
        else:
            out["license"], out["license_from"] = _hub_cache_license(spec)
    if not out["license"]:
        out["license"], out["license_from"] = "other", ""
    return out


def data_sources(cfg: Config, data: dict) -> list[dict[str, str]]:
    """The run's data that went into the final model, one entry per input: role, spec, name, description,
    licence. Only stages that finished count."""
    status = {n: s["status"] for n, s in data["stages"].items()}
    entries: list[tuple[str, str]] = []
    if status["tokenizer"] == "done" or status["pretrain"] == "done" or status["corpus"] == "done":
        corpus = [p for paths in cfg.corpus.sources.values() for p in paths] if cfg.corpus.sources else []
        text = list(cfg.pretrain.data) or corpus or list(cfg.data.target)
        entries += [("target-language text", s) for s in text]
        if cfg.tokenizer.extra_share > 0 and status["tokenizer"] == "done":
            entries += [("second-language text (tokenizer)", s) for s in cfg.data.extra]
        if cfg.pretrain.replay_share > 0 and status["pretrain"] == "done":
            entries += [("replay text (pre-training)", s) for s in (cfg.pretrain.replay or cfg.data.extra)]
    if status["sft"] == "done" and cfg.sft.data:
        entries += [("instructions (sft.data)", s) for s in cfg.sft.data]
    elif status["instruct"] == "done":
        try:
            from vikhr.stages.instruct import instruct_sources

            sources = {name: list(src.path) for name, src in instruct_sources(cfg).items()}
        except Exception as e:  # a config the instruct stage would refuse: name what is configured
            log.warning("model card: instruction sources: %s", e)
            sources = {name: list(src.path) for name, src in cfg.instruct.sources.items()}
        entries += [(f"instructions ({name})", s) for name, paths in sources.items() for s in paths]
    if status["reward"] == "done":
        entries += [("preference pairs (reward model)", s) for s in cfg.reward.pairs]
    out, seen = [], set()
    for role, spec in entries:
        if (role, spec) in seen:
            continue
        seen.add((role, spec))
        name, desc, lic = BUNDLED.get(spec, (Path(spec.rstrip("/")).name or spec, "", ""))
        out.append({"role": role, "spec": spec, "name": name, "description": desc, "license": lic})
    return out


def _final_model_name(base: dict) -> str:
    short = (base["hub_id"] or base["spec"] or "model").rstrip("/").split("/")[-1]
    return short


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    cfg = folder / "tokenizer_config.json"
    try:
        return bool(cfg.is_file() and json.loads(cfg.read_text(encoding="utf-8")).get("chat_template"))
    except (OSError, json.JSONDecodeError):
        return False


def card(cfg: Config, data: dict, folder: Path) -> str:
    """The model card (README.md text) of the model in `folder`, from the collected run data."""
    base = base_model(cfg)
    sources = data_sources(cfg, data)
    stages = data["stages"]
    lang = cfg.language
    languages = list(dict.fromkeys([lang, "en"]))
    tags = ["vikhr", "vocabulary-adaptation"]
    tok_stats = ((data.get("tokenizer") or {}).get("stats")) or {}
    if tok_stats.get("mode"):
        tags.append(f"tokenizer-{tok_stats['mode']}")
    tags += [
        t for s, t in (("pretrain", "continued-pretraining"), ("sft", "sft")) if stages[s]["status"] == "done"
    ]
    tags.append({"ru": "russian"}.get(lang, lang))
    meta: dict[str, Any] = {"language": languages, "license": base["license"]}
    if base["hub_id"]:
        meta["base_model"] = base["hub_id"]
    meta["datasets"] = list(dict.fromkeys(s["name"] for s in sources))
    meta |= {"pipeline_tag": "text-generation", "library_name": "transformers", "tags": tags}
    final = data.get("final_model") or {}
    title = f"{_final_model_name(base)}-{lang}-vikhr"
    lines = [
        "---",
        yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        "",
        f"# {title}",
        "",
    ]
    base_text = (
        f"[{base['hub_id']}](https://huggingface.co/{base['hub_id']})"
        if base["hub_id"]
        else f"`{base['spec']}`"
    )
    lines += [f"{base_text} adapted to {lang.upper()} with the vikhr pipeline (after the Vikhr paper, Nikolich et al. "
              f"2024): a new {lang}-first vocabulary, the embeddings moved onto it"
              + (", continued pre-training" if stages["pretrain"]["status"] == "done" else "")
              + (" and instruction tuning" if stages["sft"]["status"] == "done" else "")
              + f". This folder is the run's final model (`{final.get('stage', '?')}` stage).", ""]  # fmt: skip
    lines += ["## What was done", "", *_what_was_done(data, tok_stats), ""]
    lines += ["## Results", "", *_results(data, final.get("stage")), ""]
    lines += ["## Data and licences", ""]
    lic_line = f"`{base['license']}`, " + (f"from {base['license_from']}" if base["license_from"] else "")
    if base["license"] == "other" and not base["license_from"]:
        lic_line = ("`other`: **the base model's licence is unknown** to this card (no README front matter or LICENSE "
                    "file in its folder, not a known model); check it before you share this model")  # fmt: skip
    lines += [f"- Licence of the weights: {lic_line}; the adapted model inherits it.", ""]
    if sources:
        rows = [[s["role"], s["name"] + (f": {s['description']}" if s["description"] else ""),
                 s["license"] or "see the source"] for s in sources]  # fmt: skip
        lines += table(["used for", "data", "licence"], rows, set()) + [""]
    else:
        lines += ["No data sources recorded (the stages that read data did not run).", ""]
    lines += ["## How to use", "", *_usage(folder), ""]
    lines += ["## Limitations", "", *_limitations(data, base), ""]
    return "\n".join(lines).rstrip() + "\n"


def _what_was_done(data: dict, tok_stats: dict) -> list[str]:
    out = []
    st = data["stages"]
    tok = st["tokenizer"]["metrics"]
    lang = data["language"]
    if st["tokenizer"]["status"] == "done":
        before = (tok.get("base_chars_per_token") or {}).get(lang)
        after = (tok.get("chars_per_token") or {}).get(lang)
        eff = f"; {lang} characters per token {before:.2f} → {after:.2f}" if before and after else ""
        out.append(f"- Vocabulary: `{tok_stats.get('mode', '?')}` mode, {fmt(tok.get('vocab_size'))} tokens (a "
                   f"SentencePiece model trained on the run's text){eff}.")  # fmt: skip
    t = data.get("transplant") or {}
    if st["transplant"]["status"] == "done":
        out.append(f"- Embeddings: new rows initialised with `{t.get('method', '?')}`"
                   f" ({', '.join(f'{k} {fmt(v)}' for k, v in (t.get('rows') or {}).items())}).")  # fmt: skip
    p = ((data.get("pretrain") or {}).get("report") or {}).get("data") or {}
    if st["pretrain"]["status"] == "done":
        tokens = (p.get("steps") or 0) * (p.get("tokens_per_step") or 0)
        out.append(f"- Continued pre-training: {fmt(p.get('steps'))} optimizer steps, {fmt(tokens)} tokens "
                   f"({fmt(p.get('train_documents'))} documents), loss = CE + λ·KL to the model before training.")  # fmt: skip
    s = ((data.get("sft") or {}).get("report") or {}).get("data") or {}
    if st["sft"]["status"] == "done":
        out.append(f"- Instruction tuning: {fmt(s.get('steps'))} optimizer steps on {fmt(s.get('train_examples'))} "
                   "examples, loss on the assistant replies only.")  # fmt: skip
    return out or ["- Nothing recorded (no stage reports in the run directory)."]


def _results(data: dict, final_stage: str | None) -> list[str]:
    models = data["models"]
    if not models:
        return ["The evaluate stage did not run: no numbers yet (`vikhr run --to evaluate`)."]
    langs = list(dict.fromkeys(lang for m in models.values() for lang in m["bpc"]))
    tasks = list(dict.fromkeys(t for m in models.values() for t in m["tasks"]))
    rows = []
    for name, m in models.items():
        label = MODEL_LABELS.get(name, name) + (" (this model)" if name == final_stage else "")
        rows.append([label, *(m["bpc"].get(lang) for lang in langs),
                     *((m["tasks"][t]["value"] if t in m["tasks"] else None) for t in tasks),
                     fmt(m["chars_per_s"], 0) if m["chars_per_s"] is not None else "–"])  # fmt: skip
    head = ["model", *(f"{lang} bits/char ↓" for lang in langs), *(f"{t} ↑" for t in tasks), "chars/s ↑"]
    ev = (data.get("evaluate") or {}).get("report") or {}
    limit = (ev.get("settings") or {}).get("limit")
    note = f" on the first {limit} items of each task" if limit else ""
    return [f"Held-out bits per character and task accuracy (first metric){note}, generation speed in characters "
            "per second, from the run's evaluate stage:", "", *table(head, rows)]  # fmt: skip


def _usage(folder: Path) -> list[str]:
    path = str(folder)
    if _has_chat_template(folder):
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'path = "{path}"  # this folder, or the hub id it is uploaded under',
            "tok = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForCausalLM.from_pretrained(path)",
            'messages = [{"role": "user", "content": "Как сварить борщ?"}]',
            'inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
            "out = model.generate(**inputs, max_new_tokens=200)",
            'print(tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        ]
    else:
        code = [
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            "",
            f'path = "{path}"  # this folder, or the hub id it is uploaded under',
            "tok = AutoTokenizer.from_pretrained(path)",
            "model = AutoModelForCausalLM.from_pretrained(path)",
            'inputs = tok("Однажды летом мы", return_tensors="pt")',
            "out = model.generate(**inputs, max_new_tokens=100)",
            "print(tok.decode(out[0], skip_special_tokens=True))",
        ]
    return ["With transformers:", "", "```python", *code, "```", "",
            "In the terminal, with vikhr installed:", "", "```", f"vikhr chat {path}", "```"]  # fmt: skip


def _limitations(data: dict, base: dict) -> list[str]:
    out = []
    p = ((data.get("pretrain") or {}).get("report") or {}).get("data") or {}
    tokens = (p.get("steps") or 0) * (p.get("tokens_per_step") or 0)
    if data["stages"]["pretrain"]["status"] != "done":
        out.append("- No continued pre-training: the new embeddings were only initialised, so the model's "
                   f"{data['language']} is about as weak as its starting point.")  # fmt: skip
    elif tokens < 100_000_000:
        out.append(f"- A small run: {fmt(tokens)} tokens of continued pre-training (the paper used billions); "
                   "expect weak, often wrong or repetitive text.")  # fmt: skip
    ev = (data.get("evaluate") or {}).get("report") or {}
    limit = (ev.get("settings") or {}).get("limit")
    if limit:
        out.append(f"- Evaluated on {limit} items per task: the 95 % intervals are wide; differences inside them "
                   "are not evidence.")  # fmt: skip
    out += [
        "- The vocabulary differs from the base model's: adapters, quantisations and speculative-decoding drafts made "
        "for the base do not apply.",
        "- No safety tuning beyond what the instruction data carries; the model can state falsehoods confidently.",
    ]
    if base["license"] == "other":
        out.append("- The licence could not be determined from the base model; treat the weights as unlicensed "
                   "until you have checked it.")  # fmt: skip
    return out


def write_card(text: str, folder: Path) -> Path:
    """Write the card as `folder/README.md` (through a temporary file, so a reader never sees half of it)."""
    import os

    path = Path(folder) / "README.md"
    tmp = path.with_name(f".README.md.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OSError(f"{path}: cannot write the model card ({e})") from e
    return path
