"""HPO phenotypes mentioned in clinical note text, with NegEx-style negation, family history and hedging.

Dictionary matching: every name and EXACT synonym of a term under Phenotypic abnormality (HP:0000118) is
indexed as a tuple of normalised tokens (lower case, a plural "s" dropped); EXACT abbreviations ("VSD",
"AKI") are indexed case-sensitively. The scan is left to right and the longest entry wins at each position.
A phrase shared by two terms (e.g. "ASD") is dropped rather than guessed.

Context follows NegEx/ConText (Chapman et al. 2001, Harkema et al. 2009): a trigger negates (or marks as
family, or as hedged) the terms after it in its sentence, up to a window or a termination word ("but",
"however", ...); pseudo-triggers ("no increase", "not only", "mother reports") are consumed first so
they trigger nothing; a few post-triggers ("... was ruled out", "... in his mother") look backwards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache

from services.cds.knowledge.hpo import PHENOTYPIC_ABNORMALITY, Ontology, ontology

MAX_PHRASE_TOKENS = 8
WINDOW_TOKENS = 8  # how far a pre-trigger reaches forward (lists: "no fever, chills, nausea or vomiting")
POST_WINDOW_TOKENS = 4

_TOKEN = re.compile(r"[A-Za-z0-9]+")
_SENTENCE_END = re.compile(r"[.!?;]\s|[.!?;]$|\n\s*\n|\n(?=\s*[-*\u2022]|\s*[A-Z][A-Za-z /]{1,30}:)")
_SECTION = re.compile(r"^\s*(family history|family hx|fhx|fh)\s*:", re.IGNORECASE | re.MULTILINE)
_NEXT_SECTION = re.compile(r"\n\s*\n|\n\s*[A-Z][A-Za-z /]{1,30}:")

# Single words that are HPO synonyms but mostly mean something else in notes.
_AMBIGUOUS_WORDS = frozenset({"mole", "moles", "tall", "short", "small", "large", "pain", "abnormal", "wide"})

NEGATION_PRE = (
    "no",
    "not",
    "denies",
    "denied",
    "denying",
    "without",
    "negative for",
    "absence of",
    "absent",
    "no evidence of",
    "no signs of",
    "no sign of",
    "no history of",
    "free of",
    "never had",
    "never",
    "neither",
    "nor",
    "ruled out",
    "rules out",
    "not have",
    "did not have",
    "does not have",
    "no complaints of",
    "resolution of",
    "unremarkable for",
)
NEGATION_POST = (
    "ruled out",
    "is absent",
    "was absent",
    "are absent",
    "not seen",
    "not present",
    "negative",
    "was negative",
    "is negative",
    "unlikely",
    "excluded",
    "has resolved",
    "resolved",
)
PSEUDO_NEGATION = (
    "no increase",
    "no change",
    "no significant change",
    "no further",
    "not only",
    "not necessarily",
    "no longer",
    "without difficulty",
    "not certain if",
    "not certain whether",
    "gram negative",
    "not ruled out",
    "cannot be ruled out",
    "can not be ruled out",
    "not been ruled out",
    "no interval change",
    "not clear",
)
HEDGE_PRE = (
    "possible",
    "possibly",
    "probable",
    "probably",
    "suspected",
    "suspicion of",
    "suspicious for",
    "concern for",
    "concerning for",
    "rule out",
    "r o",
    "cannot exclude",
    "cannot be excluded",
    "cannot be ruled out",
    "not ruled out",
    "questionable",
    "question of",
    "likely",
    "may have",
    "might have",
    "could be",
    "differential",
    "versus",
    "vs",
    "consistent with",
    "suggestive of",
    "worrisome for",
    "evaluate for",
    "evaluation for",
)
FAMILY_MEMBERS = (
    "mother",
    "father",
    "mom",
    "dad",
    "sister",
    "brother",
    "sibling",
    "siblings",
    "aunt",
    "uncle",
    "grandmother",
    "grandfather",
    "grandparent",
    "grandparents",
    "cousin",
    "son",
    "daughter",
    "parent",
    "parents",
    "twin",
    "maternal",
    "paternal",
    "relative",
    "relatives",
    "niece",
    "nephew",
)
FAMILY_PRE = (
    "family history of",
    "family history",
    "family hx",
    "fhx",
    "fh",
    "family members",
    "runs in the family",
    *FAMILY_MEMBERS,
)
FAMILY_POST = (
    *(
        f"{p} {m}"
        for p in ("in his", "in her", "in their", "in the", "in a", "in", "of his", "of her")
        for m in FAMILY_MEMBERS
    ),
    "runs in the family",
    "in the family",
)
# A relative who reports about the patient is not a relative's history.
PSEUDO_FAMILY = tuple(
    phrase
    for m in FAMILY_MEMBERS
    for phrase in (
        f"{m} reports",
        f"{m} reported",
        f"{m} states",
        f"{m} stated",
        f"{m} says",
        f"{m} notes",
        f"{m} noted",
        f"{m} noticed",
        f"{m} is concerned",
        f"{m} brought",
        f"per {m}",
        f"per his {m}",
        f"per her {m}",
        f"per the {m}",
        f"according to his {m}",
        f"according to her {m}",
        f"according to the {m}",
        f"accompanied by his {m}",
        f"accompanied by her {m}",
        f"with his {m}",
        f"with her {m}",
    )
)
TERMINATION = (
    "but",
    "however",
    "although",
    "though",
    "yet",
    "except",
    "apart from",
    "aside from",
    "which",
    "who",
    "secondary to",
    "due to",
    "because",
    "presents with",
    "presented with",
    "presenting with",
    "complains of",
    "reports",
    "reported",
    "now has",
    "has developed",
    "developed",
    "patient has",
    "he has",
    "she has",
    "still",
)


@dataclass(frozen=True, slots=True)
class PhenotypeMention:
    hpo_id: str
    name: str  # the term's preferred name
    text: str  # as written in the note
    start: int  # character offsets into the note: note[start:end] == text
    end: int
    negated: bool = False
    family: bool = False  # about a relative, not the patient
    hedged: bool = False  # possible, suspected, rule out ...

    @property
    def present(self) -> bool:
        """Asserted for the patient: neither negated, nor a relative's, nor hedged."""
        return not (self.negated or self.family or self.hedged)


