"""Dollar signs in what the notebook shows: dollars, never LaTeX; code is left as written.

JupyterLab, Notebook 7 and nbconvert's pages run MathJax over rendered output, and it pairs two ``$``
of one run of text into a formula however the markdown escaped them; it never pairs a ``$`` that
stands in an element of its own (``safe_markdown.DOLLAR``).
"""

from __future__ import annotations

import time

import pytest

from gtl_nb.completion import Completion
from gtl_nb.notebook.formats import fenced
from gtl_nb.safe_markdown import DOLLAR, code_span, no_math_html, no_math_markdown


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A $5 budget and $0.15 per 1M", f"A {DOLLAR}5 budget and {DOLLAR}0.15 per 1M"),
        ("already escaped \\$5", f"already escaped {DOLLAR}5"),  # the element replaces the backslash
        ("a backslash then \\\\$5", f"a backslash then \\\\{DOLLAR}5"),
        (  # code spans as <code> elements of the same text (``code_span``): no dollar of theirs is math
            "inline `$HOME` and ``a ` $b`` then $c",
            f"inline <code>&#36;HOME</code> and <code>a &#96; &#36;b</code> then {DOLLAR}c",
        ),
        ("an unclosed ` leaves $1", f"an unclosed ` leaves {DOLLAR}1"),
        (  # a fenced block: one <pre><code> line of entities (no dollar of it is math, nothing of it HTML)
            "```sh\necho $HOME\n```\nafter $1",
            f'\n<pre><code class="language-sh">echo &#36;HOME</code></pre>\n\nafter {DOLLAR}1',
        ),
        (
            "~~~~\n$a\n~~~\n$b\n~~~~\n$c",
            f"\n<pre><code>&#36;a&#10;&#126;&#126;&#126;&#10;&#36;b</code></pre>\n\n{DOLLAR}c",
        ),
        (  # an indented block after a blank line is code, a <pre><code> line alike; a paragraph's indented line is text
            "text\n    still text $1\n\n    code $2\nback $3",
            f"text\n    still text {DOLLAR}1\n\n\n<pre><code>code &#36;2</code></pre>\n\nback {DOLLAR}3",
        ),
        ("math as \\(x^2\\) stays", "math as \\(x^2\\) stays"),
        ("no dollars at all", "no dollars at all"),
    ],
)
def test_no_math_markdown_escapes_dollars_outside_code(text, expected):
    assert no_math_markdown(text) == expected


def test_no_math_markdown_is_linear_on_hostile_input():
    text = "x " + "`" * 20000 + "$" + " `" * 20000 + "\\" * 20000 + "$" + "``` " * 5000
    started = time.monotonic()
    assert no_math_markdown(text).count(DOLLAR) == 2
    assert time.monotonic() - started < 1


def test_html_and_code_spans():
    assert no_math_html("<b>$1</b>") == f"&lt;b&gt;{DOLLAR}1&lt;/b&gt;"
    assert code_span("f(x)") == "<code>f&#40;x&#41;</code>" and code_span("a`b") == "<code>a&#96;b</code>"
    assert code_span("a|b\n[x](y)") == "<code>a&#124;b&#10;&#91;x&#93;&#40;y&#41;</code>"  # nothing read, all shown
    assert fenced("has ``` inside", "text") == "````text\nhas ``` inside\n````"


def test_a_completion_renders_its_dollars_as_dollars_and_keeps_its_text():
    answer = Completion(text="It costs $5, or $0.15 per 1M.", session_id="s", provider="p", model=None,
                        finish_reason="stop")  # fmt: skip
    markdown = answer._repr_markdown_()
    assert "$" not in markdown and f"{DOLLAR}5" in markdown
    assert answer.text == "It costs $5, or $0.15 per 1M." and "$5" in str(answer)


def test_a_failed_request_has_no_footer_of_question_marks():
    failed = Completion(text="", session_id="s", provider=None, model=None, finish_reason=None)
    assert failed.footer() == ""
    assert "<sub>" not in failed._repr_markdown_()
