"""A model's text is never live HTML in the notebook's page.

JupyterLab renders the markdown of a session's own outputs with their raw HTML, and nbconvert's HTML
export keeps it: a model repeating ``<img src=x onerror=…>`` (from a document it was asked to
summarise) would run script in the page, which can drive the kernel. ``no_math_markdown`` — what every
answer, table cell and history line goes through — escapes ``<`` and ``&`` outside code and disarms
``javascript:`` links; code is left as written where every renderer shows it literally. Each case is
also rendered by mistune (nbconvert's markdown renderer) to check what a page would get.
"""

from __future__ import annotations

import json
import time
from html import unescape
from html.parser import HTMLParser

import mistune
import pytest
from IPython.utils.capture import capture_output

from gtl_nb.completion import Completion
from gtl_nb.safe_markdown import no_math_html, no_math_markdown

from .conftest import loaded_shell


@pytest.fixture
def ip(tmp_path, monkeypatch):
    yield from loaded_shell(tmp_path, monkeypatch)


HOSTILE = '<img src=x onerror="alert(document.domain)"><script>alert(1)</script>'


def rendered(markdown: str) -> str:
    """The HTML a page gets for ``markdown`` (raw HTML kept, as a trusted output's is), with and without
    GFM's tables, strikethrough and bare URLs (two pages, one after the other)."""
    plain = mistune.create_markdown(escape=False)
    gfm = mistune.create_markdown(escape=False, plugins=["table", "strikethrough", "url"])
    return str(plain(markdown)) + str(gfm(markdown))


