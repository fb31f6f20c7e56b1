"""First-person pronouns rewritten to a third-person name, keeping the grammar right.

The spec's role maps: an assistant's "I" / "my" / "me" become "the AI assistant" / "the AI
assistant's" / "the AI assistant", a user's become "the user" / "the user's" / "the user"; a system
message is left alone. Beyond the map:

* "mine" becomes the possessive ("the AI assistant's"), "myself" the reflexive: "itself" for the
  assistant, "themselves" for the user (a ``"mine"`` / ``"myself"`` key in a custom map wins).
* Forms of be/have/do follow the new third-person subject: I'm / I am -> is, I'm not -> is not,
  I've / I have -> has, I haven't -> hasn't, I do -> does, I don't -> doesn't, I'll -> will,
  I'd -> would (never "had": the contraction is ambiguous and "would" is the commoner reading, so
  "I'd been" reads "would been" — a known limit), I was / did / had stay. Modals (can, could, will,
  would, should, must, may, might, shall) stay. In questions the auxiliary before "I" changes
  instead: "Do I" -> "Does the AI assistant", "Am I" -> "Is ...", "Aren't I" -> "Isn't ...".
* A present-tense verb right after "I" (optionally after an adverb such as "really" or "also") gets
  its third-person form: think -> thinks, try -> tries, fix -> fixes, go -> goes. Past forms
  (-ed and the common irregular ones) are left; forms that are the same in present and past (read,
  put, set) are read as present. After a compound subject ("you and I") the verb is left.
* A replacement starts with a capital at the start of a sentence, a line, a list item or a heading
  ("The AI assistant thinks"), and where the original word was capitalised ("My" -> "The AI
  assistant's"); replacements are never lower-cased.
* Only whole words change: Illinois, mystery, memes, iMac, I/O, I-5, "Section I", "World War I"
  (a Roman numeral after a numbered noun) and an all-capitals ME or MY stay. "Oh my!" stays (a
  possessive needs a following word), as does "mine" used as a noun or verb ("the mine", "to mine").
  Lower-case "i" is never rewritten (it is more often a variable than a pronoun).
* Code (fenced blocks, inline code), URLs and quoted text ("..." on one line, “...”) are never
  touched.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from gtl_nb.gap.limits import MAX_PRONOUN_MAP
from gtl_nb.gap.model import ROLE_PRONOUN_MAPS, ROLES
from gtl_nb.gap.spans import SpanSet, overlaps, protected_spans


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SPECIAL_KEYS = frozenset({"I", "my", "me", "mine", "myself"})

_PRONOUN_RE = re.compile(
    r"(?<![\w'’\-./\\@#$&])"
    r"(?:(?P<subject>I)(?P<contraction>['’](?:m|ve|d|ll|M|VE|D|LL))?"
    r"|(?P<reflexive>[Mm]yself)|(?P<possessive>[Mm]y)|(?P<object>[Mm]e)|(?P<mine>[Mm]ine))"
    r"(?![\w\-/\\@]|['’]\w|\.\w)"
)
_CONTRACTIONS = {"m": "is", "ve": "has", "d": "would", "ll": "will"}

# Nouns that take a Roman numeral: "World War I", "Section I", "Type I", "Henry I"-style uses.
_NUMBERED_NOUNS = _words(
    "War Section Part Chapter Volume Vol Book Act Scene Type Phase Stage Level Class Article Appendix "
    "Figure Fig Table Tier Round Title Schedule Annex Unit Grade Category Division League Episode Game "
    "Series Form Track Lesson Psalm Canto Movement Henry Charles George Edward James William Elizabeth "
    "Louis Richard Mary Napoleon Pope"
)
_ADVERBS = (
    "also", "really", "just", "never", "always", "often", "still", "usually", "sometimes", "actually",
    "only", "probably", "definitely", "certainly", "generally", "mostly", "even", "rarely", "already",
    "truly", "strongly", "personally", "honestly", "simply", "genuinely", "completely", "totally",
    "fully", "now", "then", "typically", "normally", "occasionally", "seldom", "hardly", "barely",
    "merely", "largely", "deeply", "highly", "firmly", "clearly", "currently", "mainly", "frequently",
    "sincerely", "further", "again", "first", "once", "rather", "kind of", "sort of",
)  # fmt: skip
_FOLLOWING_VERB_RE = re.compile(
    r"(?P<gap>[*_]{0,3}[ \t]+(?:(?:" + "|".join(a.replace(" ", "[ \t]+") for a in _ADVERBS) + r")[ \t]+)*)"
    r"(?P<verb>[A-Za-z]+(?:-[A-Za-z]+)*(?:['’][A-Za-z]+)?)(?![\w\-'’])",
    re.IGNORECASE,
)
_THIRD_PERSON_IRREGULAR = {"am": "is", "have": "has", "do": "does", "be": "is", "go": "goes"}
_NEGATIONS = {"do": "does", "have": "has"}  # the stem before "n't"
_INVERTED_AUX = {"am": "is", "do": "does", "have": "has"}
_INVERTED_NEGATIONS = {"do": "does", "have": "has", "are": "is"}
_MODALS_AND_PAST_AUX = _words(
    "can could will would shall should may might must ought cannot was were did had is are has does"
)
_LEAVE_AFTER = _MODALS_AND_PAST_AUX | _words(
    # non-present forms and words that are not verbs
    "used and or but nor so yet too as than then at in on of for to with by from the a an not myself "
    "alone who that which when if because while"
)
_IRREGULAR_PAST = _words(
    "went made saw took got found thought knew told wrote ran came gave said built sent spent left felt "
    "kept meant brought bought caught taught understood began chose broke forgot fell led lost met paid "
    "sat stood spoke woke wore won drove ate drank flew grew threw drew heard held sold slept swam sang "
    "rang hid forgave became rewrote undid withdrew misunderstood sought fought dealt dug hung lent lit "
    "shot shook stole struck swore tore wept froze bit blew bore bound bred clung crept fed fled flung "
    "knelt leapt rode rose sank shone slid spun sprang stuck stung strode strove swept swung trod "
    "underwent upheld wove wrung dreamt learnt spelt burnt overtook undertook mistook begun done gone "
    "seen taken given written been"
)
_EED_PAST = frozenset(["agreed", "disagreed", "freed", "guaranteed", "decreed", "refereed"])
_ED_BASE = frozenset(["embed", "imbed", "shed", "wed", "bed", "shred", "sled"])
_COMPOUND_SUBJECT_RE = re.compile(r"\b(?:you|he|she|they|we|him|her|them|us)[ \t]+(?:and|or)[ \t]+$", re.I)
_AUX_BEFORE_RE = re.compile(r"(?<![\w'’-])(?P<aux>[A-Za-z]+(?:['’]t)?)[ \t]+$")
_NUMBERED_BEFORE_RE = re.compile(r"(?<![\w'’-])([A-Z][a-z]*)\.?[ \t]+$")
_ABBREVIATIONS = frozenset(["e.g", "i.e", "etc", "vs", "cf", "mr", "mrs", "ms", "dr", "st", "approx", "no"])
_LINE_PREFIX_MARKS = frozenset(" \t-*+#>")  # with "12." / "3)": what may open a line before its first word
_WORD_FOLLOWS_RE = re.compile(r"[ \t]+[\w*_\"“(]")
_NOUN_BEFORE_MINE = _words("the a an this that these those our your their his her its to we they you")


def _match_case(original: str, replacement: str) -> str:
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    return replacement


def third_person(verb: str) -> str:
    """The third-person singular present of a base verb: think -> thinks, try -> tries."""
    if "-" in verb:
        head, _, last = verb.rpartition("-")
        return f"{head}-{third_person(last)}"
    lower = verb.lower()
    if lower in _THIRD_PERSON_IRREGULAR:
        out = _THIRD_PERSON_IRREGULAR[lower]
    elif re.search(r"(?:s|x|z|ch|sh|o)$", lower):
        out = lower + "es"
    elif re.search(r"[^aeiou]y$", lower):
        out = lower[:-1] + "ies"
    else:
        out = lower + "s"
    return _match_case(verb, out)


def _is_base_verb(word: str) -> bool:
    lower = word.lower()
    if lower in _LEAVE_AFTER or lower in _IRREGULAR_PAST or lower in _ADVERBS:
        return False
    if "'" in lower or "’" in lower:
        return False  # negated forms other than don't / haven't (handled by the caller)
    if lower.endswith("eed"):
        return lower not in _EED_PAST
    if lower.endswith("ed") and len(lower) > 3:
        return lower in _ED_BASE
    return True


def _conjugate(verb: str) -> str | None:
    """The verb's form after a third-person subject, or None to leave it as it is."""
    lower = verb.lower().replace("’", "'")
    if lower.endswith("n't"):
        stem = lower[:-3]
        if stem in _NEGATIONS:
            return _match_case(verb, _NEGATIONS[stem] + "n" + verb[-2] + "t")
        return None
    if lower in ("am", "have", "do"):
        return _match_case(verb, _THIRD_PERSON_IRREGULAR[lower])
    if not _is_base_verb(verb):
        return None
    return third_person(verb)


