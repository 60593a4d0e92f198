"""Shared by the client scripts, which run in their own venvs (no gpt-scratch there, only saved folders).

A client is ``python <script> SPEC.json OUT.json``: it reads the spec the test wrote, runs named checks, and writes
``{"env": {...}, "checks": {name: {"ok": bool, "value": ..., "error": traceback}}}``.  One failing check does not stop
the others; the test that reads a check fails with its traceback.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path


class Client:
    def __init__(self, packages=("torch", "transformers")):
        if len(sys.argv) != 3:
            raise SystemExit(f"usage: {sys.argv[0]} SPEC.json OUT.json")
        self.spec = json.loads(Path(sys.argv[1]).read_text())
        self.out_path = Path(sys.argv[2])
        versions = {}
        for name in packages:
            try:
                versions[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                versions[name] = None
        self.results = {
            "env": {
                "python": sys.version.split()[0],
                "versions": versions,
                # the folder must carry everything: the package itself must not be importable here
                "package_importable": any(
                    importlib.util.find_spec(name) is not None for name in ("modeling_gpt_scratch", "pipelines")
                ),
            },
            "checks": {},
        }
        self.write()

    def write(self):
        tmp = self.out_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results))
        tmp.replace(self.out_path)

    def check(self, name):
        """Decorator: run the function now and record its return value or its traceback under ``name``."""

        def run(fn):
            start = time.perf_counter()
            try:
                value = fn()
                record = {"ok": True, "value": value}
            except BaseException as exc:  # noqa: BLE001 -- every failure is reported, none stops the client
                if isinstance(exc, KeyboardInterrupt):
                    raise
                record = {"ok": False, "error": traceback.format_exc()[-8000:]}
            record["seconds"] = round(time.perf_counter() - start, 3)
            self.results["checks"][name] = record
            self.write()  # a later crash still leaves what was done
            print(f"[client] {name}: {'ok' if record['ok'] else 'FAILED'} ({record['seconds']}s)", flush=True)
            return fn

        return run


def tolist(tensor):
    return tensor.detach().cpu().tolist()
