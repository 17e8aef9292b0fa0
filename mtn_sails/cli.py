"""The `mtn-sails` command line: argparse, one handler per command, errors mapped to exit codes.

Heavy libraries (torch, transformers, optimum) are imported inside the handlers that need them, so
`--help` and `validate` stay fast and torch-free.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable

from . import __version__
from .config import (ExportConfig, GenerateConfig, HistoryConfig, PipelineConfig, TrainConfig,
                     ValidateConfig)
from .console import warn
from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, SailsError


def run_validate(config: ValidateConfig) -> int:
    """Print the data-quality report; exit 0, or 3 on errors (and warnings with --strict)."""
    from .quality import print_report, validate_file

    report = validate_file(config.data_file, max_length=config.max_length)
    print_report(report, as_json=config.json)
    return report.exit_code(strict=config.strict)


def run_train(config: TrainConfig) -> int:
    """One continuous-training session into --output-dir."""
    from .recipes import train

    train(config)
    return EXIT_OK


def run_pipeline(config: PipelineConfig) -> int:
    """Validate, train, export to ONNX, check parity."""
    from .recipes import pipeline

    pipeline(config)
    return EXIT_OK


def run_export(config: ExportConfig) -> int:
    """Export the trained model to ONNX and check parity."""
    from .exporter import export

    export(config)
    return EXIT_OK


def run_generate(config: GenerateConfig) -> int:
    """Stream a completion of the prompt to the terminal."""
    from .generate import generate

    generate(config, stream=sys.stdout)
    return EXIT_OK


def run_history(config: HistoryConfig) -> int:
    """Print the sessions the model went through."""
    from .history import print_history

    print_history(config.output_dir, as_json=config.json)
    return EXIT_OK


@dataclass(frozen=True)
class Command:
    """One sub-command: its options, its handler and its help."""

    config: type
    handler: Callable[[Any], int]
    summary: str
    examples: str


COMMANDS: dict[str, Command] = {
    "validate": Command(ValidateConfig, run_validate, "check a data file's quality (no model needed)",
                        "mtn-sails validate --data-file examples/programming_basics.json\n"
                        "  mtn-sails validate --data-file data.jsonl --json --strict"),
    "train": Command(TrainConfig, run_train, "train, continuing the model in --output-dir if there is one",
                     "mtn-sails train --data-file dataset1.json --epochs 3\n"
                     "  mtn-sails train --data-file dataset2.json --epochs 2   # continues at 1e-5\n"
                     "  mtn-sails train --data-file data.json --model-name scratch   # offline base"),
    "pipeline": Command(PipelineConfig, run_pipeline, "validate, train, export to ONNX, check parity",
                        "mtn-sails pipeline --data-file programming_basics.json --epochs 3\n"
                        "  mtn-sails pipeline --data-file web_development.json --epochs 2\n"
                        "  mtn-sails pipeline --data-file d.json --output-dir ./my_model --onnx-output ./my_onnx"),
    "export": Command(ExportConfig, run_export, "export a trained model to ONNX (with a parity check)",
                      "mtn-sails export\n  mtn-sails export --output-dir ./my_model --onnx-output ./my_onnx --quantize"),
    "generate": Command(GenerateConfig, run_generate, "generate text from the ONNX (default) or trained model",
                        "mtn-sails generate --prompt 'What is a variable?'\n"
                        "  mtn-sails generate --prompt 'What is SQL?' --backend torch --max-new-tokens 40"),
    "history": Command(HistoryConfig, run_history, "show the training sessions of a model",
                       "mtn-sails history\n  mtn-sails history --output-dir ./my_model --json"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument_type(hint: Any) -> type:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if args else hint


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """One flag per dataclass field, its help taken from the field's metadata."""
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        extras = {k: v for k, v in item.metadata.items() if k != "help"}
        value_type = _argument_type(hints[item.name])
        hidden = item.default is None or item.default is False or extras.get("required")
        default_note = "" if hidden else f" (default: {item.default})"
        help_text = item.metadata.get("help", "") + default_note
        if value_type is bool:
            parser.add_argument(_flag(item.name), action="store_true", help=help_text)
        else:
            parser.add_argument(_flag(item.name), type=value_type, default=item.default, help=help_text,
                                metavar=item.name.upper(), **extras)


def build_parser() -> argparse.ArgumentParser:
    """The full argparse parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="mtn-sails",
        description="Fine-tune a small language model on your own data, session after session, "
                    "and export it to ONNX.",
        epilog="examples:\n  mtn-sails validate --data-file data.json\n"
               "  mtn-sails pipeline --data-file data.json --model-name scratch\n"
               "  mtn-sails generate --prompt 'Hello'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.summary,
                                  epilog="examples:\n  " + command.examples,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(sub, command.config)
    return parser


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """The command's config dataclass from parsed arguments (nothing below the CLI sees a Namespace)."""
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    command = COMMANDS[args.command]
    try:
        return command.handler(config_from_args(command.config, args))
    except SailsError as error:
        warn(f"error: {error}")
        return error.exit_code
    except KeyboardInterrupt:
        warn("interrupted: nothing was changed (an interrupted session can continue with --resume)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except MemoryError:
        warn("error: out of memory; try a smaller --batch-size or --max-length")
        return EXIT_BUG