_WINDOW = 256  # how far back the context checks look (keeps long texts linear)


def _tail_start(before: str, tokens: int) -> int:
    """Where the last ``tokens`` words of ``before`` begin, with the blanks after them (a line break, too,
    ends a word here).

    The patterns that read the words before a pronoun end in ``[ \\t]+$`` and span at most that many
    tokens, so a search from here finds what a search of the whole window finds, without trying each
    of its positions (that was most of the time taken per pronoun). ``$`` also matches before a final
    line break, so the tokens are counted before it.
    """
    head = before[:-1] if before.endswith("\n") else before
    for _ in range(tokens):
        head = head.rstrip(" \t")
        head = head[: max(head.rfind(" "), head.rfind("\t"), head.rfind("\n")) + 1]
    return len(head)


def _is_line_prefix(line: str) -> bool:
    """Whether ``line`` holds only list markers, heading marks, quote marks and blanks.

    A plain scan: the regular expression for it (markers repeated under a repeat) backtracks
    exponentially on a line such as ``>>>>>>>>>>>>>>>>>>>>>>>>>>>>>>x``.
    """
    index = 0
    while index < len(line):
        if line[index] in _LINE_PREFIX_MARKS:
            index += 1
            continue
        digits = index
        while digits < len(line) and line[digits].isdecimal():
            digits += 1
        if digits == index or digits == len(line) or line[digits] not in ".)":
            return False
        index = digits + 1
    return True