@dataclass(frozen=True, slots=True)
class Token:
    start: int
    end: int
    raw: str
    norm: str


def normalise(word: str) -> str:
    """Lower case and a plural "s" dropped, identically for the dictionary and the note."""
    w = word.lower()
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is", "ys")):
        return w[:-1]
    return w


def tokenize(text: str) -> list[Token]:
    return [Token(m.start(), m.end(), m.group(), normalise(m.group())) for m in _TOKEN.finditer(text)]


@dataclass(frozen=True)
class Matcher:
    """Phrase dictionaries: normalised token tuples -> hpo_id, and case-sensitive abbreviations -> hpo_id."""

    phrases: Mapping[tuple[str, ...], str]
    abbreviations: Mapping[str, str]
    names: Mapping[str, str]


def build_matcher(onto: Ontology, root: str = PHENOTYPIC_ABNORMALITY) -> Matcher:
    """Index names and EXACT synonyms of the non-obsolete terms under `root` (pure)."""
    candidates: dict[tuple[str, ...], dict[str, int]] = {}
    abbreviations: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    for hpo_id, term in onto.terms.items():
        if term.obsolete or root not in onto.ancestors[hpo_id]:
            continue
        names[hpo_id] = term.name
        for rank, phrase in enumerate((term.name, *term.synonyms)):
            key = tuple(t.norm for t in tokenize(phrase))
            if (
                not key
                or len(key) > MAX_PHRASE_TOKENS
                or (len(key) == 1 and (len(key[0]) < 3 or key[0] in _AMBIGUOUS_WORDS))
            ):
                continue
            # 0 = preferred name, 1 = synonym: a term's name beats another term's synonym.
            seen = candidates.setdefault(key, {})
            seen[hpo_id] = min(seen.get(hpo_id, 1), 0 if rank == 0 else 1)
        for abbreviation in term.abbreviations:
            abbreviations.setdefault(abbreviation, set()).add(hpo_id)
    phrases: dict[tuple[str, ...], str] = {}
    for key, ids in candidates.items():
        best = min(ids.values())
        winners = [i for i, r in ids.items() if r == best]
        if len(winners) == 1:
            phrases[key] = winners[0]
    unique_abbreviations = {a: next(iter(ids)) for a, ids in abbreviations.items() if len(ids) == 1}
    return Matcher(phrases, unique_abbreviations, names)


@cache
def default_matcher() -> Matcher:
    """The matcher over the installed HPO release; built once per process (~1 s)."""
    return build_matcher(ontology())


def _phrase_set(phrases: Iterable[str]) -> dict[tuple[str, ...], str]:
    return {tuple(w.lower() for w in _TOKEN.findall(p)): p for p in phrases}


_NEG_PRE, _NEG_POST = _phrase_set(NEGATION_PRE), _phrase_set(NEGATION_POST)
_PSEUDO = _phrase_set(PSEUDO_NEGATION + PSEUDO_FAMILY)
_HEDGE = _phrase_set(HEDGE_PRE)
_FAM_PRE, _FAM_POST = _phrase_set(FAMILY_PRE), _phrase_set(FAMILY_POST)
_TERM = _phrase_set(TERMINATION)
_MAX_TRIGGER = max(len(k) for k in (*_NEG_PRE, *_NEG_POST, *_PSEUDO, *_HEDGE, *_FAM_PRE, *_FAM_POST, *_TERM))


