"""What `validate` checks and how: the catalogue of checks, the text detectors and the one streaming pass.

Every check is explained, with an example and a fix, in docs/DATA_QUALITY_GUIDE.md. The pass keeps
only hashes, counters and one small number per record, so a file of millions of records validates in
flat memory; no tokenizer is loaded (token counts are estimated, see `estimate_tokens`). The report
built from the pass lives in quality.py.
"""
from __future__ import annotations

import math
import re
import statistics
import string
from array import array
from collections import Counter
from dataclasses import dataclass, field

from .records import ASSISTANT_SIDE, Record, RecordError, SkippedRecord, Turn
from .template import PromptTemplate

FIRST_INDEXES = 5  # record indexes shown per finding
EXAMPLES = 3  # distinct examples quoted per finding
MIN_RECORDS = 50  # fewer examples than this rarely teach a model anything lasting
MIN_TOKENS = 5  # a record with fewer estimated tokens (all fields together, ~16 bytes) is "very short"
BYTES_PER_TOKEN = 4  # GPT-2-style BPE averages about 4 bytes of English text per token
IMBALANCE_MIN_LOG2 = 5.0  # an outlier is >= 32x off the file's typical response/prompt length ratio...
IMBALANCE_MADS = 4.0  # ...and this many robust standard deviations (1.4826 * MAD) from the median
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Check:
    """One data-quality check: what it reports and how much it costs the score."""

    code: str
    severity: str
    weight: float  # points lost when every record is affected (sqrt of the fraction below that)
    title: str
    how_to_fix: str
    per_record: bool = True  # False: the finding concerns the file as a whole (fraction 1)