def _word_before(text: str, end: int, chars: Callable[[str], bool]) -> str:
    """The run of characters for which ``chars`` holds that ends at ``end``."""
    start = end
    while start > 0 and chars(text[start - 1]):
        start -= 1
    return text[start:end]


def _is_word_char(char: str) -> bool:
    return char.isalnum() or char == "_"  # what \w matches


def _window(text: str, pos: int) -> str:
    return text[max(0, pos - _WINDOW) : pos]


def _sentence_start(text: str, pos: int) -> bool:
    """Whether ``pos`` starts a sentence, a line, a list item or a heading (opening marks skipped)."""
    lo = max(0, pos - _WINDOW)
    before = text[lo:pos].rstrip(" \t*_([{'\"“‘")
    if not before:
        return lo == 0 or text[lo - 1] == "\n"
    if before.endswith("\n"):
        return True
    line = before[before.rfind("\n") + 1 :]
    if _is_line_prefix(line):
        return True
    if before[-1] in "!?":
        return True
    if before[-1] == ".":
        word = _word_before(before, len(before) - 1, lambda char: _is_word_char(char) or char == ".")
        return word.lower() not in _ABBREVIATIONS
    return False


def _roman_numeral(text: str, start: int, end: int) -> bool:
    """ "World War I", "Section I", or an "I." / "I)" enumeration at the start of a line."""
    window = _window(text, start)
    previous = _NUMBERED_BEFORE_RE.search(window, _tail_start(window, 1))
    if previous and previous.group(1) in _NUMBERED_NOUNS:
        return True
    return end < len(text) and text[end] in ".)" and _opens_line(text, start)


def _opens_line(text: str, start: int) -> bool:
    """Whether only list markers, heading and quote marks and blanks come before ``start`` on its line.

    It looks back over those characters alone, never to the line's start: taking the whole line
    before each "I" made a long line of them quadratic.
    """
    lo = start
    while lo > 0 and (text[lo - 1] in _LINE_PREFIX_MARKS or text[lo - 1] in ".)" or text[lo - 1].isdecimal()):
        lo -= 1
    return (lo == 0 or text[lo - 1] == "\n") and _is_line_prefix(text[lo:start])


class _Rewriter:
    """Collects non-overlapping replacements over ``text`` and applies them."""

    def __init__(self, text: str, protected: list[tuple[int, int]]) -> None:
        self.text = text
        self.protected = protected
        self.spans = SpanSet()
        self.edits: dict[int, str] = {}

    def free(self, start: int, end: int) -> bool:
        return not overlaps(start, end, self.protected) and self.spans.free(start, end)

    def replace(self, start: int, end: int, new: str) -> bool:
        if overlaps(start, end, self.protected) or not self.spans.add(start, end):
            return False
        self.edits[start] = new
        return True

    def replace_all(self, spans: Iterable[tuple[int, int]], new: str) -> None:
        """``replace`` each of ``spans`` (sorted, disjoint: one pattern's matches) with ``new``, at once."""
        for start, _end in self.spans.add_all(span for span in spans if not overlaps(*span, self.protected)):
            self.edits[start] = new

    def result(self) -> str:
        out, pos = [], 0
        for start, end in self.spans:
            out.append(self.text[pos:start])
            out.append(self.edits[start])
            pos = end
        out.append(self.text[pos:])
        return "".join(out)


