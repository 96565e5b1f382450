"""The plots of the run report and the two plot fixes: loss curves of short runs (markers, the whole run on the
x-axis, the mean loss and a point count when few points were logged), the same tokenizer under two names shown
once; the report's bar charts; the Markdown -> self-contained HTML converter."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
from matplotlib.figure import Figure
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from vikhr.report.card import front_matter
from vikhr.report.html import split_row, to_html
from vikhr.report.run import bar_chart, distinct_tokenizers, stages_chart, tasks_chart
from vikhr.tokenizer.report import dedupe_tokenizers, vocabulary_signature
from vikhr.train.report import loss_plot

PNG = b"\x89PNG\r\n\x1a\n"

DEMO_HISTORY = [  # the demo's pretrain: 12 steps logged every 10, evaluated at 12
    {"loss": 9.1, "ce": 8.9, "kl": 0.2, "learning_rate": 3e-4, "grad_norm": 1.0, "epoch": 0.5, "step": 10},
    {"eval_target_loss": 8.0, "eval_target_ce": 7.9, "eval_target_kl": 0.1, "step": 12},
    {"train_runtime": 10.0, "train_loss": 9.3, "step": 12},
]


@pytest.fixture
def figures(monkeypatch) -> list[Figure]:
    """The figures saved during the test (Figure.savefig still writes the file)."""
    saved: list[Figure] = []
    original = Figure.savefig

    def spy(self, *args, **kwargs):
        saved.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    return saved


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [t.get_text() for t in legend.get_texts()] if legend else []


def test_loss_plot_of_a_short_run_is_readable(tmp_path, figures):
    out = loss_plot(DEMO_HISTORY, tmp_path / "loss.png", title="pretrain: loss", logging_steps=10)
    assert out == tmp_path / "loss.png" and out.read_bytes().startswith(PNG)
    fig = figures[-1]
    ax, ax_kl = fig.axes
    assert all(
        line.get_marker() not in (None, "", "None") for line in ax.get_lines()
    )  # markers on every curve
    lo, hi = ax.get_xlim()
    assert lo <= 0 and hi >= 12  # the whole run, not just the logged step
    labels = _legend(ax)
    assert "train loss (1 point)" in labels and "held-out target CE (1 point)" in labels
    assert "mean train loss over 12 steps" in labels  # the Trainer's closing mean, drawn across the run
    note = fig._suptitle.get_text().replace("\n", " ")
    assert "1 point in 12 steps" in note and "every 10 steps" in note and "logging_steps" in note
    assert _legend(ax_kl) == ["train KL (1 point)"]
    assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "nats per token"


def test_loss_plot_long_run_and_edge_cases(tmp_path, figures):
    history = [{"loss": 5.0 - s / 100, "ce": 5.0 - s / 100, "kl": 0.0, "learning_rate": 1e-4, "step": s}
               for s in range(1, 201)]  # fmt: skip
    history += [{"eval_held_out_ce": 4.0, "step": 100}, {"eval_held_out_ce": 3.9, "step": 200},
                {"eval_held_out_ce": 3.9, "step": 200}, {"train_loss": 4.2, "step": 200}]  # fmt: skip
    assert loss_plot(history, tmp_path / "long.png") is not None
    ax, ax2 = figures[-1].axes
    labels = _legend(ax)
    assert labels == [
        "train loss (200 points)",
        "held-out CE (2 points)",
    ]  # CE == loss: drawn once; one point per step
    assert "learning rate" in ax2.get_title()  # KL is 0 throughout (CE only): the schedule instead
    assert "\n" not in figures[-1]._suptitle.get_text()  # enough points: no note
    # evaluations only (no training loss logged): one panel, still a figure
    only_eval = [{"eval_held_out_ce": 7.3, "step": 1}, {"train_loss": 7.2, "step": 2}]
    assert loss_plot(only_eval, tmp_path / "eval.png") is not None and len(figures[-1].axes) == 1
    assert loss_plot([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_write_outputs_plot_names_logging_steps(tmp_path, figures, monkeypatch):
    """The training stages' plot gets its stage's name and logging_steps (through write_outputs)."""
    from vikhr.train import report as train_report

    seen = {}
    monkeypatch.setattr(train_report, "loss_plot", lambda h, p, **kw: seen.update(kw))
    monkeypatch.setattr(train_report, "finish_model_folder", lambda *a: None)
    final = tmp_path / "final"
    final.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    report = {"settings": {"logging_steps": 2}}
    train_report.write_outputs(out, final, tmp_path, report, DEMO_HISTORY, name="sft", render=lambda r: "")
    assert seen == {"title": "sft: loss", "logging_steps": 2}


def _word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def test_same_tokenizer_under_two_names_is_measured_once(tmp_path):
    base = _word_tokenizer(["мама", "мыла", "раму"])
    mine = _word_tokenizer(["мама", "мыла", "раму", "мылом"])
    shared_copy = tmp_path / "smollm2-135m"  # the base again, as a folder on disk
    _word_tokenizer(["мама", "мыла", "раму"]).save_pretrained(shared_copy)
    other = _word_tokenizer(["a", "b"])
    assert vocabulary_signature(base) != vocabulary_signature(mine)
    tokenizers = {"base: smollm2-135m-instruct": base, "vikhr-replace": mine, "smollm2-135m": shared_copy,
                  "gemma-3": other, "smollm2-135m-instruct": _word_tokenizer(["x"])}  # fmt: skip
    kept, same = dedupe_tokenizers(tokenizers, protected=("base: smollm2-135m-instruct", "vikhr-replace"))
    assert list(kept) == ["base: smollm2-135m-instruct", "vikhr-replace", "gemma-3"]
    assert same == {"smollm2-135m": "base: smollm2-135m-instruct",  # same vocabulary, loaded from its folder
                    "smollm2-135m-instruct": "base: smollm2-135m-instruct"}  # same name as the run's base  # fmt: skip
    # the run's own labels are never dropped, even when they duplicate each other
    kept, same = dedupe_tokenizers(
        {"base: x": base, "vikhr-extend": base}, protected=("base: x", "vikhr-extend")
    )
    assert list(kept) == ["base: x", "vikhr-extend"] and same == {}


def test_distinct_tokenizers_drops_identical_measurements():
    row = {"chars_per_token": 1.3, "tokens": 100}
    report = {"vocab_sizes": {"base: smollm2-135m-instruct": 49152, "vikhr-replace": 32000, "smollm2-135m": 49152},
              "languages": {"ru": {"base: smollm2-135m-instruct": row, "vikhr-replace": {"tokens": 40},
                                   "smollm2-135m": dict(row)},
                            "en": {"base: smollm2-135m-instruct": {"tokens": 10}, "vikhr-replace": {"tokens": 20},
                                   "smollm2-135m": {"tokens": 10}}}}  # fmt: skip
    out, same = distinct_tokenizers(report)
    assert same == {"smollm2-135m": "base: smollm2-135m-instruct"}
    assert list(out["vocab_sizes"]) == ["base: smollm2-135m-instruct", "vikhr-replace"]
    assert all("smollm2-135m" not in rows for rows in out["languages"].values())
    assert distinct_tokenizers(out) == (out, {})


def test_report_charts(tmp_path, figures):
    p = bar_chart(tmp_path / "bpc.png", ["source model", "tuned (SFT)"], {"ru": [2.1, 1.2], "en": [1.0, None]},
                  title="Held-out bits per character (lower is better)", ylabel="bits per character", note="language")  # fmt: skip
    assert p.read_bytes().startswith(PNG)
    ax = figures[-1].axes[0]
    assert ax.get_title() and ax.get_ylabel() == "bits per character" and _legend(ax) == ["ru", "en"]
    assert "n/a" in [t.get_text() for t in ax.texts]  # a missing value is labelled, not drawn as 0
    assert bar_chart(tmp_path / "none.png", ["a"], {"x": [None]}, title="t", ylabel="y") is None
    models = {"source": {"tasks": {"parus": {"metric": "acc", "value": 0.5, "ci95": [0.3, 0.7], "chance": 0.5}}},
              "sft": {"tasks": {"parus": {"metric": "acc", "value": 0.6, "ci95": [0.4, 0.8], "chance": 0.5}}}}  # fmt: skip
    assert tasks_chart(tmp_path / "tasks.png", models).is_file()
    assert "chance" in _legend(figures[-1].axes[0])
    assert tasks_chart(tmp_path / "t2.png", {"source": {"tasks": {}}}) is None
    stages = {"corpus": {"seconds": 12.0}, "reward": {"seconds": None}, "pretrain": {"seconds": 300.0}}
    assert stages_chart(tmp_path / "stages.png", stages).is_file()
    assert "total 5.2 min" in figures[-1].axes[0].get_title()


def test_html_is_self_contained(tmp_path):
    (tmp_path / "plots").mkdir()
    png = tmp_path / "plots" / "a.png"
    png.write_bytes(PNG + b"fake")
    md = "\n".join([
        "# Run report", "", "Intro with `code | pipe`, **bold**, *note* and a [link](evaluate/sbs/sbs.html).", "",
        "## Numbers", "", "| model | bits/char |", "|---|---:|", "| a \\| b | 1.5 |", "| <script>x</script> | 2<br>3 |",
        "", "- one", "- two", "", "```", "vikhr chat <dir>", "```", "", "![A chart](plots/a.png)", "",
        "![Gone](plots/missing.png)", "", "## More", "", "text",
    ])  # fmt: skip
    page = to_html(md, tmp_path, title="t")
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert not re.search(r"<(script|link)\b|src=\"(?!data:)", page)  # no scripts, no external files
    data = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(data) == 1 and base64.b64decode(data[0]) == PNG + b"fake"
    assert "[image plots/missing.png missing: Gone]" in page
    assert "<td class=num>1.5</td>" in page and "<td>a | b</td>" in page
    assert "&lt;script&gt;" in page and "2<br>3" in page
    assert "<code>code | pipe</code>" in page and "<strong>bold</strong>" in page and "<em>note</em>" in page
    assert '<a href="evaluate/sbs/sbs.html">link</a>' in page
    assert "<li>one</li>" in page and "<pre><code>vikhr chat &lt;dir&gt;</code></pre>" in page
    assert '<a href="#numbers">Numbers</a>' in page and '<h2 id="more">More</h2>' in page  # contents
    with pytest.raises(ValueError, match="external"):
        to_html("![x](https://example.com/a.png)", tmp_path)


def test_split_row_and_front_matter():
    assert split_row("| a \\| b | c \\\\ | d |") == ["a | b", "c \\", "d"]
    assert front_matter("---\nlicense: mit\ntags: [a]\n---\n# x\n") == {"license": "mit", "tags": ["a"]}
    assert front_matter("# no front matter\n") == {}
    with pytest.raises(ValueError):
        front_matter("---\n- a list\n---\n")


def test_plots_are_pngs(tmp_path):
    """Saved figures are real PNG files of a readable size."""
    p = loss_plot(DEMO_HISTORY, tmp_path / "l.png")
    assert Path(p).stat().st_size > 10_000
