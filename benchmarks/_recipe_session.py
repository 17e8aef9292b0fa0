"""The tutorial recipe as a program of its own: what a user writes after reading the Trainer's causal-LM guide.

    python benchmarks/_recipe_session.py MODEL_DIR DATA.json OUTPUT_DIR --max-length 512 --batch-size 8 --epochs 1

Every record is rendered with the template `train` picks for the model (its chat template where it has one,
else the product's prompt template), so both programs train on the same text;
tokenised with padding="max_length" and truncation, collated by DataCollatorForLanguageModeling(mlm=False)
and trained with Trainer defaults (random batches, fp32 on the CPU), then saved. session_speed.py times
this whole process against `python main.py train` on the same file and model (a helper, not a benchmark:
run.py leaves out names that start with "_").
"""
from __future__ import annotations

import argparse

import common  # noqa: F401  (this checkout's mtn_sails on sys.path)


def main(argv: list[str] | None = None) -> int:
    """Fine-tune MODEL_DIR on DATA as the tutorial does and save the result to OUTPUT_DIR."""
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
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, Trainer,
                              TrainingArguments)

    from mtn_sails.data.files import load_records
    from mtn_sails.data.template import settle_template

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(args.model_dir)
    template, _notes = settle_template("auto", None, tokenizer)  # what `train` renders: the chat template if any
    texts = ["".join(s.text + (tokenizer.eos_token if s.ends_turn else "") for s in template.render(record))
             for record in load_records(args.data_file)]
    dataset = Dataset.from_dict({"text": texts}).map(
        lambda batch: tokenizer(batch["text"], padding="max_length", truncation=True, max_length=args.max_length),
        batched=True, remove_columns=["text"])
    training_args = TrainingArguments(output_dir=args.output_dir, num_train_epochs=args.epochs,
                                      per_device_train_batch_size=args.batch_size,
                                      learning_rate=args.learning_rate, report_to="none")
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))
    trainer.train()
    trainer.save_model(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
