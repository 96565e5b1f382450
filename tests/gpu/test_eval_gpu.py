"""The packed log-likelihood scorer on a GPU: the 4-D mask path (sdpa on CUDA) gives the one-row-per-choice numbers.

Run on a machine with CUDA: `.venv/bin/python -m pytest -m gpu tests/gpu/test_eval_gpu.py`.
"""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from vikhr.eval.loglik import LMTokenizer, score_requests, supports_packing

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

REQUESTS = [
    (
        "Сердце актёра отчаянно билось перед выступлением потому что",
        [" он боялся сцены.", " он помнил роль."],
    ),
    ("Question: What is two plus two?\nAnswer:", [" four", " five apples", " 22"]),
    ("", ["Мужчину раньше судили, правильно? Да, судили", "Да"]),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packed_equals_per_choice_on_cuda(tiny_mistral, dtype):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_mistral, dtype=dtype).cuda().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    lm_tok = LMTokenizer(AutoTokenizer.from_pretrained(tiny_mistral))
    assert supports_packing(model)
    packed = score_requests(model, lm_tok, REQUESTS, packed=True)
    plain = score_requests(model, lm_tok, REQUESTS, packed=False)
    tol = 1e-3 if dtype == torch.float32 else 0.5
    for a, b in zip(packed, plain, strict=True):
        assert a.loglikelihoods == pytest.approx(b.loglikelihoods, abs=tol)