def transform_pronouns(text: str, role: str, *, pronoun_map: Mapping[str, str] | None = None) -> str:
    """Rewrite first-person pronouns in ``text`` written by ``role`` (see the module docstring).

    ``pronoun_map`` replaces the role's default map (a message's ``transform_hints.pronoun_map``);
    its keys ``I``, ``my``, ``me``, ``mine`` and ``myself`` get the grammar above, any other key is
    replaced as a whole word, case-sensitively.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}; got {role!r}")
    if pronoun_map is not None and len(pronoun_map) > MAX_PRONOUN_MAP:  # (each word is a pass: gap.limits)
        raise ValueError(f"pronoun_map holds at most {MAX_PRONOUN_MAP} entries, not {len(pronoun_map)}")
    mapping = dict(ROLE_PRONOUN_MAPS[role] if pronoun_map is None else pronoun_map)
    if not mapping:
        return text
    subject = mapping.get("I")
    possessive = mapping.get("my")
    objective = mapping.get("me")
    mine = mapping.get("mine", possessive)
    reflexive = mapping.get("myself")
    if reflexive is None and subject is not None:
        reflexive = "themselves" if role == "user" else "itself"

    rewriter = _Rewriter(text, protected_spans(text, quotes=True))
    for match in _PRONOUN_RE.finditer(text):
        start, end = match.span()
        if not rewriter.free(start, end):
            continue
        word = match.group(0)
        if match.group("subject"):
            if subject is not None:
                _rewrite_subject(rewriter, match, subject)
            continue
        if match.group("reflexive"):
            new = reflexive
        elif match.group("possessive"):
            new = possessive if _WORD_FOLLOWS_RE.match(text, end) else None
        elif match.group("object"):
            new = objective
        else:
            window = _window(text, start).removesuffix("\n")  # as a regex's "$" would allow
            spaced = window.rstrip(" \t")
            previous = _word_before(spaced, len(spaced), _is_word_char) if len(spaced) < len(window) else ""
            noun_use = previous.lower() in _NOUN_BEFORE_MINE
            new = None if noun_use else mine
        if new is None:
            continue
        capital = word[0].isupper() or _sentence_start(text, start)
        rewriter.replace(start, end, _capitalise(new) if capital else new)

    for old, new in mapping.items():
        if old in _SPECIAL_KEYS or not old:
            continue
        pattern = re.compile(rf"(?<![\w'’-]){re.escape(old)}(?![\w'’-])")
        rewriter.replace_all((match.span() for match in pattern.finditer(text)), new)
    return rewriter.result()


def _capitalise(phrase: str) -> str:
    return phrase[:1].upper() + phrase[1:]


def _rewrite_subject(rewriter: _Rewriter, match: re.Match[str], subject: str) -> None:
    text = rewriter.text
    start, end = match.span()
    if match.group("contraction") is None and _roman_numeral(text, start, end):
        return
    phrase = _capitalise(subject) if _sentence_start(text, start) else subject
    contraction = match.group("contraction")
    if contraction:
        verb = _CONTRACTIONS[contraction[1:].lower()]
        rewriter.replace(start, end, f"{phrase} {verb}")
        return

    before = _window(text, start)
    inverted = False
    aux = _AUX_BEFORE_RE.search(before, _tail_start(before, 1))
    if aux:
        aux_word = aux.group("aux")
        lower = aux_word.lower().replace("’", "'")
        new_aux = None
        if lower in _INVERTED_AUX:
            new_aux = _match_case(aux_word, _INVERTED_AUX[lower])
        elif lower.endswith("n't") and lower[:-3] in _INVERTED_NEGATIONS:
            new_aux = _match_case(aux_word, _INVERTED_NEGATIONS[lower[:-3]] + "n" + aux_word[-2] + "t")
        if new_aux is not None:
            inverted = True
            aux_start = aux.start("aux")
            capital_aux = _sentence_start(text, aux_start) and aux_word[0].isupper()
            phrase = subject  # the subject is mid-sentence after the auxiliary
            rewriter.replace(aux_start, aux.end("aux"), _capitalise(new_aux) if capital_aux else new_aux)
        else:
            inverted = lower in _MODALS_AND_PAST_AUX or lower.endswith("n't")
    rewriter.replace(start, end, phrase)
    if inverted or _COMPOUND_SUBJECT_RE.search(before, _tail_start(before, 2)):
        return
    following = _FOLLOWING_VERB_RE.match(text, end)
    if following is None:
        return
    verb_start, verb_end = following.span("verb")
    if following.group("verb") == "I":  # a repeated subject ("I I think"): the second is rewritten on its own
        return
    new_verb = _conjugate(following.group("verb"))
    if new_verb is not None:
        rewriter.replace(verb_start, verb_end, new_verb)
