"""TRL's SFTTrainer as a program of its own: the peer session_speed.py times `python main.py train` against.

    python benchmarks/_trl_session.py MODEL_DIR DATA.json OUTPUT_DIR --max-length 512 --batch-size 8 --epochs 1

Every record becomes one of TRL's prompt-completion rows, split where the product's template for MODEL_DIR
splits it (the model's chat template where it has one, else the product's prompt template), so both programs
train on the same text; TRL appends the end-of-turn token to the completion as the product does. SFTTrainer
at its documented settings for this shape on a CPU: loss on the completion only (its default for
prompt-completion rows), dynamic padding to the batch's longest row, no packing (TRL's packing keeps
examples apart only through flash attention's position_ids, which the CPU has not), bf16 where the CPU has
native bf16 and the model is as wide as the product's own threshold for it (so both compute in one
precision), the product's first-session rate, one save at the end. A helper, not a benchmark (run.py leaves
out names that start with "_").
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (this checkout's mtn_sails on sys.path)


def prompt_completion_rows(model_dir: str, data_file: str) -> dict[str, list[str]]:
    """The records of `data_file` as TRL's prompt and completion columns, split by the product's template."""
    from transformers import AutoTokenizer

    from mtn_sails.data.files import load_records
    from mtn_sails.data.template import settle_template

    template, _notes = settle_template("auto", None, AutoTokenizer.from_pretrained(model_dir))
    rows: dict[str, list[str]] = {"prompt": [], "completion": []}
    for record in load_records(data_file):
        segments = template.render(record)
        first_target = next(index for index, segment in enumerate(segments) if segment.is_target)
        rows["prompt"].append("".join(s.text for s in segments[:first_target]))
        rows["completion"].append("".join(s.text for s in segments[first_target:]))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Fine-tune MODEL_DIR on DATA with TRL's SFTTrainer and save the result to OUTPUT_DIR."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir")
    parser.add_argument("data_file")
    parser.add_argument("output_dir")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    args = parser.parse_args(argv)

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from mtn_sails.training.trainer import precision_for

    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    bf16 = precision_for("cpu", "auto", model.config.hidden_size) == "bf16"
    config = SFTConfig(output_dir=args.output_dir, num_train_epochs=args.epochs,
                       per_device_train_batch_size=args.batch_size, learning_rate=args.learning_rate,
                       max_length=args.max_length, packing=False, bf16=bf16, save_strategy="no",
                       report_to="none", use_cpu=True)
    trainer = SFTTrainer(model=model, args=config, processing_class=tokenizer,
                         train_dataset=Dataset.from_dict(prompt_completion_rows(args.model_dir, args.data_file)))
    trainer.train()
    trainer.save_model(args.output_dir)
    print(f"precision: {'bf16' if bf16 else 'fp32'}")  # session_speed.py reads it for the MFU's peak
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
