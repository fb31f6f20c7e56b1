"""The committed gRPC modules are exactly what ``gtl.proto`` generates, and ``import gtl_nb`` stays free of them."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from gtl_nb.transports.grpc import generate

GRPC_DIR = generate.SOURCE_ROOT / generate.PROTO.parent


def committed_tool_version() -> str:
    source = (GRPC_DIR / "gtl_pb2_grpc.py").read_text(encoding="utf-8")
    found = re.search(r"^GRPC_GENERATED_VERSION = '([^']+)'$", source, re.MULTILINE)
    assert found, "gtl_pb2_grpc.py does not say which grpcio-tools generated it"
    return found.group(1)


def test_generated_modules_are_up_to_date(tmp_path):
    from grpc_tools import grpc_version

    committed = committed_tool_version()
    assert committed == grpc_version.VERSION, (
        f"the committed modules come from grpcio-tools {committed}, this environment has {grpc_version.VERSION}: "
        "install the version pyproject.toml pins, or bump the pin and regenerate on purpose"
    )
    written = generate.generate(tmp_path)
    assert [path.name for path in written] == list(generate.GENERATED)
    stale = [path.name for path in written if path.read_bytes() != (GRPC_DIR / path.name).read_bytes()]
    assert not stale, f"{stale} differ from gtl.proto: run python -m gtl_nb.transports.grpc.generate"


def test_generate_reports_a_protoc_failure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(generate, "PROTO", generate.PROTO.with_name("missing.proto"))
    assert generate.main(["--out", str(tmp_path)]) == 1
    assert "protoc failed" in capsys.readouterr().err


@pytest.mark.parametrize("statement", ["import gtl_nb", "import gtl_nb, gtl_nb.protocol", "import gtl_nb.transports"])
def test_importing_the_package_imports_no_grpc_or_protobuf(statement):
    script = (
        f"import sys\n{statement}\n"
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'grpc_tools', 'google'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
