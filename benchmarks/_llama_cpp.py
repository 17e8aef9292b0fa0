"""llama.cpp for the benchmarks: llama-cpp-python built from source once into .cache/llama_cpp/site, and GGUF
requantisation. A benchmark dependency only: the product never imports it, and requirements.txt does not
install it (the build takes about 15 minutes on two cores).

The build turns GGML_NATIVE off and names the CPU's vector extensions instead: with GGML_NATIVE=ON on an Intel
Xeon with AMX, llama.cpp's AMX path crashed (segmentation fault) at the first generated token (issue 32).
A helper, not a benchmark (run.py leaves out names that start with "_").
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import LLAMA_CPP_SITE

VERSION = "0.3.36"
BUILD_FILE = LLAMA_CPP_SITE / "mtn_sails_build.json"  # what the build in the folder was made with
MODELS = LLAMA_CPP_SITE.parent / "models"
# CMake option -> the /proc/cpuinfo flag that allows it.
CPU_OPTIONS = {"GGML_AVX": "avx", "GGML_AVX2": "avx2", "GGML_FMA": "fma", "GGML_F16C": "f16c",
               "GGML_AVX512": "avx512f", "GGML_AVX512_VNNI": "avx512_vnni", "GGML_AVX512_VBMI": "avx512vbmi",
               "GGML_AVX512_BF16": "avx512_bf16", "GGML_AVX_VNNI": "avx_vnni"}
# llama.cpp's file types (llama.h, enum llama_ftype) that the benchmarks requantise to.
FILE_TYPES = {"Q8_0": 7, "F16": 1, "Q4_0": 2}


def cmake_args() -> list[str]:
    """GGML_NATIVE off, and each vector extension this CPU has on."""
    cpuinfo = Path("/proc/cpuinfo")
    flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
    return ["-DGGML_NATIVE=OFF", "-DLLAMA_CURL=OFF",
            *(f"-D{option}={'ON' if flag in flags else 'OFF'}" for option, flag in CPU_OPTIONS.items())]


def wanted_build() -> dict:
    """The version and options a build for this machine has."""
    return {"llama_cpp_python": VERSION, "cmake_args": cmake_args()}


def import_llama_cpp():
    """The llama_cpp module, built first where the folder holds no build for this version and CPU."""
    built = json.loads(BUILD_FILE.read_text()) if BUILD_FILE.is_file() else None
    if built != wanted_build():
        print(f"building llama-cpp-python {VERSION} into {LLAMA_CPP_SITE} (minutes, once): "
              f"{' '.join(cmake_args())}", flush=True)
        partial = LLAMA_CPP_SITE.with_name("site.partial")
        shutil.rmtree(partial, ignore_errors=True)
        env = {**os.environ, "CMAKE_ARGS": " ".join(cmake_args()),
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-cache-dir", "--no-deps",
                        "--target", str(partial), f"llama-cpp-python=={VERSION}", "diskcache==5.6.3"],
                       env=env, check=True)
        (partial / BUILD_FILE.name).write_text(json.dumps(wanted_build()))
        shutil.rmtree(LLAMA_CPP_SITE, ignore_errors=True)
        partial.rename(LLAMA_CPP_SITE)  # a build cut short never passes for a finished one
        importlib.invalidate_caches()
    import llama_cpp

    return llama_cpp


def requantised(source: Path, file_type: str) -> Path:
    """`source` requantised to `file_type` (Q8_0, F16, Q4_0) with llama.cpp's own quantiser, cached."""
    target = MODELS / f"{source.name.split('.')[0]}.{file_type}.gguf"
    if target.exists():
        return target
    llama_cpp = import_llama_cpp()
    target.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FILE_TYPES[file_type]
    params.allow_requantize = True  # the shipped file is already Q4_1: its values, stored at more bits
    partial = target.with_name(target.name + ".partial")
    if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), params) != 0:
        raise RuntimeError(f"llama.cpp could not requantise {source} to {file_type}")
    partial.rename(target)
    return target
