"""How much of session 0's probe a change that teaches nothing flips: the real base's own reproduced answers to
the bundled general prompts, scored again after a 1% random change of its weights (two seeds) and after
rounding them to bf16, by how decisively the base gives each answer (its least likely answer token).

    make real-base && python benchmarks/base_probe_noise.py --json-out benchmarks/results/base_probe_noise.json

An answer whose recall a 1% change flips measures noise, not knowledge lost: base_answers.DECISIVE is the
least probability at which the perturbed base still gives nine in ten of the answers.
"""
from __future__ import annotations

import json
import math

from common import machine, script_parser, write_json
from tools.real_base import real_base_dir

THRESHOLDS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
NOISE = 0.01  # of each tensor's mean absolute weight


def perturbed(seed: int | None):
    """The real base with seeded relative noise on every weight (None: its weights rounded to bf16)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(real_base_dir()).eval()
    if seed is None:
        return model.to(torch.bfloat16).float()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * parameter.abs().mean() * NOISE)
    return model


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mtn_sails.data.general_prompts import general_prompts
    from mtn_sails.data.template import settle_template
    from mtn_sails.training.base_answers import greedy_answers
    from mtn_sails.training.probe import answer_scores, probe_items
    from mtn_sails.data.records import Record

    tokenizer = AutoTokenizer.from_pretrained(real_base_dir())
    base = AutoModelForCausalLM.from_pretrained(real_base_dir()).eval()
    template, _ = settle_template("auto", None, tokenizer)
    prompts = general_prompts()
    answers = greedy_answers(base, tokenizer, template, prompts)
    pairs = [Record(i, "pair", "prompt/completion", prompt=p, response=a)
             for i, (p, a) in enumerate(zip(prompts, answers)) if a and a.strip()]
    items = probe_items(tokenizer, template, pairs)
    own = answer_scores(base, tokenizer, items)
    changed = {name: answer_scores(perturbed(seed), tokenizer, items)
               for name, seed in (("noise_seed_0", 0), ("noise_seed_1", 1), ("bf16", None))}
    rows = []
    for threshold in THRESHOLDS:
        chosen = [i for i, score in enumerate(own) if score.greedy and score.weakest >= math.log(max(threshold, 1e-30))]
        rows.append({"decisive_at_least": threshold, "answers": len(chosen),
                     **{name: round(sum(scores[i].greedy for i in chosen) / max(1, len(chosen)), 3)
                        for name, scores in changed.items()}})
        print(json.dumps(rows[-1]), flush=True)
    result = {"prompts": len(prompts), "ended": len(pairs), "reproduced": sum(s.greedy for s in own),
              "noise": NOISE, "rows": rows, "machine": machine("torch")}
    write_json(args.json_out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
