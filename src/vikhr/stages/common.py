"""Small helpers shared by stages (config -> plain inputs)."""

from __future__ import annotations

from vikhr.config import Config, resolve_path


def held_out_texts(cfg: Config, files: dict[str, str], key: str, max_lines: int = 0) -> dict[str, list[str]]:
    """Evaluation lines per language: the files given under `key` (`{ru: path, ...}`), else FLORES devtest from the
    shared data folder, else the bundled held-out text; the first `max_lines` of each (0: all)."""
    from vikhr.tokenizer.report import default_texts

    if files:
        texts = {}
        for lang, p in files.items():
            path = resolve_path(cfg, p)
            if not path.is_file():
                raise FileNotFoundError(f"{key}.{lang}: file not found: {path}")
            texts[lang] = [x for x in path.read_text(encoding="utf-8").split("\n") if x.strip()]
    else:
        texts = default_texts()
    return {k: v[:max_lines] for k, v in texts.items()} if max_lines > 0 else texts
