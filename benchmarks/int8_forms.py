"""int8 forms on the real base: which layers int8 may round and still pick fp32's next tokens, at what speed.

    make real-base && python benchmarks/int8_forms.py --json-out benchmarks/results/int8_forms.json
    python benchmarks/int8_forms.py --model DIR       # a model you trained (mtn-sails train)
    python benchmarks/int8_forms.py --model DIR --facts FILE   # and the questions it was trained on

The exporter's int8 gate (mtn_sails/runtime/quantize.py) measures greedy top-1 agreement on its own eight
prompts; this script reports each form on other prompts (the held-out general questions of
real_base_sessions.py, never used to choose the gate's threshold or its forms) beside the gate's, with decode
tokens/s of the `generate` decoder (batch 1, a chat-templated prompt, --new-tokens greedy steps, median of
interleaved rounds), the file size, and how many of the held-out questions get fp32's answer word for word
(free-running greedy, up to ANSWER_TOKENS tokens or the end of the turn); with --facts, the same for the
questions of the file the model was trained on, and how many of them fp32 itself answers as trained. Forms: the exporter's
(8-bit weight blocks of 32 on the fused graph of fused_graph.py and on optimum's, dynamic int8 on the whole
graph, dynamic int8 with the MLP output projections in fp32), the fused graph in fp32 (the fusion alone), 8-bit
blocks of 32 with the MLP output projections in fp32, 8-bit blocks of 128, and 4-bit blocks (MatMulNBits, the
`--quantize int4` lever of issue 32) of 32 and 128, on the fused graph of 32, alone and with the MLP output
projections in 8 bits. --forms picks some by name.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from common import GENERAL, arm_statistics, interleaved_rounds, machine, script_parser, write_json
from tools.real_base import real_base_dir

ANSWER_TOKENS = 24


def form_builders(onnx_dir: Path, prepared: Path, fused: Path | None) -> dict:
    """Form name -> a call that writes that form's graph from the prepared optimum graph or the `fused` one
    (fused_graph.py; None for families the builder does not write)."""
    from mtn_sails.runtime.quantize import MLP_OUTPUT_PROJECTIONS, quantize_int8, quantize_weight_blocks

    def blocks(bits: int, size: int, source: Path = prepared, keep: tuple = ()):
        return lambda: quantize_weight_blocks(onnx_dir, source, size, bits, keep, fused=source == fused)

    forms = {"8-bit weight blocks of 32": blocks(8, 32),
             "8-bit weight blocks of 32, MLP output projections fp32": blocks(8, 32, keep=MLP_OUTPUT_PROJECTIONS),
             "8-bit weight blocks of 128": blocks(8, 128), "4-bit weight blocks of 32": blocks(4, 32),
             "4-bit weight blocks of 128": blocks(4, 128),
             "dynamic int8, whole graph": lambda: quantize_int8(onnx_dir, (), prepared),
             "dynamic int8, MLP output projections fp32": lambda: quantize_int8(onnx_dir, MLP_OUTPUT_PROJECTIONS,
                                                                                prepared)}
    if fused is not None:
        forms.update({"fused graph, fp32": lambda: Path(shutil.copy(fused, fused.with_name("copy.onnx"))),
                      "fused graph, 8-bit weight blocks of 32": blocks(8, 32, fused),
                      "fused graph, 8-bit weight blocks of 32, MLP output projections fp32":
                          blocks(8, 32, fused, MLP_OUTPUT_PROJECTIONS),
                      "fused graph, 4-bit weight blocks of 32": blocks(4, 32, fused),
                      "fused graph, 4-bit weight blocks of 32, MLP output projections 8-bit": lambda: blocks(
                          8, 32, blocks(4, 32, fused, MLP_OUTPUT_PROJECTIONS)())()})
    return forms


def graph_mb(path: Path) -> float:
    """Megabytes of an ONNX graph with the external weight files it names."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    files = {entry.value for tensor in graph.initializer for entry in tensor.external_data if entry.key == "location"}
    return round(sum((path.parent / name).stat().st_size for name in {path.name, *files}) / 1e6, 1)


def decode_speed(decoder, prompt: list[int], new_tokens: int) -> dict:
    """Tokens/s of `new_tokens` greedy steps after `prompt` (prompt time apart)."""
    decoder.reset()
    started = time.perf_counter()
    logits = decoder.forward(np.array([prompt], dtype=np.int64))
    prompt_s = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(new_tokens):
        logits = decoder.forward(np.array([[int(logits[0, -1].argmax())]], dtype=np.int64))
    return {"prompt_s": prompt_s, "tokens_per_s": new_tokens / (time.perf_counter() - started)}