class _Elements(HTMLParser):
    """The elements of a page that could run script: an ``img``/``script``/``iframe`` tag, an ``on…``
    attribute, a link or source whose URL is ``javascript:``, ``vbscript:`` or ``data:``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("img", "script", "iframe", "object", "embed"):
            self.live.append(tag)
        for name, value in attrs:
            if name.startswith("on") or (value or "").strip().lower().startswith(("javascript:", "vbscript:", "data:")):
                self.live.append(f"{tag} {name}={value}")


def live_tags(page: str) -> list[str]:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser.live


@pytest.mark.parametrize(
    "text",
    [
        HOSTILE,
        f"Summary:\n\n{HOSTILE}\n\nDone.",
        f"- item\n\n    {HOSTILE}",  # a list item's continuation, not code, though indented
        f"\\`{HOSTILE}`",  # a backslash-escaped backtick opens no code span
        f"``` `\n{HOSTILE}\n```",  # a backtick in the info string: no fence
        f"> quoted {HOSTILE}",
        "[click](javascript:alert(1)) [or](JavaScript\\:alert(2)) [or](jav&#97;script:alert(3))",
        "[ref]: javascript:alert(4)\n\n[see][ref]",
        f"| a | b |\n| --- | --- |\n| {HOSTILE} | x |",
        f"`x\n# {HOSTILE}`",  # a span this reads across lines, a renderer ends at the heading
        f"| a | b |\n| --- | --- |\n| `x | {HOSTILE} ` | y |",  # a table row's "|" inside a span
        f"```\nabc\r```\r{HOSTILE}\n",  # CommonMark's lines end at \r too: the fence closes there
        f"abc\u2028```\n{HOSTILE}\n",  # and not at U+2028: no fence opens there
        f"- a\n  ```\n{HOSTILE}\n```",  # the list item ends, and its fence with it, at the unindented line
        f"`a\\` {HOSTILE} `",  # a backslash in a span is text: the span closes after it
        f" ```\n```\n{HOSTILE}",  # a line that closes a fence opens none
        f"```\n\t```\n```\n{HOSTILE}",  # a tab-indented fence closes nothing
        f"```\n```\x0c\n```\n{HOSTILE}",
        f"```\n\xa0```\n```\n{HOSTILE}",
        f"```\n```~\n{HOSTILE}",
        f"~~~\n~~~`\n{HOSTILE}",
        f'[r]: /u\n"t\n```\n"\n{HOSTILE}',  # a reference title over several lines swallows a fence line
        f"a | b\n--|--\n``` |\n{HOSTILE}",  # a table row, not a fence
        f"\\\\[\n```\n\\\\]{HOSTILE}",  # math JupyterLab takes out before rendering hides a fence
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) [y](vbscript:msgbox)",
        "[x](data:image/svg+xml;base64,PHN2Zz4=) [y](DATA\\:text\\/html,x) [z](data:application/xhtml+xml,x)",
        f"    {HOSTILE}",  # indented code
        f"\t{HOSTILE}\n\n \t{HOSTILE}",
        f"1. a\n\n    {HOSTILE}\n\n    ```\n    {HOSTILE}\n    ```",  # a list item's paragraph and fence
        f"- a\n\n        {HOSTILE}\n\n{HOSTILE}",  # code in an item, then the item ended
        f"1. ```\n{HOSTILE}",  # a fence on the item's own line is text: the line after it too
        f"- a\n  ```\n  x\n{HOSTILE}\n  ```\n{HOSTILE}",  # an unindented line ends the item and its fence
        f"- a\n{HOSTILE}\n- `b\n# {HOSTILE}`",  # a lazy line; a heading in an item
        "- " * 200 + HOSTILE,  # nesting past any stack
        "".join(f"{' ' * (2 * depth)}- {HOSTILE}\n" for depth in range(60)),
        f"- a\n\n\t\t{HOSTILE}\n\n  * `x\n\n  {HOSTILE}`",
        f"10) a\n\n     ~~~\n{HOSTILE}\n     ~~~",
        f"> ```\n> {HOSTILE}\n> ```\n> {HOSTILE}",  # a quote's fence and text
        f"> a `x\n{HOSTILE}\n> ```\n{HOSTILE}\n> > > {HOSTILE}`",  # a lazy line, a fence the next line ends
        ">" * 30 + f" {HOSTILE}\n" + "> " * 12 + f"```\n{HOSTILE}",  # quotes nested past any reader
        f"- > ```\n  > {HOSTILE}\n  > ```\n  >\t{HOSTILE}\n1.\n   ```\n{HOSTILE}",  # a quote in an item; an empty item
    ],
)
def test_hostile_text_renders_as_text(text):
    page = rendered(no_math_markdown(text))
    assert live_tags(page) == [], page


@pytest.mark.parametrize(
    "text",
    [
        '![\\\\(" onerror="alert(1)//\\\\)](x)',
        '![\\begin{x}" onerror="alert(1)//\\end{x}](y)',
        '[x](http://a "\\\\(" onmouseover="alert(1)//\\\\)")',
        f'```"\n{HOSTILE}"\n```',
    ],
)
def test_no_quote_of_the_text_reaches_the_markdown(text):
    """JupyterLab takes math (``\\(…\\)``, ``\\begin{…}``) out before rendering and puts it back after,
    escaping only ``&``, ``<`` and ``>``: inside an image's ``alt`` or a link's title a quote of it would
    end the attribute and add a handler. No quote of the text is left for that: only the code's own class."""
    markdown = no_math_markdown(text)
    assert '"' not in markdown.replace('class="language-', ""), markdown


def test_code_shows_as_written():
    """Code is HTML of this function's own whose text is entities: what the page shows is the code."""
    fenced = "```html\n<b>bold</b> & <i>if a < b</i>\n```\n"
    page = rendered(no_math_markdown(fenced))
    inside = page.split('<pre><code class="language-html">')[1].split("</code></pre>")[0]
    assert unescape(inside) == "<b>bold</b> & <i>if a < b</i>"  # what the browser shows, in code
    spans = no_math_markdown("use `List<int>` or ``a ` <b>``")
    assert spans == "use <code>List&#60;int&#62;</code> or <code>a &#96; &#60;b&#62;</code>"
    assert "<code>List&lt;int&gt;</code>" in rendered(spans)  # what the page shows: List<int>, in code
    page = rendered(no_math_markdown(f"```\n{HOSTILE}\n```"))
    assert unescape(page.split("<pre><code>")[1].split("</code></pre>")[0]) == HOSTILE and live_tags(page) == []
    unclosed = rendered(no_math_markdown(f"```\n{HOSTILE}") + no_math_markdown(f"```\n{HOSTILE}"))
    assert live_tags(unclosed) == []  # an answer ending inside its fence leaves none open for the next