def _find(words: list[str], lexicon: Mapping[tuple[str, ...], str], taken: set[int]) -> list[tuple[int, int]]:
    """Longest-first, non-overlapping (start, end) token spans of lexicon phrases outside `taken`."""
    spans = []
    i = 0
    while i < len(words):
        for n in range(min(_MAX_TRIGGER, len(words) - i), 0, -1):
            if tuple(words[i : i + n]) in lexicon and not taken.intersection(range(i, i + n)):
                spans.append((i, i + n))
                i += n
                break
        else:
            i += 1
    return spans


def _sentence_ids(text: str, tokens: list[Token]) -> list[int]:
    bounds = [m.end() for m in _SENTENCE_END.finditer(text)]
    out, s = [], 0
    for tok in tokens:
        while s < len(bounds) and tok.start >= bounds[s]:
            s += 1
        out.append(s)
    return out


def _family_sections(text: str) -> list[tuple[int, int]]:
    sections = []
    for m in _SECTION.finditer(text):
        rest = _NEXT_SECTION.search(text, m.end())
        sections.append((m.start(), rest.start() if rest else len(text)))
    return sections


def match_terms(text: str, tokens: list[Token], matcher: Matcher) -> list[tuple[int, int, str]]:
    """(first token, end token, hpo_id) of dictionary phrases, longest match first, left to right."""
    found = []
    i = 0
    while i < len(tokens):
        hit = None
        for n in range(min(MAX_PHRASE_TOKENS, len(tokens) - i), 0, -1):
            # A phrase must not run across a line break or sentence punctuation.
            gap = text[tokens[i].start : tokens[i + n - 1].end]
            if n > 1 and re.search(r"[.;!?\n]", gap):
                continue
            hpo_id = matcher.phrases.get(tuple(t.norm for t in tokens[i : i + n]))
            if hpo_id is not None:
                hit = (i, i + n, hpo_id)
                break
        if hit is None and tokens[i].raw in matcher.abbreviations:
            hit = (i, i + 1, matcher.abbreviations[tokens[i].raw])
        if hit is not None:
            found.append(hit)
            i = hit[1]
        else:
            i += 1
    return found


def extract_phenotypes(text: str, matcher: Matcher | None = None) -> list[PhenotypeMention]:
    """HPO phenotypes mentioned in `text` with span offsets and negated / family / hedged flags (pure)."""
    m = matcher if matcher is not None else default_matcher()
    tokens = tokenize(text)
    terms = match_terms(text, tokens, m)
    inside = {i for start, end, _ in terms for i in range(start, end)}
    words = [t.raw.lower() for t in tokens]
    sentence = _sentence_ids(text, tokens)

    pseudo = _find(words, _PSEUDO, inside)
    taken = inside | {i for s, e in pseudo for i in range(s, e)}
    termination = {s for s, _ in _find(words, _TERM, taken)}

    def triggers(lexicon: Mapping[tuple[str, ...], str]) -> list[tuple[int, int]]:
        return _find(words, lexicon, taken)

    neg_pre, neg_post, hedge = triggers(_NEG_PRE), triggers(_NEG_POST), triggers(_HEDGE)
    fam_pre, fam_post = triggers(_FAM_PRE), triggers(_FAM_POST)
    sections = _family_sections(text)

    def before(spans: list[tuple[int, int]], start: int, window: int | None) -> bool:
        for s, e in spans:
            if e <= start and sentence[s] == sentence[start] and (window is None or start - e < window):
                if not any(e <= t < start for t in termination):
                    return True
        return False

    def after(spans: list[tuple[int, int]], end: int) -> bool:
        return any(
            s >= end
            and s - end < POST_WINDOW_TOKENS
            and sentence[s] == sentence[end - 1]
            and not any(end <= t < s for t in termination)
            for s, _ in spans
        )

    mentions = []
    for start, end, hpo_id in terms:
        first, last = tokens[start], tokens[end - 1]
        in_section = any(a <= first.start < b for a, b in sections)
        mentions.append(
            PhenotypeMention(
                hpo_id=hpo_id,
                name=m.names[hpo_id],
                text=text[first.start : last.end],
                start=first.start,
                end=last.end,
                negated=before(neg_pre, start, WINDOW_TOKENS) or after(neg_post, end),
                family=in_section or before(fam_pre, start, None) or after(fam_post, end),
                hedged=before(hedge, start, WINDOW_TOKENS),
            )
        )
    return mentions
