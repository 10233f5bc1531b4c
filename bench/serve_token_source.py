"""``trillama serve`` with :mod:`bench.token_source` in place of the model runner (bench only).

The server is the unmodified product: only the command line of the runner processes it spawns is
changed, from ``python -m trillama.actors.runner`` to ``python bench/token_source.py`` (same
arguments; by path, so that a checkout measured with ``--checkout`` runs this very source). Started by ``bench/server_cost.py --source fixed-rate``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from trillama.actors.runner import client

_spawn = client.spawn
_SOURCE = str(Path(__file__).resolve().parent / "token_source.py")


async def _spawn_token_source(argv, **kwargs):
    argv = list(argv)
    at = argv.index("trillama.actors.runner")
    argv[at - 1:at + 1] = [_SOURCE]  # "-m trillama.actors.runner" → the script, by path
    return await _spawn(argv, **kwargs)


client.spawn = _spawn_token_source

if __name__ == "__main__":
    from trillama.cli.main import main

    sys.argv = ["trillama", "serve"]
    sys.exit(main())
