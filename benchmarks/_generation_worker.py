"""One generation runtime, loaded once in a process of its own so that its peak memory is its own.

    python benchmarks/_generation_worker.py llama.cpp MODEL.gguf THREADS
    python benchmarks/_generation_worker.py onnxruntime MODEL.onnx THREADS

Reads one JSON request a line on stdin, {"prompt_ids": [...], "new_tokens": N}, and answers each on stdout with
{"first_token_s", "seconds", "token_ids"}: greedy, exactly N new tokens (eos does not stop it, so every arm
times the same work), prompt time included; at the end of stdin it answers {"peak_rss_bytes"}. Started by
llama_cpp_speed.py, which interleaves the workers' rounds. A helper, not a benchmark (run.py leaves out names
that start with "_").
"""
from __future__ import annotations

import json
import sys
import time
from typing import Callable

from common import peak_rss_bytes

Generator = Callable[[list[int], int], tuple[float, list[int]]]  # (first-token seconds, tokens)


def llama_cpp_generator(model_path: str, threads: int) -> Generator:
    """llama-cpp-python's Llama.generate, greedy, its KV cache cleared before each prompt."""
    from _llama_cpp import import_llama_cpp

    llama_cpp = import_llama_cpp()
    llm = llama_cpp.Llama(model_path=model_path, n_ctx=2048, n_batch=512, n_threads=threads,
                          n_threads_batch=threads, verbose=False)

    def run(prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
        llm.reset()  # else generate reuses the cached prefix of the previous round's identical prompt
        started, first, tokens = time.perf_counter(), 0.0, []
        for token in llm.generate(prompt_ids, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0,
                                  reset=True):
            first = first or time.perf_counter() - started
            tokens.append(token)
            if len(tokens) == new_tokens:
                break
        return first, tokens
    return run


def onnxruntime_generator(model_path: str, threads: int) -> Generator:
    """The product's `generate` decoder on onnxruntime (IO binding, preallocated past, its session options)."""
    from mtn_sails.runtime.decode_loop import decode
    from mtn_sails.runtime.decoders import OnnxDecoder
    from mtn_sails.runtime.onnx_session import onnx_session

    decoder = OnnxDecoder(onnx_session(model_path, threads))

    def run(prompt_ids: list[int], new_tokens: int) -> tuple[float, list[int]]:
        started, first = time.perf_counter(), []
        decoded = decode(decoder, prompt_ids, new_tokens, eos_token_id=None,
                         on_token=lambda _: first or first.append(time.perf_counter() - started))
        return first[0], decoded.token_ids
    return run


RUNTIMES = {"llama.cpp": llama_cpp_generator, "onnxruntime": onnxruntime_generator}


def main(argv: list[str]) -> int:
    runtime, model_path, threads = argv
    generator = RUNTIMES[runtime](model_path, int(threads))
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        started = time.perf_counter()
        first, tokens = generator(request["prompt_ids"], request["new_tokens"])
        print(json.dumps({"first_token_s": first, "seconds": time.perf_counter() - started, "token_ids": tokens}),
              flush=True)
    print(json.dumps({"peak_rss_bytes": peak_rss_bytes()}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
