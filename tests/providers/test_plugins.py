"""Third-party providers through the ``gtl_nb.providers`` entry-point group.

A tiny plugin distribution is installed into a temporary directory (its code and its
``*.dist-info/entry_points.txt``, exactly what pip writes) and used from a fresh interpreter through
``client.providers()`` and ``client.complete()``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

PLUGIN_CODE = textwrap.dedent(
    '''
    from gtl_nb.protocol import Done, ModelInfo, Token, Usage


    class ShoutProvider:
        """Answers with the last user message in capitals."""

        name = "shout"
        offline = True

        def models(self):
            return [ModelInfo(name="shout-1", supports_functions=False)]

        def generate(self, request):
            text = (request.messages[-1].content or "").upper()
            yield 0.0, Token(session_id=request.session_id, text=text)
            yield 0.0, Usage(session_id=request.session_id, tokens_in=1, tokens_out=1, cost=0.0)
            yield 0.0, Done(session_id=request.session_id, model="shout-1")
    '''
)


def install_plugin(target: Path) -> None:
    (target / "gtl_shout.py").write_text(PLUGIN_CODE)
    info = target / "gtl_shout-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gtl-shout\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[gtl_nb.providers]\nshout = gtl_shout:ShoutProvider\n")
    (info / "RECORD").write_text("")


def test_an_installed_plugin_is_listed_and_answers(tmp_path):
    install_plugin(tmp_path)
    script = textwrap.dedent(
        """
        import json, gtl_nb
        client = gtl_nb.connect(providers={"loud": {"type": "shout"}}, environ={})
        infos = {i.provider: [m.name for m in i.models] for i in client.providers()}
        answer = client.complete("loud:shout-1", "hello plugin")
        print(json.dumps({"infos": infos, "text": answer.text, "provider": answer.provider,
                          "type": answer.provider_type}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["infos"]["loud"] == ["shout-1"]
    assert out["text"] == "HELLO PLUGIN"
    assert out["provider"] == "loud" and out["type"] == "shout"


def test_an_unknown_provider_type_names_the_known_ones():
    import pytest

    import gtl_nb
    from gtl_nb.protocol import ConfigurationError

    with pytest.raises(ConfigurationError, match="openai"):
        gtl_nb.connect(providers={"x": {"type": "no-such-type"}}, environ={}).complete("x:m", "hi")
