"""int8 against fp32 on a trained model: how often `export --quantize`'s model picks fp32's next token.

    python benchmarks/int8_agreement.py --json-out benchmarks/results/int8_agreement.json   # 5 epochs on 400 records
    python benchmarks/int8_agreement.py --quick              # 1 epoch on 100 records
    python benchmarks/int8_agreement.py --model DIR          # a model you trained (mtn-sails train)

Random weights predict an almost flat next-token distribution, so int8 rounding flips near-ties and their
agreement says little about a trained model. This script trains one first: the offline base
(`--model-name scratch`, `--scratch-size small`: GPT-2 4x256 with a byte-level BPE tokenizer trained on the
data) on tests/fixtures/alpaca_en_demo.json through the real `train()`, then exports it with the product's
exporter (`--quantize`: per-channel int8 weights, parity checked) and runs both ONNX graphs with the
`generate` decoder on the session's held-out slice (records it never trained on), teacher-forced: at every
position of every rendered record, fp32's and int8's argmax over the vocabulary. Reported: positions, top-1
agreement (all positions and answer positions), the agreement where fp32's own top-2 margin is small, mean
and max |logit difference|, and greedy continuations of the held-out prompts compared token for token.
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from common import PAIRS_FILE, load_average, machine, quiet_session, script_parser, write_json

DATA_FILE = PAIRS_FILE
NEAR_TIE = 1.0  # fp32 logit margin between its top-1 and top-2 under which a flip is a coin toss
GOAL_POSITIONS = 500


def train_model(args, work: Path) -> Path:
    """The scratch base trained on the Alpaca records (the first --records of them) into work/trained_model."""
    import json

    from mtn_sails.config import TrainConfig

    data = work / "alpaca.json"
    records = json.loads(DATA_FILE.read_text(encoding="utf-8"))
    data.write_text(json.dumps(records[:args.records] if args.records else records), encoding="utf-8")
    output = work / "trained_model"
    session = quiet_session(TrainConfig(data_file=str(data), output_dir=str(output), model_name="scratch",
                                        scratch_size=args.scratch_size, epochs=args.epochs,
                                        max_length=args.max_length, seed=args.seed, device="cpu"))
    print(f"[int8_agreement] trained: {session.train_examples} records, {args.epochs} epochs, "
          f"train loss {session.train_loss:.3f}, held-out loss {session.held_out_loss:.3f}", flush=True)
    return output


def teacher_forced(fp32, int8, sequences: list[list[int]], answer_masks: list[list[bool]]) -> dict:
    """Top-1 agreement of int8 with fp32 at every position of `sequences` (fed whole, no cache; one token a step
    where the int8 graph gives the last position's logits only)."""
    agree = answer_agree = positions = answer_positions = near = near_agree = 0
    diffs, largest = [], 0.0
    for ids, answer in zip(sequences, answer_masks):
        fp32.reset()
        int8.reset()
        a = fp32.forward(np.array([ids], dtype=np.int64))[0]
        b = int8.forward(np.array([ids], dtype=np.int64))[0]
        if len(b) < len(ids):  # the fused int8 graph gives the last position's logits: step through the cache
            int8.reset()
            b = np.concatenate([int8.forward(np.array([[token]], dtype=np.int64))[0] for token in ids])
        top_a, top_b = a.argmax(-1), b.argmax(-1)
        same = top_a == top_b
        top2 = np.sort(a, axis=-1)[:, -2:]
        tie = (top2[:, 1] - top2[:, 0]) < NEAR_TIE
        mask = np.array(answer, dtype=bool)
        agree += int(same.sum())
        positions += len(ids)
        answer_agree += int(same[mask].sum())
        answer_positions += int(mask.sum())
        near += int(tie.sum())
        near_agree += int(same[tie].sum())
        diff = np.abs(a - b)
        diffs.append(float(diff.mean()))
        largest = max(largest, float(diff.max()))
    return {"positions": positions, "top1_agreement": agree / positions,
            "answer_positions": answer_positions,
            "top1_agreement_answers": answer_agree / answer_positions if answer_positions else None,
            "near_tie_positions": near, "near_tie_margin": NEAR_TIE,
            "top1_agreement_near_ties": near_agree / near if near else None,
            "top1_agreement_elsewhere": (agree - near_agree) / (positions - near) if positions > near else None,
            "mean_abs_logit_diff": float(np.mean(diffs)), "max_abs_logit_diff": largest}


def greedy(decoder, prompt: list[int], new_tokens: int, eos: int) -> list[int]:
    """Greedy continuation of `prompt` (stops at eos)."""
    decoder.reset()
    logits = decoder.forward(np.array([prompt], dtype=np.int64))
    produced: list[int] = []
    for _ in range(new_tokens):
        token = int(logits[0, -1].argmax())
        if token == eos:
            break
        produced.append(token)
        logits = decoder.forward(np.array([[token]], dtype=np.int64))
    return produced


def run(args) -> dict:
    """Train (unless --model), export with --quantize, compare; the report as a dict."""
    from transformers import AutoTokenizer

    from mtn_sails.model_dir import store
    from mtn_sails.config import ExportConfig
    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.export import export
    from mtn_sails.runtime.onnx_session import quiet_exporters
    from mtn_sails.runtime.onnx_session import model_file, onnx_session
    from mtn_sails.data.template import PromptTemplate
    from mtn_sails.training.scoring import IGNORE_INDEX
    from mtn_sails.training.tokenizing import tokenize_records

    report: dict = {"machine": machine("torch"),
                    "settings": {k: v for k, v in vars(args).items() if k != "json_out"}}
    with tempfile.TemporaryDirectory(prefix="int8_agreement_") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        model_dir = Path(args.model) if args.model else train_model(args, work)
        report["train_s"] = round(time.perf_counter() - started, 1)
        onnx_dir = work / "onnx_model"
        started = time.perf_counter()
        with quiet_exporters():
            exported = export(ExportConfig(output_dir=str(model_dir), onnx_output=str(onnx_dir), quantize=True))
        report["export"] = {"s": round(time.perf_counter() - started, 1), "parity_max_abs_diff": exported.max_abs_diff,
                            "exporter_int8_agreement": exported.int8_agreement}
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        template = PromptTemplate.load(model_dir)
        held_out = [r for records in store.read_slices(model_dir, store.HELD_OUT_DIR).values() for r in records]
        examples = tokenize_records(held_out, tokenizer, template, args.max_length)
        sequences = [list(e["input_ids"]) for e in examples]
        answers = [[label != IGNORE_INDEX for label in e["labels"][1:]] + [False] for e in examples]
        fp32 = OnnxDecoder(onnx_session(model_file(onnx_dir)))
        int8 = OnnxDecoder(onnx_session(model_file(onnx_dir, int8=True)))
        report["model"] = {"dir": "trained here" if not args.model else str(model_dir),
                           "scratch_size": None if args.model else args.scratch_size,
                           "vocab_size": len(tokenizer), "held_out_records": len(held_out)}
        report["teacher_forced"] = teacher_forced(fp32, int8, sequences, answers)
        prompts = [ids[:ids.index(tokenizer.eos_token_id) + 1] if tokenizer.eos_token_id in ids[:-1] else ids[:16]
                   for ids in sequences[:args.greedy_prompts]]
        same = tokens = matched = 0
        for prompt in prompts:
            a = greedy(fp32, prompt, args.new_tokens, tokenizer.eos_token_id)
            b = greedy(int8, prompt, args.new_tokens, tokenizer.eos_token_id)
            same += a == b
            prefix = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            matched += prefix
            tokens += len(a)
        report["greedy"] = {"prompts": len(prompts), "new_tokens": args.new_tokens,
                            "identical_continuations": same,
                            "fp32_tokens": tokens, "tokens_before_first_difference": matched}
    report["machine"]["load_average_at_end"] = load_average()
    report["goal_positions_met"] = report["teacher_forced"]["positions"] >= GOAL_POSITIONS
    return report


def main(argv: list[str] | None = None) -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--model", metavar="DIR", help="a trained model directory to export and compare "
                                                       "(default: train the scratch base here)")
    parser.add_argument("--epochs", type=float, default=None, help="training epochs (default 5; --quick 1)")
    parser.add_argument("--records", type=int, default=None,
                        help="first N Alpaca records to train on (0: all 999; default 400, --quick 100)")
    parser.add_argument("--scratch-size", default="small", help="--scratch-size of the trained base")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--greedy-prompts", type=int, default=20)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--quick", action="store_true", help="1 epoch on 100 records")
    parser.add_argument("--json-out", metavar="FILE", help="also write every number as JSON")
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (1.0 if args.quick else 5.0)
    args.records = args.records if args.records is not None else (100 if args.quick else 400)
    report = run(args)
    tf, gr = report["teacher_forced"], report["greedy"]
    print(f"int8 vs fp32, teacher-forced on {report['model']['held_out_records']} held-out records: "
          f"{tf['top1_agreement']:.2%} of {tf['positions']} positions "
          f"({tf['top1_agreement_answers']:.2%} of {tf['answer_positions']} answer positions; "
          f"{tf['top1_agreement_near_ties'] if tf['top1_agreement_near_ties'] is None else format(tf['top1_agreement_near_ties'], '.1%')}"
          f" of {tf['near_tie_positions']} near ties, margin < {NEAR_TIE}); mean |logit diff| "
          f"{tf['mean_abs_logit_diff']:.4f}, max {tf['max_abs_logit_diff']:.3f}")
    print(f"greedy: {gr['identical_continuations']} of {gr['prompts']} continuations identical "
          f"({gr['tokens_before_first_difference']} of {gr['fp32_tokens']} tokens before the first difference); "
          f"export {report['export']}")
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