_ERRORS = (
    Check("no-records", "error", 100, "no usable records",
          "Add records: a JSON array, one JSON object per line (.jsonl), or paragraphs of text (.txt).",
          per_record=False),
    Check("unknown-shape", "error", 40, "records of an unknown shape",
          "Give every record one of the supported shapes: {text}, prompt/completion, question/answer, "
          "input/output, instruction/input/output, messages or conversations (docs/DATA_FORMATS.md)."),
    Check("mixed-shapes", "error", 40, "records whose shape differs from the first record's",
          "Keep one shape per file: convert the odd records, or split the file."),
    Check("empty-field", "error", 40, "records with an empty required field",
          "Fill in or drop the records with empty text."),
    Check("not-a-string", "error", 40, "records with a field that is not a string",
          "Make every text field a JSON string (not null, a number, an array or an object)."),
    Check("chat-format", "error", 40, "chats whose messages are malformed",
          "Each message needs a known role (system/user/assistant/tool, or ShareGPT human/gpt/function_call/"
          "observation), text or text parts, and a loss weight of 0 or 1 on assistant messages only."),
    Check("chat-no-assistant", "error", 40, "chats with no assistant turn",
          "Add the assistant's answer to each chat: the model learns from assistant turns only."),
    Check("chat-roles", "error", 40, "chats whose roles do not alternate user/assistant",
          "Order each chat as an optional system turn, then user, assistant, user, assistant..."),
    Check("tool-format", "error", 40, "chats whose tool calls, tool results or tools are malformed",
          "Give each call a name from the record's tools and JSON-object arguments, follow each call with its "
          "result, and give `tools` as a JSON array of definitions with names."),
    Check("non-text-content", "error", 40, "records with image, audio or other non-text content",
          "MTN Sails trains text-only models: drop the non-text parts, or the records that need them."),
    Check("preference-data", "error", 40, "preference or KTO records (chosen/rejected, true/false labels)",
          "This product trains supervised data: pass --preference-as chosen to train the chosen responses (KTO: "
          "the completions labelled true), or convert the file to prompt/completion pairs."),
    Check("invalid-unicode", "error", 40, "text with lone surrogates (e.g. a JSON \\ud800 escape), not valid Unicode",
          "Fix the escapes in the exporting program: tokenizers cannot encode lone surrogates."),
)
_WARNINGS = (
    Check("duplicate", "warning", 20, "records that repeat an earlier record exactly",
          "Drop the repeats: duplicates are memorised and over-weighted."),
    Check("near-duplicate", "warning", 10,
          "records that repeat an earlier one up to case, spacing, punctuation and digits",
          "Keep one of each group unless the differences matter."),
    Check("short", "warning", 10, f"very short records (fewer than ~{MIN_TOKENS} tokens in all)",
          "Drop them or give them real content: they teach almost nothing."),
    Check("over-long", "warning", 15, "records longer than --max-length tokens (they get truncated)",
          "Split long records, or raise --max-length (costs memory)."),
    Check("mojibake", "warning", 15, "text decoded with the wrong encoding (mojibake)",
          "Re-export the source as UTF-8, or repair the text (e.g. the ftfy library)."),
    Check("control-chars", "warning", 10, "invisible control characters",
          "Remove control characters (keep only tab and newline)."),
    Check("markup", "warning", 10, "markup leftovers (HTML tags, entities, template placeholders)",
          "Render templates and strip HTML before training, or the model will learn to emit them."),
    Check("secret", "warning", 30, "likely secrets (API keys, tokens, private keys)",
          "Remove and rotate the secrets: a model can repeat its training data verbatim."),
    Check("personal-data", "warning", 15, "likely personal data (email addresses, phone numbers)",
          "Remove or mask personal data unless you have the right to train on it."),
    Check("prompt-equals-response", "warning", 20, "records whose response repeats the prompt",
          "Write the real response: the model would learn to echo."),
    Check("length-imbalance", "warning", 5,
          "records whose response/prompt length ratio is an outlier for this file",
          "Check that prompt and response are not truncated, swapped or mis-split."),
    Check("too-few-records", "warning", 15, f"fewer than {MIN_RECORDS} records to learn from",
          "Add more examples; a few dozen rarely change a model for good.", per_record=False),
    Check("too-few-tokens", "warning", 15, "too little text to fill one training block",
          "Add text or lower --max-length: plain text is packed into blocks of --max-length tokens, "
          "and with less than one block many trainers silently train on nothing.", per_record=False),
    Check("preference-skipped", "warning", 5, "KTO records labelled false, left out by --preference-as chosen",
          "Nothing to do if intended: only the completions labelled true are trained."),
)
CHECKS: dict[str, Check] = {check.code: check for check in _ERRORS + _WARNINGS}

