"""The data-quality report behind `validate`: one pass of the checks over the records, scored and printed.

The checks themselves (what is flagged, how, and the streaming pass) live in quality_checks.py and
are explained, with an example and a fix, in docs/DATA_QUALITY_GUIDE.md.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .. import console
from .files import RecordError, SkippedRecord, scan
from ..errors import EXIT_INVALID_DATA, EXIT_OK
from .quality_checks import (CHECKS, MIN_RECORDS, Finding, Inspector, ShapeCount,  # noqa: F401 (public names)
                             estimate_tokens, near_duplicate_key)

ERROR_SCORE_CAP = 40  # any error caps the score here: the file cannot be trained on as it is


@dataclass
class QualityReport:
    """What `validate` found in one data file."""

    path: str
    record_count: int  # records read, usable or not
    shape: str  # shape of the first usable record, e.g. "alpaca", "messages", "text"; "" when none
    findings: list[Finding]
    score: int  # 0-100, see score()
    max_length: int
    usable_count: int = 0
    tokens_total: int = 0  # estimated, template and end-of-text tokens included
    tokens_mean: float = 0.0
    tokens_p95: int = 0
    tokens_max: int = 0
    shapes: list[ShapeCount] = field(default_factory=list)  # every shape recognised, in order of appearance

    def errors(self) -> list[Finding]:
        """The findings that make the file unusable for training."""
        return [f for f in self.findings if f.severity == "error"]

    def warnings(self) -> list[Finding]:
        """The findings worth fixing that do not stop training."""
        return [f for f in self.findings if f.severity == "warning"]

    def exit_code(self, strict: bool = False) -> int:
        """0 when clean or only warned; 3 with errors, or with warnings when `strict`."""
        if self.errors() or (strict and self.warnings()):
            return EXIT_INVALID_DATA
        return EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        """The report as plain JSON-ready data."""
        return {**asdict(self), "errors": len(self.errors()), "warnings": len(self.warnings())}


def score(findings: list[Finding], record_count: int) -> int:
    """100 minus, per finding, weight x sqrt(fraction of records affected); any error caps it at 40."""
    points = 100.0
    for finding in findings:
        check = CHECKS[finding.code]
        fraction = 1.0 if not check.per_record or record_count == 0 else min(1.0, finding.count / record_count)
        points -= check.weight * math.sqrt(fraction)
    if any(f.severity == "error" for f in findings):
        points = min(points, ERROR_SCORE_CAP)
    return max(0, min(100, round(points)))


def validate_file(path: str | os.PathLike, max_length: int = 512,
                  preference_as: str | None = None) -> QualityReport:
    """Run every check over the file; unreadable files raise InputError/DataFormatError.

    `preference_as="chosen"` checks preference data as the supervised data it trains (its chosen side).
    """
    inspector = Inspector(max_length)
    for item in scan(path, preference_as):
        if isinstance(item, RecordError):
            inspector.add_error(item)
        elif isinstance(item, SkippedRecord):
            inspector.add_skipped(item)
        else:
            inspector.add(item)
    findings = inspector.findings()
    tokens = sorted(inspector.tokens)
    usable = len(tokens)
    return QualityReport(
        path=str(path), record_count=inspector.record_count, shape=inspector.shape, findings=findings,
        score=score(findings, inspector.record_count), max_length=max_length, usable_count=usable,
        tokens_total=sum(tokens), tokens_mean=round(sum(tokens) / usable, 1) if usable else 0.0,
        tokens_p95=tokens[min(usable - 1, int(0.95 * usable))] if usable else 0,
        tokens_max=tokens[-1] if usable else 0, shapes=list(inspector.shapes.values()))


_COLORS = {"error": "\033[31m", "warning": "\033[33m", "ok": "\033[32m", "dim": "\033[2m"}


def _paint(text: str, color: str, enabled: bool) -> str:
    return f"{_COLORS[color]}{text}\033[0m" if enabled else text


def _shape_line(counted: ShapeCount) -> str:
    indexes = ", ".join(map(str, counted.first_indexes)) + (", ..." if counted.count > len(counted.first_indexes) else "")
    return f"{counted.shape} {counted.count:,} (records {indexes})"


def format_report(report: QualityReport, color: bool = False) -> list[str]:
    """The report as terminal lines: a header, one row per finding with its fix, a verdict."""
    shape = report.shape or "-"
    lines = [f"📋 Data quality report for {report.path}",
             f"   records {report.record_count:,} (usable {report.usable_count:,}) | shape {shape} | "
             f"score {report.score}/100",
             f"   tokens (estimated) total {report.tokens_total:,} | mean {report.tokens_mean:,} | "
             f"p95 {report.tokens_p95:,} | max {report.tokens_max:,} | --max-length {report.max_length}"]
    if len(report.shapes) > 1 or any(counted.shape != report.shape for counted in report.shapes):
        lines.append("   shapes: " + " | ".join(_shape_line(counted) for counted in report.shapes))
    if report.findings:
        lines += ["", f"   {'SEVERITY':<8} {'COUNT':>9}  {'CHECK':<23} FIRST RECORDS"]
    for finding in report.findings:
        indexes = ", ".join(map(str, finding.first_indexes))
        if indexes and finding.count > len(finding.first_indexes):
            indexes += ", ..."
        lines.append(f"   {_paint(f'{finding.severity:<8}', finding.severity, color)} {finding.count:>9,}  "
                     f"{finding.code:<23} {indexes or '-'}")
        lines.append(_paint(f"{'':>24}{finding.message}", "dim", color))
        lines.append(_paint(f"{'':>24}fix: {finding.how_to_fix}", "dim", color))
    errors, warnings = len(report.errors()), len(report.warnings())
    lines.append("")
    if errors:
        lines.append(_paint(f"❌ {errors} error(s), {warnings} warning(s): fix the errors before training",
                            "error", color))
    elif warnings:
        lines.append(_paint(f"⚠️  {warnings} warning(s), no errors: the file can be trained on "
                            "(--strict makes warnings fail)", "warning", color))
    else:
        lines.append(_paint("✅ No problems found", "ok", color))
    return lines


def print_report(report: QualityReport, as_json: bool = False, as_result: bool = True) -> None:
    """Print the report to stdout: a table for people, or JSON (`as_json`) for programs.

    `as_result=False` prints it as progress (dropped by --quiet), as `pipeline` does.
    """
    write = console.show if as_result else console.say
    if as_json:
        write(json.dumps(report.to_dict(), indent=2))
        return
    color = console.use_color()
    for line in format_report(report, color):
        write(line)
