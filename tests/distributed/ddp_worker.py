"""One rank of a 2-process CPU DDP run of KLTrainer (started by torchrun from test_ddp.py)."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from vikhr.paths import BUNDLED_DATA
from vikhr.train.packing import PackedDataset, PackingCollator
from vikhr.train.trainer import KLTrainer


def digest(model) -> str:
    return hashlib.sha256(
        b"".join(p.detach().float().numpy().tobytes() for p in model.parameters())
    ).hexdigest()


def main(model_dir: str, out: str) -> None:
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    start = digest(model)
    f = sorted((BUNDLED_DATA / "ru" / "chekhov").glob("*.txt"))[0]
    texts = [x for x in f.read_text(encoding="utf-8").splitlines() if len(x) > 40][:64]
    args = TrainingArguments(
        output_dir=f"{out}/trainer", per_device_train_batch_size=2, max_steps=4, learning_rate=1e-3,
        report_to=[], use_cpu=True, ddp_backend="gloo", logging_steps=1, save_strategy="no", seed=0,
    )  # fmt: skip
    trainer = KLTrainer(
        model=model, args=args, train_dataset=PackedDataset(texts, tok, seq_len=64),
        data_collator=PackingCollator(), reference="init", kl_weight=1.0,
    )  # fmt: skip
    trainer.train()
    rank = int(os.environ.get("RANK", "0"))
    result = {
        "rank": rank, "world_size": trainer.args.world_size,
        "initialized": torch.distributed.is_initialized(), "start": start, "end": digest(trainer.model),
        "logged": [h for h in trainer.state.log_history if "ce" in h],
    }  # fmt: skip
    Path(out, f"rank{rank}.json").write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