def _shown_code(page: str) -> list[str]:
    """The text of each code element of ``page``, as the browser shows it."""
    return [unescape(piece.split(">", 1)[1].split("</code>")[0]) for piece in page.split("<code")[1:]]


def test_code_in_list_items_and_indented_blocks_shows_as_written():
    """Answers number their steps: a step's paragraphs, spans and fences are indented under its marker
    (often by four spaces), and a block indented four more is code. Each shows as written, in code."""
    answer = (
        "1. **Install**\n\n"
        '    Run `pip install "x<2"` and check `a && b`.\n\n'
        "    ```bash\n"
        '    echo "<hi>" && ls $HOME\n'
        "    ```\n\n"
        "2. Then:\n\n"
        "   - nested `List<int>`\n\n"
        "         if a < b:\n"
        "             pass\n\n"
        "Example, indented:\n\n"
        "    x = y & z  # $1\n"
    )
    page = str(mistune.create_markdown(escape=False)(no_math_markdown(answer)))
    assert _shown_code(page) == [
        'pip install "x<2"',
        "a && b",
        'echo "<hi>" && ls $HOME',
        "List<int>",
        "if a < b:\n    pass",
        "x = y & z  # $1",
    ], page
    assert page.count("<li>") == 3 and "Example, indented" in page.split("</ol>")[1]  # the list ended where it did
    assert live_tags(page) == []


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ('- Option A:\n    ```python\n    x = "<b>"\n    ```\n- Option B', ['x = "<b>"']),  # right after an item's line
        ("- a\n  - b\n    ```\n    x<y\n    ```", ["x<y"]),
        ('10. a\n    ```\n    "x"\n\n    ```', ['"x"\n']),  # an item's content at column four
        ("```make\nall:\n\tgcc -o x x.c\n```", ["all:\n\tgcc -o x x.c"]),  # a recipe keeps its tab
        ("    a\tb\n\tc", ["a\tb\nc"]),  # indented code: its indentation's tab, not its text's
        ("```\rx\ry\r```", ["x\ny"]),  # carriage returns as line breaks (an entity of one shows a space)
        ("-   Run\n    1.   Use\n\n            x = 1\n", []),  # a sub-list's paragraph, not code
        ("> Note:\n> ```\n> x < y\n> ```\n\nafter `a<b`", ["x < y", "a<b"]),  # a quote's fence, then a span
        ("- item\n  > quoted `c<d`\n  > ```\n  > z & w\n  > ```\n- next", ["c<d", "z & w"]),
        ("Text `a\n> b` end", []),  # a quote interrupts the paragraph: no span across it
    ],
)
def test_code_shows_where_it_was_written(text, code):
    page = str(mistune.create_markdown(escape=False)(no_math_markdown(text)))
    assert _shown_code(page) == code, page


def test_an_empty_items_code_and_a_quotes_code_stay_inside_them():
    """An item whose marker stands alone holds the code on the next lines (a blank line before it would end
    the item); a quote holds its fence: each written behind its own marker."""
    for text, inside in (('1.\n   ```\n   "x"\n   ```', "<li><pre>"), ("> ```\n> <b>\n> ```", "<blockquote>\n<pre>")):
        page = str(mistune.create_markdown(escape=False)(no_math_markdown(text)))
        assert inside in page and live_tags(page) == [], page


def test_a_backslash_escape_before_what_is_escaped_shows_the_character():
    """``\\"`` is markdown for ``"``: the backslash would escape the entity's ``&`` and show it as typed."""
    page = rendered(no_math_markdown('Use \\"x\\" or \\<b>, and \\\\<i> & \\&amp;'))
    assert unescape(page.split("</p>")[0]) == '<p>Use "x" or <b>, and \\<i> & &amp;'


