"""The `mtn-sails` command line: argparse, one handler per command, errors mapped to exit codes.

Heavy libraries (torch, transformers, optimum) are imported inside the handlers that need them, so
`--help` and `validate` stay fast and torch-free.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from dataclasses import dataclass
from typing import Any, Callable

from . import __version__
from .config import (ExportConfig, GenerateConfig, HistoryConfig, PipelineConfig, TrainConfig,
                     ValidateConfig, WebConfig)
from .console import mute, warn
from .errors import EXIT_BUG, EXIT_INTERRUPTED, EXIT_OK, InputError, MissingDependency, SailsError


def run_validate(config: ValidateConfig) -> int:
    """Print the data-quality report; exit 0, or 3 on errors (and warnings with --strict)."""
    from .data.quality import print_report, validate_file

    report = validate_file(config.data_file, max_length=config.max_length,
                           preference_as=config.preference_as)
    print_report(report, as_json=config.json)
    return report.exit_code(strict=config.strict)


def run_train(config: TrainConfig) -> int:
    """One continuous-training session into --output-dir."""
    from .training.session import train

    train(config)
    return EXIT_OK


def run_pipeline(config: PipelineConfig) -> int:
    """Validate, train, export to ONNX, check parity."""
    from .recipes import pipeline

    pipeline(config)
    return EXIT_OK


def run_export(config: ExportConfig) -> int:
    """Export the trained model to ONNX and check parity."""
    from .runtime.export import export

    export(config)
    return EXIT_OK


def run_generate(config: GenerateConfig) -> int:
    """Stream a completion of the prompt to the terminal."""
    from .runtime.generation import generate

    generate(config, stream=sys.stdout)
    return EXIT_OK


def run_history(config: HistoryConfig) -> int:
    """Print the sessions the model went through."""
    from .model_dir.history_table import print_history

    print_history(config.output_dir, as_json=config.json, plot=config.plot)
    return EXIT_OK


def run_web(config: WebConfig) -> int:
    """Write the offline page that runs the ONNX model in the browser; --serve serves it."""
    from .runtime.web import web

    web(config)
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
                     "  mtn-sails train --data-file dataset2.json --epochs 2   # continues at 1e-5 (2e-4 after scratch)\n"
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
                       "mtn-sails history\n  mtn-sails history --output-dir ./my_model --json\n"
                       "  mtn-sails history --plot   # writes loss_curve.png and forgetting.png"),
    "web": Command(WebConfig, run_web, "write an offline web page that runs the ONNX model in the browser",
                   "mtn-sails web --serve   # writes ./web_app, serves it at http://127.0.0.1:8000/\n"
                   "  mtn-sails web --onnx-output ./my_onnx --out ./site   # then copy ./site to any static host"),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argument_type(hint: Any) -> type:
    args = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return args[0] if args else hint


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type,
                         defaults: dict[str, Any] | None = None) -> None:
    """One flag per dataclass field, its help taken from the field's metadata; `defaults` (from
    --config) replace the field defaults, and the command line still wins over them."""
    defaults = defaults or {}
    hints = typing.get_type_hints(config_class)
    for item in dataclasses.fields(config_class):
        extras = {k: v for k, v in item.metadata.items() if k != "help"}
        if item.name in defaults:
            extras.pop("required", None)
        value_type = _argument_type(hints[item.name])
        default = defaults.get(item.name, item.default)
        hidden = default is None or default is False or extras.get("required")
        help_text = item.metadata.get("help", "") + ("" if hidden else f" (default: {default})")
        if value_type is bool:
            parser.add_argument(_flag(item.name), action="store_true", default=default, help=help_text)
        else:
            parser.add_argument(_flag(item.name), type=value_type, default=default, help=help_text,
                                metavar=item.name.upper(), **extras)


def load_config_file(path: str, config_class: type) -> dict[str, Any]:
    """Option values from a YAML or JSON file (keys are option names), checked against the command."""
    import json

    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            values = json.load(handle) if path.endswith(".json") else yaml.safe_load(handle)
    except OSError as error:
        raise InputError(f"--config {path}: cannot read ({error.strerror or error})") from None
    except (ValueError, yaml.YAMLError) as error:
        raise InputError(f"--config {path}: not valid {'JSON' if path.endswith('.json') else 'YAML'} "
                         f"({str(error).splitlines()[0]})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise InputError(f"--config {path}: expected a mapping of option names to values")
    hints = typing.get_type_hints(config_class)
    settled = {}
    for key, value in values.items():
        name = str(key).lstrip("-").replace("-", "_")
        if name not in hints:
            raise InputError(f"--config {path}: unknown option '{key}' for this command")
        value_type = _argument_type(hints[name])
        try:
            settled[name] = value if value is None or isinstance(value, value_type) else value_type(value)
        except (TypeError, ValueError):
            raise InputError(f"--config {path}: option '{key}' must be {value_type.__name__}, got {value!r}") from None
    return settled


def build_parser(command_defaults: dict[str, dict[str, Any]] | None = None) -> argparse.ArgumentParser:
    """The full argparse parser with one sub-parser per command (`command_defaults`: from --config)."""
    command_defaults = command_defaults or {}
    parser = argparse.ArgumentParser(
        prog="mtn-sails",
        description="Fine-tune a small language model on your own data, session after session, "
                    "and export it to ONNX.",
        epilog="examples:\n  mtn-sails validate --data-file data.json\n"
               "  mtn-sails pipeline --data-file data.json --model-name scratch\n"
               "  mtn-sails generate --prompt 'Hello'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                     help="one of these (each has its own --help):")
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.summary, description=command.summary,
                                  epilog="examples:\n  " + command.examples,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_config_arguments(sub, command.config, command_defaults.get(name))
        sub.add_argument("--config", metavar="FILE",
                         help="YAML or JSON file of options (names as the flags); flags given here win")
        noise = sub.add_mutually_exclusive_group()
        noise.add_argument("--quiet", action="store_true", help="print only errors and the command's result")
        noise.add_argument("--verbose", action="store_true", help="also show the libraries' own logging")
    return parser


def config_from_args(config_class: type, args: argparse.Namespace) -> Any:
    """The command's config dataclass from parsed arguments (nothing below the CLI sees a Namespace)."""
    return config_class(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config_class)})


def config_file_defaults(argv: list[str]) -> dict[str, dict[str, Any]]:
    """{command: option values} from the --config file named in argv, read before parsing so that
    options it sets (even required ones) count as given."""
    command = next((arg for arg in argv if arg in COMMANDS), None)
    path = next((argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"), None)
    path = path or next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
    if command is None or path is None:
        return {}
    return {command: load_config_file(path, COMMANDS[command].config)}


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser(config_file_defaults(argv)).parse_args(argv)
        command = COMMANDS[args.command]
        if args.verbose:
            os.environ["TRANSFORMERS_VERBOSITY"] = "info"
        mute(args.quiet)
        return command.handler(config_from_args(command.config, args))
    except SailsError as error:
        warn(f"error: {error}")
        return error.exit_code
    except ModuleNotFoundError as error:  # heavy requirements are imported lazily, so only here
        missing = MissingDependency.from_import_error(error)
        if missing is None:
            raise
        warn(f"error: {missing}")
        return missing.exit_code
    except KeyboardInterrupt:
        warn("interrupted: nothing was changed (an interrupted session can continue with --resume)")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return EXIT_OK
    except MemoryError:
        warn("error: out of memory; try a smaller --batch-size or --max-length")
        return EXIT_BUG
    finally:
        mute(False)