def run(args) -> dict:
    """Export fp32, quantise each form, measure agreement and speed; the report as a dict."""
    from mtn_sails.config import ExportConfig
    from mtn_sails.data.files import load_records
    from mtn_sails.data.template import template_beside
    from mtn_sails.model_dir.model_files import load_tokenizer
    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.export import export
    from mtn_sails.runtime.onnx_session import quiet_exporters
    from mtn_sails.runtime.onnx_session import ONNX_FILE, onnx_session
    from mtn_sails.runtime.decode_loop import decode
    from mtn_sails.runtime.fused_graph import build_fused_graph, builds_fused
    from mtn_sails.runtime.quantize import AGREEMENT_PROMPTS, greedy_agreement, prepared_for_quantization, same_starts

    model_dir = Path(args.model) if args.model else real_base_dir()
    tokenizer, template = load_tokenizer(model_dir, "--model"), template_beside(model_dir)
    encode = lambda texts: [tokenizer.encode(template.prompt(text)) for text in texts]  # noqa: E731
    gate, held_out = encode(AGREEMENT_PROMPTS), encode([question for question, _ in GENERAL])
    trained = [(r.prompt, r.response) for r in load_records(Path(args.facts)) if r.kind == "pair"] if args.facts else []
    fact_prompts = encode([question for question, _ in trained])
    report: dict = {"machine": machine("torch", "onnxruntime"), "model": str(model_dir) if args.model else
                    "SmolLM2-135M-Instruct (real base)", "settings": {"new_tokens": args.new_tokens,
                                                                      "rounds": args.rounds}, "forms": {}}
    with tempfile.TemporaryDirectory(prefix="int8_forms_") as tmp:
        onnx_dir = Path(tmp) / "onnx_model"
        with quiet_exporters():
            export(ExportConfig(output_dir=str(model_dir), onnx_output=str(onnx_dir)))
        decoders = {"fp32": OnnxDecoder(onnx_session(onnx_dir / ONNX_FILE))}
        answer = lambda decoder, ids: decode(decoder, ids, ANSWER_TOKENS, tokenizer.eos_token_id).token_ids  # noqa: E731
        fp32_answers = [answer(decoders["fp32"], ids) for ids in held_out]
        fp32_facts = [answer(decoders["fp32"], ids) for ids in fact_prompts]
        if trained:
            right = sum(tokenizer.decode(ids).strip() == expected
                        for ids, (_, expected) in zip(fp32_facts, trained))
            report["facts"] = {"file": Path(args.facts).name, "count": len(trained), "fp32_as_trained": right}
        fused = build_fused_graph(model_dir, Path(tmp) / "fused") if builds_fused(model_dir) else None
        with prepared_for_quantization(onnx_dir) as prepared:
            for name, build in form_builders(onnx_dir, prepared, fused).items():
                if args.forms and not any(part in name for part in args.forms):
                    continue
                path = build()
                kept = path.with_name(f"{len(decoders)}.onnx")
                path.rename(kept)
                decoders[name] = OnnxDecoder(onnx_session(kept))
                gate_share, gate_positions = greedy_agreement(decoders["fp32"], decoders[name], gate)
                held_share, held_positions = greedy_agreement(decoders["fp32"], decoders[name], held_out)
                same = sum(answer(decoders[name], ids) == expected for ids, expected in zip(held_out, fp32_answers))
                starts = lambda prompts: same_starts(decoders["fp32"], decoders[name], prompts,  # noqa: E731
                                                     tokenizer.eos_token_id)
                report["forms"][name] = {"mb": graph_mb(kept),
                                         "gate_agreement": round(gate_share, 3), "gate_positions": gate_positions,
                                         "held_out_agreement": round(held_share, 3),
                                         "held_out_positions": held_positions,
                                         "answers_as_fp32": f"{same}/{len(held_out)}",
                                         "gate_starts_as_fp32": f"{starts(gate)}/{len(gate)}",
                                         "held_out_starts_as_fp32": f"{starts(held_out)}/{len(held_out)}"}
                if trained:
                    same_facts = sum(answer(decoders[name], ids) == expected
                                     for ids, expected in zip(fact_prompts, fp32_facts))
                    report["forms"][name]["facts_as_fp32"] = f"{same_facts}/{len(trained)}"
                print(f"[int8_forms] {name}: {report['forms'][name]}", flush=True)
        report["forms"]["fp32"] = {"mb": graph_mb(onnx_dir / ONNX_FILE)}
        arms = {name: (lambda d=decoder: decode_speed(d, gate[0], args.new_tokens)) for name, decoder in decoders.items()}
        rounds = interleaved_rounds(arms, args.rounds)
    speeds = {name: arm_statistics([r[name]["tokens_per_s"] for r in rounds], digits=1) for name in decoders}
    for name, speed in speeds.items():
        report["forms"][name].update(decode_tokens_per_s=speed,
                                     vs_fp32=round(speed["median"] / speeds["fp32"]["median"], 2))
    return report


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--model", default=None, help="a trained model directory (default: the real base)")
    parser.add_argument("--facts", default=None, help="the data file --model was trained on: its questions too")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--forms", nargs="*", default=None, help="only the forms whose names contain one of these")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    report = run(args)
    for name, form in report["forms"].items():
        print(f"{name:36s} {form}")
    write_json(args.json_out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
