"""The `validate` checks: each fires on a crafted record and stays quiet on clean data; score, exit codes, output."""
from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtn_sails.cli import COMMANDS, main
from mtn_sails.errors import EXIT_INVALID_DATA, EXIT_OK, EXIT_UNUSABLE_INPUT, SailsError
from mtn_sails.data.quality import (CHECKS, ERROR_SCORE_CAP, MIN_RECORDS, Finding, QualityReport, estimate_tokens,
                               format_report, near_duplicate_key, print_report, score, validate_file)
from helpers import REPO

REALDATA = REPO / "tests" / "fixtures"
WORDS = ("apple river stone cloud garden window engine ladder forest candle mirror basket violin planet "
         "harbor lantern meadow pepper rocket saddle tunnel velvet walnut yogurt anchor bridge castle "
         "dragon falcon glacier hammer island jungle kettle lemon marble needle orchard pillow quartz").split()


def clean_records(count: int = 60, seed: int = 0) -> list[dict]:
    """Distinct, plain, mid-length question/answer records that no check should flag."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        topic = " ".join(rng.sample(WORDS, 4))
        answer = " ".join(rng.sample(WORDS, 12))
        records.append({"question": f"What should I know about the {topic}?",
                        "answer": f"The short version is that {answer} all matter here."})
    return records


def write_jsonl(directory: Path, records: list, name: str = "data.jsonl") -> Path:
    path = directory / name
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def findings_of(report: QualityReport) -> dict[str, Finding]:
    return {f.code: f for f in report.findings}


def qa(question: str, answer: str) -> dict:
    return {"question": question, "answer": answer}


# --- clean data -------------------------------------------------------------------------------

def test_clean_data_has_no_findings_and_full_score(tmp_path):
    report = validate_file(write_jsonl(tmp_path, clean_records()))
    assert report.findings == []
    assert report.score == 100
    assert (report.record_count, report.usable_count, report.shape) == (60, 60, "question/answer")
    assert report.exit_code(strict=True) == EXIT_OK


@pytest.mark.parametrize("record", [
    qa("How big is a million?", "It is 1,000,000, written 10^6; in 2021-03-15 terms, a long time."),
    qa("What version do I need?", "Use 10.0.19041 or later, listed in section 3.2.1 of the guide."),
    qa("Is a < b when b > a?", "Yes: if a < b then b > a, and AT&T is a company name."),
    qa("What is task-based learning?", "A desk-top approach where tasks drive the lesson for students."),
    qa("How do I write a template string?", "In Python use f'{name}' or str.format with {0} and {1}."),
    qa("How do I write an email address?", "Write the user name, then the at sign, then the domain name."),
    qa("Can you say it in French?", "Bien sûr, voilà : le café est très bon, merci beaucoup mon ami."),
    qa("And in Chinese?", "当然可以，我很高兴为您服务。这是一个完整的中文句子，用于测试。"),
    {"question": "How far is the moon?", "answer": "About 384,400 km (238,855 miles) from the Earth."},
])
def test_near_misses_stay_quiet(tmp_path, record):
    report = validate_file(write_jsonl(tmp_path, clean_records() + [record]))
    assert report.findings == [], [(f.code, f.message) for f in report.findings]


# --- each warning fires on its crafted record ----------------------------------------------------

CRAFTED = {
    "duplicate": [clean_records()[3]],
    "near-duplicate": [{"question": clean_records()[3]["question"].upper() + "!!",
                        "answer": "  " + clean_records()[3]["answer"].replace(" ", "   ") + " 42"}],
    "short": [qa("Hi", "Yo")],
    "over-long": [qa("Tell me everything about the walnut harbor.", "walnut harbor " * 400)],
    "mojibake": [qa("Where did we meet?", "At the cafÃ© near the station, itâ€™s lovely.")],
    "control-chars": [qa("Where is the bell?", "The bell rings here \x07 twice a day, every day.")],
    "markup": [qa("Who are you?", "I am {{name}}, an assistant built by the lantern meadow team.")],
    "secret": [qa("What key do I use?", "Use sk-proj-abcdefghijklmnopqrstuvwxyz012345 in the header.")],
    "personal-data": [qa("How do I reach support?", "Write to jane.doe@example.com any day of the week.")],
    "prompt-equals-response": [qa("The lantern glows over the quiet meadow.", "The lantern glows over the quiet meadow!")],
    "length-imbalance": [qa("Classify the sentiment of this review. " + "The pillow was soft and nice. " * 60,
                            "Good")],
}


@pytest.mark.parametrize("code", sorted(CRAFTED))
def test_each_warning_fires_on_its_record(tmp_path, code):
    report = validate_file(write_jsonl(tmp_path, clean_records() + CRAFTED[code]))
    finding = findings_of(report)[code]
    assert finding.severity == "warning"
    assert finding.count == 1 and finding.first_indexes == [60]
    assert finding.how_to_fix == CHECKS[code].how_to_fix
    assert report.exit_code() == EXIT_OK and report.exit_code(strict=True) == EXIT_INVALID_DATA


@pytest.mark.parametrize("code, answer, example", [
    ("mojibake", "A replacement character \ufffd shows up here in the text.", "\ufffd"),
    ("mojibake", "An emoji decoded as cp1252 looks like ðŸ˜€ in the output here.", "ðŸ"),
    ("markup", "Visit the <div class='x'>page</div> for more about this topic.", "<div class='x'>"),
    ("markup", "Salt &amp; pepper are both found in the kitchen cupboard.", "&amp;"),
    ("markup", "The sentence ends here.<|endoftext|> and then carries on.", "<|endoftext|>"),
    ("markup", "Dear {{ customer.name }}, your order is on its way to you.", "{{ customer.name }}"),
    ("secret", "Here is my key AKIAIOSFODNN7EXAMPLE for the storage bucket.", "AWS access key"),
    ("secret", "Token ghp_" + "a1B2c3D4e5" * 4 + " works for the repository.", "GitHub token"),
    ("secret", "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
     "private key block"),
    ("personal-data", "Call me on (555) 123-4567 after lunch to discuss it.", "phone number"),
    ("personal-data", "Our office line is +44 20 7946 0958 from nine to five.", "phone number"),
])
def test_check_variants(tmp_path, code, answer, example):
    report = validate_file(write_jsonl(tmp_path, clean_records() + [qa("Tell me about it, please.", answer)]))
    finding = findings_of(report)[code]
    assert finding.first_indexes == [60] and example in finding.message, finding.message


def test_duplicates_name_the_first_occurrence(tmp_path):
    records = clean_records()
    report = validate_file(write_jsonl(tmp_path, records + [records[5], records[5], records[9]]))
    finding = findings_of(report)["duplicate"]
    assert (finding.count, finding.first_indexes) == (3, [60, 61, 62])
    assert "record 60 = record 5" in finding.message and "record 62 = record 9" in finding.message
    assert "near-duplicate" not in findings_of(report)  # an exact repeat is not also a near one


def test_near_duplicate_key_ignores_case_spacing_punctuation_digits():
    assert near_duplicate_key("Hello,   World! 42") == near_duplicate_key("hello world")
    assert near_duplicate_key("Straße “quoted” — yes…") == near_duplicate_key("STRASSE quoted yes")
    assert near_duplicate_key("hello world") != near_duplicate_key("hello there world")


def test_over_long_follows_max_length(tmp_path):
    path = write_jsonl(tmp_path, clean_records())
    assert "over-long" not in findings_of(validate_file(path, max_length=512))
    assert findings_of(validate_file(path, max_length=16))["over-long"].count == 60


def test_plain_text_is_packed_so_never_over_long(tmp_path):
    records = [{"text": " ".join(random.Random(i).sample(WORDS, 40)) * 20} for i in range(60)]
    assert "over-long" not in findings_of(validate_file(write_jsonl(tmp_path, records), max_length=64))


def test_estimate_tokens_is_bytes_over_four():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1 and estimate_tokens("abcde") == 2
    assert estimate_tokens("é" * 4) == 2  # 8 UTF-8 bytes
    assert estimate_tokens("ab\ud800") == 2  # a lone surrogate counts 3 bytes, and does not crash


def test_chat_checks(tmp_path):
    chat = {"messages": [{"role": "system", "content": "You are a helpful assistant for gardeners."},
                         {"role": "user", "content": "When should I plant the walnut trees?"},
                         {"role": "assistant", "content": "When should I plant the walnut trees?"}]}
    clean = [{"messages": [{"role": "user", "content": r["question"]},
                           {"role": "assistant", "content": r["answer"]}]} for r in clean_records()]
    report = validate_file(write_jsonl(tmp_path, clean + [chat]))
    assert list(findings_of(report)) == ["prompt-equals-response"]
    assert report.shape == "messages"


def test_file_wide_warnings(tmp_path):
    few = validate_file(write_jsonl(tmp_path, clean_records(10)))
    assert list(findings_of(few)) == ["too-few-records"]
    assert few.findings[0].count == 10 and few.findings[0].first_indexes == []
    text = [{"text": f"The {' '.join(random.Random(i).sample(WORDS, 5))} story."} for i in range(MIN_RECORDS)]
    path = write_jsonl(tmp_path, text, "text.jsonl")
    assert "too-few-tokens" not in findings_of(validate_file(path, max_length=256))
    tiny = findings_of(validate_file(path, max_length=4096))["too-few-tokens"]
    assert "a block is --max-length 4096" in tiny.message
    # Pairs are not packed: each record is its own example, so no block to fill.
    assert "too-few-tokens" not in findings_of(validate_file(write_jsonl(tmp_path, clean_records()), max_length=8192))


# --- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("code, record", [
    ("unknown-shape", {"title": "T", "body": "B"}),
    ("unknown-shape", 42),
    ("mixed-shapes", {"text": "A plain text record among question and answer pairs."}),
    ("empty-field", qa("   ", "An answer to nothing at all.")),
    ("not-a-string", qa("What is null?", None)),
    ("chat-format", {"messages": []}),
    ("chat-no-assistant", {"messages": [{"role": "user", "content": "Hello there?"}]}),
    ("chat-roles", {"messages": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"},
                                 {"role": "assistant", "content": "C"}]}),
    ("invalid-unicode", qa("What is this character?", "A lone surrogate \ud800 from a broken exporter.")),
])
def test_each_error_fires(tmp_path, code, record):
    path = tmp_path / "bad.jsonl"
    lines = [json.dumps(r) for r in clean_records()] + [json.dumps(record)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = validate_file(path)
    finding = findings_of(report)[code]
    assert finding.severity == "error" and finding.first_indexes == [60]
    assert "record 60" in finding.message or code == "invalid-unicode"
    assert report.exit_code() == EXIT_INVALID_DATA
    assert report.score <= ERROR_SCORE_CAP


@pytest.mark.parametrize("content", ["[]", "", '{"data": []}'])
def test_no_records_is_an_error(tmp_path, content):
    path = tmp_path / ("empty.jsonl" if content == "" else "empty.json")
    path.write_text(content, encoding="utf-8")
    report = validate_file(path)
    assert [f.code for f in report.findings] == ["no-records"]
    assert report.score == 0 and report.exit_code() == EXIT_INVALID_DATA


def test_unusable_file_raises_for_the_cli(tmp_path):
    with pytest.raises(SailsError):
        validate_file(tmp_path / "missing.json")


# --- score ------------------------------------------------------------------------------------

def finding(code: str, count: int) -> Finding:
    return Finding(code, CHECKS[code].severity, "m", count, [0])


def test_score_formula():
    assert score([], 100) == 100
    # weight x sqrt(fraction): duplicates (20) on 25% of records lose 10 points.
    assert score([finding("duplicate", 25)], 100) == 90
    assert score([finding("duplicate", 100)], 100) == 80
    assert score([finding("duplicate", 25), finding("markup", 1)], 100) == 89  # 100 - 10 - 10 * 0.1
    assert score([finding("too-few-records", 3)], 3) == 85  # file-wide: full weight
    assert score([finding("empty-field", 1)], 1000) == ERROR_SCORE_CAP  # any error caps the score
    assert score([finding("no-records", 0)], 0) == 0
    assert score([finding(code, 10) for code in CHECKS], 10) == 0  # never below zero


def test_finding_rejects_unknown_severity():
    with pytest.raises(ValueError):
        Finding("duplicate", "fatal", "m", 1)


# --- the command: exit codes, table, JSON ------------------------------------------------------

def test_exit_codes_through_the_cli(tmp_path, capsys):
    clean = write_jsonl(tmp_path, clean_records(), "clean.jsonl")
    warned = write_jsonl(tmp_path, clean_records() + CRAFTED["markup"], "warned.jsonl")
    broken = write_jsonl(tmp_path, clean_records() + [qa("Q?", None)], "broken.jsonl")
    assert main(["validate", "--data-file", str(clean)]) == EXIT_OK
    assert main(["validate", "--data-file", str(clean), "--strict"]) == EXIT_OK
    assert main(["validate", "--data-file", str(warned)]) == EXIT_OK
    assert main(["validate", "--data-file", str(warned), "--strict"]) == EXIT_INVALID_DATA
    assert main(["validate", "--data-file", str(broken)]) == EXIT_INVALID_DATA
    assert main(["validate", "--data-file", str(tmp_path / "nope.json")]) == EXIT_UNUSABLE_INPUT
    assert main(["validate", "--data-file", str(clean), "--max-length", "0"]) == EXIT_UNUSABLE_INPUT
    capsys.readouterr()


def test_table_output(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    path = write_jsonl(tmp_path, clean_records() + CRAFTED["markup"] + [qa("Q?", None)])
    assert main(["validate", "--data-file", str(path)]) == EXIT_INVALID_DATA
    out = capsys.readouterr().out
    assert "\033[" not in out  # not a terminal: no colours
    assert str(path) in out and "records 62 (usable 61)" in out and "shape question/answer" in out
    assert "score " in out and "/100" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("error", "warning"))]
    assert ["error", "1", "not-a-string", "61"] in rows and ["warning", "1", "markup", "60"] in rows
    assert "fix: " + CHECKS["markup"].how_to_fix in out
    assert "1 error(s), 1 warning(s)" in out


def test_colours_only_when_asked():
    report = QualityReport("f.json", 1, "text", [finding("markup", 1)], 90, 512, usable_count=1)
    assert any("\033[33m" in line for line in format_report(report, color=True))
    assert not any("\033[" in line for line in format_report(report, color=False))


def test_clean_verdict(tmp_path, capsys):
    assert main(["validate", "--data-file", str(write_jsonl(tmp_path, clean_records()))]) == EXIT_OK
    assert "No problems found" in capsys.readouterr().out


def test_json_output(tmp_path, capsys):
    path = write_jsonl(tmp_path, clean_records() + CRAFTED["duplicate"] + CRAFTED["secret"])
    assert main(["validate", "--data-file", str(path), "--json"]) == EXIT_OK
    data = json.loads(capsys.readouterr().out)
    assert data["path"] == str(path) and data["record_count"] == 62 and data["shape"] == "question/answer"
    assert data["errors"] == 0 and data["warnings"] == 2 and 0 <= data["score"] < 100
    codes = {f["code"]: f for f in data["findings"]}
    assert codes["duplicate"]["first_indexes"] == [60] and codes["secret"]["count"] == 1
    assert set(codes["secret"]) == {"code", "severity", "message", "count", "first_indexes", "how_to_fix"}
    assert "sk-proj" not in json.dumps(data)  # the report never repeats a secret
    assert data["tokens_total"] > 0 and data["tokens_max"] >= data["tokens_p95"] > 0


def test_validate_imports_no_torch(tmp_path):
    path = write_jsonl(tmp_path, clean_records())
    code = ("import sys; from mtn_sails.cli import main; main(['validate','--data-file',%r]); "
            "print('torch' in sys.modules or 'transformers' in sys.modules)" % str(path))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("command", [[]] + [[name] for name in COMMANDS])
def test_help_of_every_command_exits_0(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_help_from_the_real_script():
    result = subprocess.run([sys.executable, str(REPO / "main.py"), "validate", "--help"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert result.returncode == 0 and "--data-file" in result.stdout and "examples:" in result.stdout


# --- the real data files ----------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("alpaca_en_demo.json", "alpaca"), ("identity.json", "alpaca"),
                                         ("c4_demo.jsonl", "text")])
def test_real_files_pass(name, shape, capsys):
    path = REALDATA / name
    assert main(["validate", "--data-file", str(path)]) == EXIT_OK
    report = validate_file(path)
    assert report.shape == shape and report.errors() == [] and report.usable_count == report.record_count
    capsys.readouterr()


def test_real_files_findings():
    identity = findings_of(validate_file(REALDATA / "identity.json"))
    assert "{{name}}" in identity["markup"].message and identity["markup"].first_indexes == [0, 1, 2, 3, 4]
    alpaca = findings_of(validate_file(REALDATA / "alpaca_en_demo.json"))
    assert alpaca["duplicate"].count == 14 and "over-long" in alpaca
    c4 = findings_of(validate_file(REALDATA / "c4_demo.jsonl"))
    assert "mojibake" in c4 and "over-long" not in c4  # plain text is packed, never truncated


# --- fuzz: any file gives a report or a SailsError, and the report prints -----------------------

records = st.one_of(
    st.text(max_size=60),
    st.fixed_dictionaries({"question": st.text(max_size=40), "answer": st.text(max_size=40)}),
    st.fixed_dictionaries({"messages": st.lists(st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "bot"]), "content": st.text(max_size=30)}),
        max_size=4)}),
    st.dictionaries(st.sampled_from(["text", "prompt", "completion", "x"]), st.none() | st.text(max_size=20)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=8), st.integers(min_value=1, max_value=64))
def test_fuzz_validate_reports_or_raises_sails_error(values, max_length):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "fuzz.jsonl"
        path.write_bytes("".join(json.dumps(v) + "\n" for v in values).encode("utf-8"))
        try:
            report = validate_file(path, max_length=max_length)
        except SailsError:
            return
        assert 0 <= report.score <= 100
        with contextlib.redirect_stdout(io.StringIO()) as out:
            print_report(report, as_json=False)
            print_report(report, as_json=True)
        assert "score" in out.getvalue()


def test_speed_benchmark_quick_form(tmp_path):
    out = tmp_path / "speed.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "validate_speed.py"), "--records", "3000",
                             "--json-out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    figures = json.loads(out.read_text())
    assert figures["records"] == 3000 and figures["exit_code"] == EXIT_OK
    assert figures["wall_s"] > 0 and figures["peak_rss_mb"] > 0 and figures["findings"]["duplicate"] > 0


# --- the record shapes of issue 17: tool calls, preference data, mixed files ----------------------

SEARCH_TOOL = {"name": "search_catalogue", "description": "Search the shop catalogue",
               "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def tool_call_records(count: int, seed: int = 0) -> list[dict]:
    """Well-formed ShareGPT tool-calling chats (LLaMA-Factory's documented layout), all different."""
    rng = random.Random(seed)
    records = []
    for _ in range(count):
        item = " ".join(rng.sample(WORDS, 3))
        found = " ".join(rng.sample(WORDS, 6))
        records.append({
            "conversations": [
                {"from": "human", "value": f"Do you sell a {item} in the shop today?"},
                {"from": "function_call", "value": json.dumps({"name": "search_catalogue",
                                                               "arguments": {"query": item}})},
                {"from": "observation", "value": json.dumps({"results": found.split(), "in_stock": True})},
                {"from": "gpt", "value": f"Yes, we have the {item}: the catalogue lists {found}."},
            ],
            "system": "You are the shop assistant; use the tools to answer.",
            "tools": json.dumps([SEARCH_TOOL]),
        })
    return records


def test_a_tool_calling_sharegpt_file_of_hundreds_of_records_passes(tmp_path, capsys):
    path = write_jsonl(tmp_path, tool_call_records(300))
    assert main(["validate", "--data-file", str(path)]) == EXIT_OK
    report = validate_file(path)
    assert report.findings == [] and report.score == 100, [(f.code, f.message) for f in report.findings]
    assert (report.usable_count, report.shape) == (300, "conversations")
    capsys.readouterr()


@pytest.mark.parametrize("where, code, example", [
    ("arguments", "secret", "API key (sk-...)"),
    ("result", "personal-data", "email address"),
])
def test_checks_look_inside_tool_arguments_and_results(tmp_path, where, code, example):
    records = tool_call_records(60)
    turn = records[7]["conversations"][1 if where == "arguments" else 2]
    value = json.loads(turn["value"])
    if where == "arguments":
        value["arguments"]["api_key"] = "sk-proj-abcdefghijklmnopqrstuvwxyz012345"
    else:
        value["contact"] = "jane.doe@example.com"
    turn["value"] = json.dumps(value)
    finding = findings_of(validate_file(write_jsonl(tmp_path, records)))[code]
    assert finding.first_indexes == [7] and example in finding.message


def test_a_file_mixing_shapes_reports_which_records_are_which(tmp_path, capsys):
    records = clean_records(4) + tool_call_records(3) + [{"messages": [{"role": "user", "content": "Hello there?"},
                                                                       {"role": "assistant", "content": "Hi!"}]}]
    path = write_jsonl(tmp_path, records)
    report = validate_file(path)
    assert [(s.shape, s.count, s.first_indexes) for s in report.shapes] == [
        ("question/answer", 4, [0, 1, 2, 3]), ("conversations", 3, [4, 5, 6]), ("messages", 1, [7])]
    assert findings_of(report)["mixed-shapes"].first_indexes == [4, 5, 6, 7]
    assert main(["validate", "--data-file", str(path)]) == EXIT_INVALID_DATA
    assert ("shapes: question/answer 4 (records 0, 1, 2, 3) | conversations 3 (records 4, 5, 6) | "
            "messages 1 (records 7)") in capsys.readouterr().out
    assert main(["validate", "--data-file", str(path), "--json"]) == EXIT_INVALID_DATA
    assert json.loads(capsys.readouterr().out)["shapes"][1] == {"shape": "conversations", "count": 3,
                                                                 "first_indexes": [4, 5, 6]}


def test_preference_data_is_named_by_validate(tmp_path, capsys):
    records = [{"prompt": f"Describe the {w}.", "chosen": f"The {w} is lovely.", "rejected": "No."} for w in WORDS]
    path = write_jsonl(tmp_path, records)
    assert main(["validate", "--data-file", str(path)]) == EXIT_INVALID_DATA
    out = capsys.readouterr().out
    assert "shapes: preference 40 (records 0, 1, 2, 3, 4, ...)" in out
    assert "preference-data" in out and "pass --preference-as chosen" in out
    chosen = validate_file(path, preference_as="chosen")
    assert chosen.errors() == [] and chosen.shape == "preference" and chosen.usable_count == len(WORDS)


def test_kto_records_labelled_false_are_a_warning_when_training_the_chosen_side(tmp_path):
    records = [{"prompt": f"Describe the {w}.", "completion": f"The {w} is lovely.", "label": i % 4 != 0}
               for i, w in enumerate(WORDS)]
    report = validate_file(write_jsonl(tmp_path, records), preference_as="chosen")
    finding = findings_of(report)["preference-skipped"]
    assert (finding.severity, finding.count, finding.first_indexes[:2]) == ("warning", 10, [0, 4])
    assert report.usable_count == 30 and report.record_count == 40 and report.errors() == []
