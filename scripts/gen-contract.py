"""Compile contracts/HubRegistry.vy into the artifact the code deploys and calls.

    python scripts/gen-contract.py OUT.json      # make contract writes sonm_p2p/chain/

Vyper compiles in-process (PyPI package, no downloaded binary). The output is deterministic
for one compiler version, so make check-contract compiles into a temp file and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import vyper

SOURCE = Path(__file__).resolve().parent.parent / "contracts" / "HubRegistry.vy"


def main(out: str) -> None:
    text = SOURCE.read_text()
    compiled = vyper.compile_code(
        text, contract_path=SOURCE.name, output_formats=["abi", "bytecode"]
    )
    artifact = {
        "contract": "HubRegistry",
        "source": f"contracts/{SOURCE.name}",
        "source_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "compiler": f"vyper {vyper.__version__}",
        "evm_version": "cancun",
        "abi": compiled["abi"],
        "bytecode": compiled["bytecode"],
    }
    Path(out).write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
