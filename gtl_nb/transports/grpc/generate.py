"""Regenerate the Python modules of ``gtl.proto`` with the protoc bundled in ``grpcio-tools``.

    python -m gtl_nb.transports.grpc.generate            # rewrite gtl_pb2.py, gtl_pb2.pyi, gtl_pb2_grpc.py
    python -m gtl_nb.transports.grpc.generate --out DIR  # write them under DIR/gtl_nb/transports/grpc/

The proto is compiled by its path from the directory that holds ``gtl_nb``, so the generated
modules import each other as ``gtl_nb.transports.grpc.gtl_pb2`` and the descriptor is registered
as ``gtl_nb/transports/grpc/gtl.proto`` (a name no other package's ``gtl.proto`` can clash with).
The output depends only on the ``grpcio-tools`` version, which the project pins for that reason;
``tests/transports/test_grpc_generated.py`` fails when the committed modules are stale.
"""

from __future__ import annotations

import argparse
import sys
from importlib import resources
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[3]
"""The directory that holds the ``gtl_nb`` package: protoc's include root and default output."""
PROTO = Path("gtl_nb", "transports", "grpc", "gtl.proto")
"""The proto's path below ``SOURCE_ROOT`` (its name in the protobuf descriptor pool)."""
GENERATED = ("gtl_pb2.py", "gtl_pb2.pyi", "gtl_pb2_grpc.py")
"""The modules protoc writes next to the proto."""


def generate(out: Path = SOURCE_ROOT) -> list[Path]:
    """Compile ``gtl.proto`` into ``out/gtl_nb/transports/grpc/`` and return the files written.

    Raises ``RuntimeError`` when protoc reports an error (it prints the details to stderr).
    """
    from grpc_tools import protoc  # the build-time tool: imported only here

    well_known = resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto, should the proto import one
    target = out / PROTO.parent
    target.mkdir(parents=True, exist_ok=True)
    arguments = [
        "protoc",
        f"--proto_path={SOURCE_ROOT}",
        f"--proto_path={well_known}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        str(SOURCE_ROOT / PROTO),
    ]
    status = protoc.main(arguments)
    if status != 0:
        raise RuntimeError(f"protoc failed with status {status} compiling {PROTO}")
    return [target / name for name in GENERATED]


def main(argv: list[str] | None = None) -> int:
    """The command line: regenerate in place, or under ``--out``."""
    parser = argparse.ArgumentParser(
        prog="python -m gtl_nb.transports.grpc.generate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=SOURCE_ROOT, help="root to write gtl_nb/transports/grpc/ under")
    args = parser.parse_args(argv)
    try:
        written = generate(args.out)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
