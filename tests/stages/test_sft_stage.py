"""The `sft` stage on a tiny model: assistant-only loss through the shared training layer, the held-out answer loss
falls, the output is a plain chat model (template without generation markers, stops at end-of-turn), examples
truncated away are counted and written, LoRA merges into a plain folder, a model without a template is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import CHATML, tiny_run_config

from vikhr import pipeline
from vikhr.config import load_config

MARKED = CHATML.replace(
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}",
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\n' }}{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endif %}",
)
"""The same ChatML with TRL's `{% generation %}` markers around assistant replies."""


def _data(path: Path, n: int = 24) -> Path:
    rows = []
    for i in range(n):
        rows.append({"messages": [
            {"role": "system", "content": "Ты полезный помощник."},
            {"role": "user", "content": f"Сколько будет {i} плюс один?"},
            {"role": "assistant", "content": f"Будет {i + 1}. Это просто."},
        ]})  # fmt: skip
    rows.append({"messages": [{"role": "user", "content": "очень длинный вопрос " * 80},
                              {"role": "assistant", "content": "Короткий ответ."}]})  # fmt: skip
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _sft_config(tmp_path, model, **sft):
    settings = {"sft": {"model": str(model), "data": [str(_data(tmp_path / "sft.jsonl"))], "max_steps": 8,
                        "lr": 3e-3, "warmup_steps": 0, "eval_share": 0.2, "prompts": str(_prompts(tmp_path)),
                        "eval_steps": 8, "save_steps": 4, **sft}}  # fmt: skip
    return load_config(tiny_run_config(tmp_path, model, settings))


def _prompts(tmp_path: Path) -> Path:
    p = tmp_path / "prompts.txt"
    p.write_text("Сколько будет 3 плюс один?\nКак дела?\n", encoding="utf-8")
    return p


@pytest.mark.slow
def test_sft_stage_output_loss_and_accounting(tiny_smollm, tmp_path):
    cfg = _sft_config(tmp_path, tiny_smollm, chat_template=MARKED)
    assert [s.action for s in pipeline.run(cfg, "sft", "sft")] == ["run"]
    out = tmp_path / "run" / "sft"
    report = json.loads((out / "sft_report.json").read_text(encoding="utf-8"))
    loss = report["held_out_answer_loss"]
    assert loss["after"] < loss["before"]
    d = report["data"]
    assert d["examples"] == 25 and d["truncated_away"] == 1 and d["end_of_turn"] == "<|im_end|>"
    assert d["masks"]["train"]["truncated_away"] + d["masks"]["held_out"]["truncated_away"] == 1
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [x["reason"] for x in dropped] == ["truncated_away"]
    # a plain chat model: no generation markers, generation stops at <|im_end|>
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(out / "model")
    assert "{% generation" not in tok.chat_template and "endgeneration" not in tok.chat_template
    msgs = [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте"}]
    assert tok.apply_chat_template(msgs, tokenize=False) == tok.apply_chat_template(
        msgs, tokenize=False, chat_template=CHATML
    )
    eos = GenerationConfig.from_pretrained(out / "model").eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in (eos if isinstance(eos, list) else [eos])
    assert set(report["answers"]) == {"before", "after"} and report["answers"]["after"]["prompts"] == 2
    assert (out / "answers" / "sbs.md").is_file() and (out / "loss.png").is_file()
    assert "Held-out assistant-token loss" in (out / "sft_report.md").read_text(encoding="utf-8")
    assert [s.action for s in pipeline.run(cfg, "sft", "sft")] == ["skip"]


@pytest.mark.slow
def test_sft_lora_merges_into_a_plain_model(tiny_smollm, tmp_path):
    from safetensors.torch import load_file

    cfg = _sft_config(tmp_path, tiny_smollm, lora=True, lora_r=4, max_steps=2, prompts="", lr=1e-2)
    pipeline.run(cfg, "sft", "sft")
    out = tmp_path / "run" / "sft" / "model"
    assert not (out / "adapter_config.json").exists()
    after, before = load_file(out / "model.safetensors"), load_file(tiny_smollm / "model.safetensors")
    assert set(after) == set(before)  # plain Llama names, no lora_ / base_model. prefixes
    changed = [k for k in before if not (after[k] == before[k]).all()]
    assert changed and all(k.endswith("proj.weight") for k in changed)


def test_model_without_chat_template_names_the_fix(tiny_mistral, tmp_path):
    cfg = _sft_config(tmp_path, tiny_mistral)
    with pytest.raises(ValueError, match="sft.chat_template"):
        pipeline.run(cfg, "sft", "sft")


def test_sft_without_data_or_model_is_a_clear_error(tiny_smollm, tmp_path):
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm, {"sft": {"model": str(tiny_smollm)}}))
    with pytest.raises(FileNotFoundError, match="instruct stage"):
        pipeline.run(cfg, "sft", "sft")
    cfg = load_config(tiny_run_config(tmp_path, tiny_smollm))
    with pytest.raises(FileNotFoundError, match="run the pretrain stage"):
        pipeline.run(cfg, "sft", "sft")


MISTRAL_STRICT = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('system messages are not supported') }}{% elif message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
)
"""Mistral-Instruct's common template, which refuses a system message."""


@pytest.mark.slow
def test_conversations_the_template_cannot_render_are_counted_and_written(tiny_mistral, tmp_path):
    rows = [{"messages": [{"role": "user", "content": f"Вопрос {i}?"}, {"role": "assistant", "content": f"Ответ {i}."}]}
            for i in range(8)]  # fmt: skip
    rows += [{"messages": [{"role": "system", "content": "Ты помощник."}, {"role": "user", "content": "Привет"},
                           {"role": "assistant", "content": "Здравствуйте"}]}] * 2  # fmt: skip
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    settings = {"sft": {"model": str(tiny_mistral), "data": [str(data)], "max_steps": 1, "prompts": "",
                        "chat_template": MISTRAL_STRICT, "eval_share": 0.2}}  # fmt: skip
    cfg = load_config(tiny_run_config(tmp_path, tiny_mistral, settings))
    pipeline.run(cfg, "sft", "sft")
    out = tmp_path / "run" / "sft"
    report = json.loads((out / "sft_report.json").read_text(encoding="utf-8"))
    assert report["data"]["template_errors"] == 2 and report["data"]["truncated_away"] == 0
    dropped = [json.loads(x) for x in (out / "dropped.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [d["reason"] for d in dropped] == ["template_error", "template_error"]
    assert "system messages are not supported" in dropped[0]["detail"]
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(out / "model").chat_template == MISTRAL_STRICT