def test_the_block_reading_is_linear_on_hostile_input():
    """List items nested without end, fences never closed, markers on every line: linear time."""
    texts = [
        "- " * 50_000 + "`x`",
        "".join(f"{' ' * (depth % 40)}- `a<b`\n" for depth in range(20_000)),
        "1. a\n\n" + "    ```\n" * 20_000,
        "\t" * 50_000 + "x\n" + "    code\n\n" * 10_000,
        ">" * 50_000 + "`a`\n" + "> " * 5_000 + "```\n" + "> > x\n" * 10_000,
    ]
    for text in texts:
        started = time.monotonic()
        markdown = no_math_markdown(text)
        assert time.monotonic() - started < 2, text[:40]
        assert "<code" in markdown and "<b" not in markdown.replace("<br", "")


def test_callers_put_block_text_at_a_lines_start_and_cells_in_one_line():
    """A fence is one only at a line's start: after a label (``**user**: ```html``) it is text, so a
    caller puts the text on a line of its own; a table cell holds no block at all (``md_cell``)."""
    from gtl_nb.notebook.output import md_cell

    answer = f"```html\n{HOSTILE}\n```"
    assert live_tags(rendered(f"**user**:\n\n{no_math_markdown(answer)}")) == []
    assert live_tags(rendered(f"| a |\n| --- |\n| {md_cell(answer)} |")) == []
    assert live_tags(rendered(f"| a |\n| --- |\n| {md_cell('~~~ ' + HOSTILE)} |")) == []


def test_text_outside_code_shows_as_written():
    markdown = no_math_markdown("a <b>tag</b> & an &amp; entity, 3 < 4")
    assert markdown == "a &lt;b>tag&lt;/b> &amp; an &amp;amp; entity, 3 &lt; 4"
    assert "a &lt;b&gt;tag&lt;/b&gt; &amp; an &amp;amp; entity" in rendered(markdown)  # what the page shows
    assert no_math_html("[m](javascript:x)") == "[m](java\u2060script:x)"  # the footers' escaping too


def test_a_completion_an_answer_and_the_magics_output_carry_no_live_html(ip):
    answer = Completion(text=HOSTILE, session_id="s", provider="p", model="<b>m</b>", finish_reason="stop")
    assert live_tags(rendered(answer._repr_markdown_())) == []
    for stream in ("--no-stream", "--stream"):
        with capture_output() as captured:
            result = ip.run_cell(f"%%gtl echo {stream}\nRepeat this: {HOSTILE}", store_history=True)
        assert result.success and "onerror" in ip.user_ns["_gtl"].text  # the answer repeats it, as text
        markdown = [out.data["text/markdown"] for out in captured.outputs if "text/markdown" in out.data]
        assert markdown and all(live_tags(rendered(shown)) == [] for shown in markdown), markdown
        html = [out.data["text/html"] for out in captured.outputs if "text/html" in out.data]
        assert all(live_tags(page) == [] for page in html), html


def test_a_pasted_gap_messages_entity_keys_reach_no_markdown_as_written():
    """Entity keys come from outside (a GAP block pasted from another platform): the view's note of the
    undefined ones and the editor's hint wrote them as typed — a key holding ``<img onerror>``, or a
    backtick that closed the hint's code span, was live in the page."""
    from gtl_nb import gap
    from gtl_nb.notebook.gap_magic import GapView
    from gtl_nb.notebook.widgets import EntityEditor

    keys = [HOSTILE, f"x\n\n{HOSTILE}", f"a` {HOSTILE} `b"]
    entities = ", ".join(f"{json.dumps(key)} = -" for key in keys)
    block = f"[GAP:START]\nFrom: p\nContext: user\nEntities: {entities}\n[GAP:CONTENT]\nhi\n[GAP:END]"
    wrapped = gap.from_markdown(block)
    assert list(wrapped.undefined) == keys
    for view in (GapView(wrapped, "chatgpt"), EntityEditor(wrapped, live=False)):
        markdown = view._repr_mimebundle_()["text/markdown"]
        assert live_tags(rendered(markdown)) == [], markdown