# Mojibake: UTF-8 read as Latin-1/cp1252 turns "é" into "Ã©", "’" into "â€™", emoji into "ðŸ...".
_CP1252_HIGH = bytes(range(0x80, 0xA0)).decode("cp1252", errors="ignore")  # € ‚ ƒ „ … † ‡ ˆ ‰ Š ‹ ...
_MOJIBAKE = re.compile(f"[\u00c2\u00c3][\u00a0-\u00bf{_CP1252_HIGH}]|\u00e2[\u0080-\u009f{_CP1252_HIGH}]"
                       "|\u00f0\u0178|[\u0080-\u009f\ufffd]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # tab, newline and carriage return are fine
_HTML_TAGS = ("a|abbr|b|blockquote|body|br|center|code|div|em|font|h[1-6]|head|hr|html|i|img|li|link|"
              "meta|ol|p|pre|script|span|strong|style|sub|sup|table|tbody|td|th|thead|tr|u|ul")
_MARKUP = re.compile(
    rf"</?(?:{_HTML_TAGS})(?:\s[^<>]{{0,200}})?/?>"  # HTML tags
    r"|&(?:amp|lt|gt|quot|apos|nbsp|mdash|ndash|hellip|[lr]squo|[lr]dquo|copy|reg|#\d{1,6}|#x[0-9a-f]{1,6});"
    r"|\{\{\s*[\w.]{1,60}\s*\}\}|\{%.{0,200}?%\}"  # unrendered Jinja/Mustache placeholders
    r"|<\|[\w-]{1,40}\|>",  # special tokens such as <|endoftext|>
    re.IGNORECASE)
_SECRET_HINT = re.compile(r"sk-|AKIA|ASIA|gh[pousr]_|github_pat_|xox[abprs]-|AIza|PRIVATE KEY")
_SECRETS = re.compile(
    r"(?P<api_key>\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,})"
    r"|(?P<aws_key>\b(?:AKIA|ASIA)[0-9A-Z]{16}\b)"
    r"|(?P<github_token>\bgh[pousr]_[A-Za-z0-9]{36,}|\bgithub_pat_\w{22,})"
    r"|(?P<slack_token>\bxox[abprs]-[A-Za-z0-9-]{10,})"
    r"|(?P<google_key>\bAIza[0-9A-Za-z_-]{35})"
    r"|(?P<private_key>-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----)")
_SECRET_NAMES = {"api_key": "API key (sk-...)", "aws_key": "AWS access key", "github_token": "GitHub token",
                 "slack_token": "Slack token", "google_key": "Google API key", "private_key": "private key block"}
_EMAIL = re.compile(r"(?<![\w.+-])[^\W_][\w.+-]{0,63}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63})*\.[A-Za-z]{2,24}\b")
# A cheap scan for runs of digits and separators; only its rare hits go through the precise pattern.
_PHONE_HINT = re.compile(r"[+(\d][\d ().+-]{7,18}\d")
_PHONE = re.compile(r"(?<![\w+.-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)[ .-]?|\d{2,4}[ .-])\d{3,4}[ .-]\d{4}"
                    r"(?![\w-]|\.\d)")
# Near-duplicate key: casefolded text without whitespace, punctuation or digits.
_NEAR_TABLE = str.maketrans("", "", string.whitespace + string.punctuation + string.digits
                            + "\u00a0\u00ab\u00b7\u00bb\u2013\u2014\u2018\u2019\u201c\u201d\u2022\u2026")
_NON_WORD = re.compile(r"[\W\d_]+")


def estimate_tokens(text: str) -> int:
    """Tokens `text` takes in a GPT-2-style byte-level BPE, estimated as UTF-8 bytes / 4 (no tokenizer)."""
    size = len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    return -(-size // BYTES_PER_TOKEN)


def near_duplicate_key(text: str) -> str:
    """`text` casefolded, without whitespace, punctuation or digits: equal keys are near duplicates."""
    key = text.casefold().translate(_NEAR_TABLE)
    return key if key.isascii() else _NON_WORD.sub("", key)


def _template_overhead() -> dict[str, int]:
    """UTF-8 bytes the prompt template adds around a turn of each role (a tool call: per call)."""
    template = PromptTemplate()
    parts = {"system": template.system, "tools": template.tools, "user": template.turn_separator + template.user,
             "tool": template.turn_separator + template.tool_result + template.response_cue,
             "tool_call": template.tool_call, "assistant": ""}
    return {role: len(part.replace("{content}", "").encode("utf-8")) for role, part in parts.items()}


@dataclass
class ShapeCount:
    """How many records of the file have one shape, and the first of them."""

    shape: str
    count: int = 0
    first_indexes: list[int] = field(default_factory=list)


@dataclass
class Finding:
    """One check that fired: how many records it concerns and the first of them."""

    code: str
    severity: str  # "error" | "warning"
    message: str
    count: int  # records affected (for file-wide findings: all of them)
    first_indexes: list[int] = field(default_factory=list)  # 0-based record indexes, first few
    how_to_fix: str = ""

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, got {self.severity!r}")


class Tally:
    """Per check: how many records, the first indexes and a few distinct examples."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.indexes: dict[str, list[int]] = {}
        self.examples: dict[str, list[str]] = {}

    def add(self, code: str, index: int | None, example: str | None = None, count: int = 1) -> None:
        """Count `count` records for the check `code`, keeping the first indexes and examples."""
        self.counts[code] += count
        indexes = self.indexes.setdefault(code, [])
        if index is not None and len(indexes) < FIRST_INDEXES:
            indexes.append(index)
        if example is not None:
            examples = self.examples.setdefault(code, [])
            if len(examples) < EXAMPLES and example not in examples:
                examples.append(example)

    def findings(self) -> list[Finding]:
        """One finding per check that fired, errors first, in the order of CHECKS."""
        found = []
        for check in CHECKS.values():
            if check.code in self.counts:
                examples = self.examples.get(check.code)
                lead = "; e.g. " if check.per_record else ": "
                message = check.title + (lead + ", ".join(examples) if examples else "")
                found.append(Finding(check.code, check.severity, message, self.counts[check.code],
                                     self.indexes[check.code], check.how_to_fix))
        return found


def _sides(record: Record) -> tuple[list[str], list[str]]:
    """(prompt-side texts, response-side texts) of a record; plain text is all response."""
    if record.kind == "text":
        return [], [record.text]
    if record.kind == "pair":
        return [record.prompt], [record.response]
    prompts = [t.content for t in record.turns if not t.is_target]
    return prompts, [t.content for t in record.turns if t.is_target]


class Inspector:
    """Runs every check in one pass over the records, keeping only hashes, counters and numbers."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.tally = Tally()
        self.record_count = 0
        self.shape = ""
        self.exact: dict[int, int] = {}  # hash of the fields -> first record index (64-bit hashes:
        self.near: dict[int, int] = {}  # a false match among 10^6 records has odds ~3e-8)
        self.tokens = array("I")  # estimated tokens per usable record
        self.text_tokens = 0  # tokens of plain-text records, which get packed into blocks
        self.ratio_log2 = array("f")  # response/prompt length ratio of pairs and chats...
        self.ratio_index = array("l")  # ...and the records they belong to
        self.overhead = _template_overhead()
        self.shapes: dict[str, ShapeCount] = {}  # every shape recognised, usable or not

    def _count_shape(self, shape: str, index: int) -> None:
        counted = self.shapes.setdefault(shape, ShapeCount(shape))
        counted.count += 1
        if len(counted.first_indexes) < FIRST_INDEXES:
            counted.first_indexes.append(index)

    def add_error(self, error: RecordError) -> None:
        """Count a record that could not be read as a training example."""
        self.record_count += 1
        self.tally.add(error.code, error.index, f"record {error.index}: {error.reason}")
        if error.shape:
            self._count_shape(error.shape, error.index)

    def add_skipped(self, skipped: SkippedRecord) -> None:
        """Count a record left out on purpose (a KTO record labelled false)."""
        self.record_count += 1
        self.tally.add("preference-skipped", skipped.index, f"record {skipped.index}: {skipped.reason}")

    def add(self, record: Record) -> None:
        """Run the per-record checks on one usable record."""
        self.record_count += 1
        index, add = record.index, self.tally.add
        if not self.shape:
            self.shape = record.shape
        self._count_shape(record.shape, index)
        prompts, responses = _sides(record)
        fields = [t.content for t in record.turns] if record.kind == "chat" else prompts + responses
        text = fields[0] if len(fields) == 1 else "\n".join(fields)

        first = self.exact.setdefault(hash(tuple(fields)), index)
        if first != index:
            add("duplicate", index, f"record {index} = record {first}")
        elif near := near_duplicate_key(text):
            first = self.near.setdefault(hash(near), index)
            if first != index:
                add("near-duplicate", index, f"record {index} ~ record {first}")

        ends = (sum(t.base_role in ASSISTANT_SIDE for t in record.turns) if record.kind == "chat"
                else len(responses))
        tokens = estimate_tokens(text) + ends  # + one end-of-text token per assistant turn
        if record.kind == "text":
            self.text_tokens += tokens  # packed into blocks: never truncated, so never over-long
        else:
            overhead = (sum(map(self._overhead, record.turns)) if record.kind == "chat"
                        else self.overhead["user"])
            tokens += overhead // BYTES_PER_TOKEN
            if tokens > self.max_length:
                add("over-long", index, f"record {index} ~{tokens} tokens")
            self._pair_checks(record, prompts, responses)
        self.tokens.append(min(tokens, 2**32 - 1))
        if len(text) < BYTES_PER_TOKEN * MIN_TOKENS and estimate_tokens(text) < MIN_TOKENS:
            add("short", index, repr(text))
        self._scan_text(index, text)

    def _overhead(self, turn: Turn) -> int:
        """Template bytes around a turn (a tool-call turn holds one call per line)."""
        calls = turn.content.count("\n") + 1 if turn.base_role == "tool_call" else 1
        return self.overhead[turn.base_role] * calls

    def _pair_checks(self, record: Record, prompts: list[str], responses: list[str]) -> None:
        prompt_chars, response_chars = sum(map(len, prompts)), sum(map(len, responses))
        self.ratio_log2.append(math.log2((response_chars + 1) / (prompt_chars + 1)))
        self.ratio_index.append(record.index)
        exchanges = ([(record.prompt, record.response)] if record.kind == "pair" else
                     [(a.content, b.content) for a, b in zip(record.turns, record.turns[1:])
                      if a.role == "user" and b.role == "assistant"])
        for prompt, response in exchanges:
            if abs(len(prompt) - len(response)) <= max(4, len(prompt) // 10) and (
                    near_duplicate_key(prompt) == near_duplicate_key(response)):
                self.tally.add("prompt-equals-response", record.index, repr(response[:40]))
                break

    def _scan_text(self, index: int, text: str) -> None:
        """The checks that search the text; each regex runs only when a cheap test says it may hit."""
        add = self.tally.add
        if not text.isascii():
            if match := _MOJIBAKE.search(text):
                add("mojibake", index, repr(text[max(0, match.start() - 8):match.end() + 8]))
            if match := _SURROGATE.search(text):
                add("invalid-unicode", index, repr(match.group()))
        if match := _CONTROL.search(text):
            add("control-chars", index, repr(match.group()))
        if ("<" in text or "&" in text or "{" in text) and (match := _MARKUP.search(text)):
            add("markup", index, match.group()[:40])
        if _SECRET_HINT.search(text) and (match := _SECRETS.search(text)):
            add("secret", index, _SECRET_NAMES[match.lastgroup])
        if "@" in text and _EMAIL.search(text):
            add("personal-data", index, "email address")
        elif any(_PHONE.search(hint.group()) for hint in _PHONE_HINT.finditer(text)):
            add("personal-data", index, "phone number")

    def _length_imbalance(self) -> None:
        """Flag pairs whose response/prompt length ratio is far from the file's typical one."""
        if len(self.ratio_log2) < 2:
            return
        median = statistics.median(self.ratio_log2)
        spread = 1.4826 * statistics.median(abs(r - median) for r in self.ratio_log2)  # robust std
        limit = max(IMBALANCE_MIN_LOG2, IMBALANCE_MADS * spread)
        for ratio, index in zip(self.ratio_log2, self.ratio_index):
            if abs(ratio - median) > limit:
                side = "shorter" if ratio < median else "longer"
                self.tally.add("length-imbalance", index, f"record {index} response much {side}")

    def _file_wide(self, usable: int) -> None:
        """The checks about the file as a whole; they concern every usable record."""
        if usable == 0:
            self.tally.add("no-records", None, f"{self.record_count} read, none usable", count=self.record_count)
        elif usable < MIN_RECORDS:
            self.tally.add("too-few-records", None, f"{usable} usable", count=usable)
        if self.shape == "text" and 0 < self.text_tokens < self.max_length:
            self.tally.add("too-few-tokens", None, f"~{self.text_tokens} tokens in all, "
                           f"a block is --max-length {self.max_length}", count=usable)

    def findings(self) -> list[Finding]:
        """Every finding of the pass, the file-wide ones included; call once, after the last record."""
        self._length_imbalance()
        self._file_wide(len(self.tokens))
        return self.tally.findings()
