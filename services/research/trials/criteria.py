"""Eligibility criterion sentences (ClinicalTrials.gov style) to structured, checkable criteria (pure but for the
MiniLM fallback of `concepts.resolve`, used at parse time only).

One sentence may state several facts ("Adults aged 40 to 75 years with type 2 diabetes") and then gives several
criteria, all keeping the sentence; a sentence nothing here understands gives one criterion of type "other", which
matching always answers "unknown". A trial is parsed once per protocol version; the result is plain data
(`ParsedTrial.to_json`), so matching needs neither torch nor the lexicon's embeddings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from services.research.timeline import CONDITION, DEMOGRAPHICS, LOINC, MEDICATION
from services.research.trials import concepts
from services.research.trials.concepts import Concept

Section = Literal["inclusion", "exclusion"]
CriterionType = Literal["condition", "medication", "lab", "age", "sex", "pregnancy", "other"]
DAY = 86400.0
_UNIT_DAYS = {"day": 1.0, "week": 7.0, "month": 30.4375, "year": 365.25}
_NUMBER_WORDS = {
    "a": 1,
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "eighteen": 18,
    "twenty-four": 24,
}
_N = r"(\d+(?:\.\d+)?|a|one|two|three|four|five|six|seven|eight|nine|ten|twelve|eighteen|twenty-four)"
_SPAN = rf"{_N}\s*(day|week|month|year)s?"


@dataclass(frozen=True, slots=True)
class Criterion:
    """One checkable fact of an eligibility sentence.

    `timing` says which records count: "current" (active at the record's latest time), "ever" (any time, resolved
    included), "window" (began within `window_days` before it; for labs, every result in the window), "latest"
    (labs: the latest result day). `min_duration_days` asks the fact to have held at least that long. Labs and ages
    compare with `comparator` against `low`/`high` in `unit` (ages in completed years); "between" is inclusive at
    both ends. `sex` is the sex asked for (type "sex") or, on a lab, the sex its threshold applies to. All criteria
    of one sentence (`sentence_id`) must hold for the sentence to hold; `method`/`score` record how the concept was
    resolved ("rule" 1.0, "embedding" cosine, "none").
    """

    id: str
    trial_id: str
    section: Section
    text: str
    type: CriterionType
    concept: str = ""
    codes: tuple[tuple[str, str], ...] = ()
    ingredients: tuple[str, ...] = ()  # medication: ingredient words matched in a drug's display
    negated: bool = False
    timing: Literal["current", "ever", "window", "latest"] = "current"
    window_days: float | None = None
    min_duration_days: float | None = None
    comparator: str = ""
    low: float | None = None
    high: float | None = None
    unit: str = ""
    sex: str = ""
    method: concepts.Method = "rule"
    score: float = 1.0
    sentence_id: str = ""

    def aspects(self) -> frozenset[str]:
        """The timeline aspects (names `Timeline.fold` returns) this criterion reads."""
        if self.type == "age" or self.type == "sex":
            return frozenset({DEMOGRAPHICS})
        if self.type == "condition":
            return frozenset({CONDITION})
        if self.type == "pregnancy":
            return frozenset({CONDITION, DEMOGRAPHICS})
        if self.type == "medication":
            return frozenset({MEDICATION})
        if self.type == "lab":
            return frozenset(f"lab:{code}" for system, code in self.codes if system == LOINC)
        return frozenset()

    @property
    def time_dependent(self) -> bool:
        """Whether the verdict can change only because the record's latest time moved on."""
        if self.type in ("age", "pregnancy") or self.window_days is not None or self.min_duration_days is not None:
            return True
        return self.type in ("condition", "medication") and self.timing == "current"  # prescriptions lapse

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Criterion:
        values = dict(raw)
        values["codes"] = tuple((str(s), str(c)) for s, c in values.get("codes", ()))
        values["ingredients"] = tuple(str(i) for i in values.get("ingredients", ()))
        return cls(**values)


@dataclass(frozen=True, slots=True)
class ParsedTrial:
    """A protocol version with its criteria, parsed once and stored."""

    trial_id: str
    title: str
    version: int
    phase: str = ""
    conditions: tuple[str, ...] = ()
    criteria: tuple[Criterion, ...] = field(default_factory=tuple)

    def to_json(self) -> str:
        raw = {
            "id": self.trial_id,
            "title": self.title,
            "version": self.version,
            "phase": self.phase,
            "conditions": list(self.conditions),
            "criteria": [c.to_dict() for c in self.criteria],
        }
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ParsedTrial:
        raw = json.loads(text)
        return cls(
            raw["id"],
            raw["title"],
            int(raw["version"]),
            raw.get("phase", ""),
            tuple(raw.get("conditions", ())),
            tuple(Criterion.from_dict(c) for c in raw["criteria"]),
        )


# -- negation (NegEx-style: a trigger before the concept, within the clause, not a pseudo-trigger) ---------------
_PSEUDO = re.compile(
    r"\b(not only|no increase|no change|not necessarily|without regard to|not limited to|no significant change|"
    r"not been ruled out|whether or not)\b"
)
_NEGATION = re.compile(
    r"\b(no history of|no prior|no previous|no current|no known|no evidence of|no|not|never|without|free of|"
    r"absence of|has not|have not|does not have|do not have|naive to|not currently|nor)\b|\b[\w-]+-naive\b"
)
_SCOPE_END = re.compile(r"\b(but|however|except|although|apart from|other than)\b|[;:]")


def is_negated(text: str, start: int) -> bool:
    """Whether a negation trigger governs the concept beginning at `start` of lower-case `text`."""
    before = _PSEUDO.sub(" ", text[:start])
    last = None
    for m in _NEGATION.finditer(before):
        last = m
    if last is None:
        return bool(re.match(r"[\w-]*-naive\b", text[start:]))
    between = before[last.end() :]
    return _SCOPE_END.search(between) is None


# -- numbers, spans, thresholds -------------------------------------------------------------------------------------
def _number(token: str) -> float:
    return float(_NUMBER_WORDS.get(token, 0)) if token in _NUMBER_WORDS else float(token)


def _days(count: str, unit: str) -> float:
    return _number(count) * _UNIT_DAYS[unit]


def window(text: str) -> float | None:
    """Days of a look-back: "within the last 3 months", "in the past year", "within 6 months before screening"."""
    m = re.search(rf"\b(?:within|in|during)\s+(?:the\s+)?(?:last|past|previous|preceding|prior)?\s*{_SPAN}", text)
    if m:
        return _days(m.group(1), m.group(2))
    m = re.search(r"\b(?:within|in|during)\s+the\s+(?:last|past|previous|preceding)\s+(day|week|month|year)\b", text)
    return _days("1", m.group(1)) if m else None


def min_duration(text: str) -> float | None:
    """Days a fact must have lasted: "diagnosed at least 6 months before", "for at least 3 months"."""
    m = re.search(rf"\b(?:at least|for at least|for more than|for a minimum of|of at least|>=?)\s+{_SPAN}", text)
    if m:
        return _days(m.group(1), m.group(2))
    m = re.search(rf"\b(?:more than|over)\s+{_SPAN}\s+(?:before|ago|prior)", text)
    if m:
        return _days(m.group(1), m.group(2))
    m = re.search(rf"\b{_SPAN}\s+or (?:more|longer)\b", text)
    return _days(m.group(1), m.group(2)) if m else None


_UNIT = (
    r"(%|mmol/mol|mg/dl|µmol/l|μmol/l|umol/l|mmol/l|ml/min/1\.73\s?m2|ml/min/1\.73\s?m²|ml/min|kg/m2|kg/m²|mmhg|"
    r"u/l|iu/l|mg/g|mg/mmol|g/dl|g/l|kg|x10\^9/l)?"
)
_NUM = r"(-?\d+(?:\.\d+)?)"
_THRESHOLDS: tuple[tuple[str, str], ...] = (
    ("between", rf"\bbetween\s+{_NUM}\s*{_UNIT}\s+and\s+{_NUM}\s*{_UNIT}"),
    ("between", rf"\bfrom\s+{_NUM}\s*{_UNIT}\s+to\s+{_NUM}\s*{_UNIT}"),
    ("between", rf"(?:\bof|\bis|\bwas)?\s{_NUM}\s*{_UNIT}\s*(?:to|-|\u2013)\s*{_NUM}\s*{_UNIT}"),
    (">=", rf"(?:\bat least|\bno less than|\bgreater than or equal to|≥|>=)\s*{_NUM}\s*{_UNIT}"),
    ("<=", rf"(?:\bat most|\bno more than|\bless than or equal to|\bnot exceeding|\bup to|≤|<=)\s*{_NUM}\s*{_UNIT}"),
    (">", rf"(?:\babove|\bgreater than|\bmore than|\bover|\bexceeding|\bhigher than|>)\s*{_NUM}\s*{_UNIT}"),
    ("<", rf"(?:\bbelow|\bless than|\bunder|\blower than|<)\s*{_NUM}\s*{_UNIT}"),
    (">=", rf"{_NUM}\s*{_UNIT}\s+or\s+(?:higher|greater|above|more)\b"),
    ("<=", rf"{_NUM}\s*{_UNIT}\s+or\s+(?:lower|less|below)\b"),
)


def threshold(text: str) -> tuple[str, float | None, float | None, str] | None:
    """The first comparison in a clause: (comparator, low, high, unit as written) or None."""
    best: tuple[int, tuple[str, float | None, float | None, str]] | None = None
    for comparator, pattern in _THRESHOLDS:
        m = re.search(pattern, text)
        if not m:
            continue
        groups = m.groups()
        found: tuple[str, float | None, float | None, str]
        if comparator == "between":
            found = (comparator, float(groups[0]), float(groups[2]), groups[3] or groups[1] or "")
        elif comparator in (">=", ">"):
            found = (comparator, float(groups[0]), None, groups[1] or "")
        else:
            found = (comparator, None, float(groups[0]), groups[1] or "")
        if best is None or m.start() < best[0]:
            best = (m.start(), found)
    return best[1] if best else None


# -- age and sex ------------------------------------------------------------------------------------------------
_AGE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("between", r"\baged?\s+(?:between\s+)?(\d+)\s*(?:to|-|\u2013|and)\s*(\d+)\s*(?:years)?"),
    ("between", r"\b(\d+)\s*(?:to|-|\u2013)\s*(\d+)\s+years\s+(?:of age|old)"),
    (">=", r"\b(?:aged?\s+)?(\d+)\s+years\s+(?:of age\s+)?(?:or|and)\s+(?:older|over|above)"),
    (">=", r"\baged?\s+(\d+)\s+(?:or|and)\s+(?:older|over|above)"),
    (">=", r"\baged?\s+(?:at least|≥|>=)\s*(\d+)"),
    (">=", r"\bat least\s+(\d+)\s+years\s+(?:of age|old)"),
    (">", r"\b(?:older than|over|above)\s+(\d+)\s+years\s+(?:of age|old)"),
    ("<", r"\b(?:younger than|under|below|less than)\s+(\d+)\s+years\s+(?:of age|old)"),
    ("<", r"\baged?\s+(?:under|below|<)\s*(\d+)"),
    ("<=", r"\baged?\s+(?:at most|≤|<=|up to)\s*(\d+)"),
)


def age_range(text: str) -> tuple[str, float | None, float | None] | None:
    """An age bound in completed years: "aged 40 to 75 years", "18 years or older", "under 18 years"; a bare
    "adults" means 18 or older."""
    for comparator, pattern in _AGE_PATTERNS:
        m = re.search(pattern, text)
        if m:
            if comparator == "between":
                return comparator, float(m.group(1)), float(m.group(2))
            value = float(m.group(1))
            return (comparator, value, None) if comparator.startswith(">") else (comparator, None, value)
    if re.search(r"\badults?\b", text) and not re.search(r"\b(young|older) adults?\b", text):
        return ">=", 18.0, None
    return None


def sex_of(text: str) -> str:
    female = re.search(r"\b(women|woman|female|females)\b", text)
    male = re.search(r"\b(men|man|male|males)\b", text)
    if female and not male:
        return "female"
    if male and not female:
        return "male"
    return ""


# -- the parser -------------------------------------------------------------------------------------------------
_EVER = re.compile(r"\b(history of|prior|previous|previously|past|ever|any time|lifetime)\b")
_STOP_WORDS = re.compile(
    r"\b(patients?|participants?|subjects?|adults?|individuals?|people|persons?|men|women|with|who|have|has|had|a|an|"
    r"the|of|documented|confirmed|established|diagnosis|diagnosed|known|clinical|history|any|prior|current|active|"
    r"aged?|years?|months?|old|or|and|older|in|within|last|past|at|least|before|screening|to|no|not|without|"
    r"treated|treatment|receiving|on|for|is|are|be|must)\b"
)


_NOT_THE_FACT = re.compile(
    r"\b(hypersensitivity|allergy|allergic|intolerance|intolerant|contraindication)s?\s+(?:to|of|with)\s+(?:any\s+)?$"
)
_SEX_PART = re.compile(r"(.*?)\b(?:in|for)\s+(men|women|males|females)\b")


def _concept_phrase(text: str) -> str:
    """What is left of a sentence once cue words, numbers and punctuation are gone: the phrase to embed."""
    stripped = re.sub(r"[\d.,;:()%/<>=≥≤]+", " ", text)
    return " ".join(_STOP_WORDS.sub(" ", stripped).split())


_DEMOGRAPHIC_WORDS = re.compile(
    r"\b(women|woman|female|females|men|man|male|males|adults?|children|child|adolescents?|patients?|participants?|"
    r"subjects?|people|persons?|individuals?|aged?|years?|"
    r"old|older|younger|than|over|under|above|below|at|least|most|of|or|and|to|between|from|the|a|an|who|are|is|"
    r"must|be|up|no|more|less|equal|age)\b|[\d.,;:()<>=\u2265\u2264-]+"
)


def _residual(text: str) -> str:
    """What a demographic sentence says beyond age and sex ("of childbearing potential"), if anything."""
    return " ".join(_DEMOGRAPHIC_WORDS.sub(" ", text).split())


def _expand_stages(text: str) -> str:
    # "chronic kidney disease stage 3 or 4" names two concepts; spell the second out so the lexicon finds it.
    return re.sub(
        r"(chronic kidney disease|ckd) stage (\d)[ab]?\s*(?:or|to|-|and)\s*(?:stage\s*)?(\d)",
        lambda m: f"{m.group(1)} stage {m.group(2)} or {m.group(1)} stage {m.group(3)}",
        text,
    )


def parse_sentence(trial_id: str, section: Section, number: int, sentence: str) -> list[Criterion]:
    """The criteria one sentence states (at least one: type "other" when nothing is understood)."""
    prefix = "I" if section == "inclusion" else "E"
    sentence_id = f"{trial_id}-{prefix}{number}"
    text = _expand_stages(" ".join(sentence.lower().replace("\u2019", "'").split()))
    facts: list[dict[str, Any]] = []

    pregnancy = re.search(r"\b(pregnan\w*|breastfeeding|breast-feeding|lactating)\b", text)
    if pregnancy:
        codes = concepts.by_name("pregnancy")
        negated = is_negated(text, pregnancy.start())
        facts.append(
            {
                "type": "pregnancy",
                "concept": "pregnancy",
                "codes": codes.codes if codes else (),
                "negated": negated,
                "sex": "female",
            }
        )
    age = age_range(text)
    if age:
        facts.append(
            {"type": "age", "concept": "age", "comparator": age[0], "low": age[1], "high": age[2], "unit": "a"}
        )
    sex = "" if pregnancy else sex_of(text)
    if sex:
        facts.append({"type": "sex", "concept": "sex", "sex": sex})

    found = [f for f in concepts.find_terms(text) if f[2].name != "pregnancy"]
    groups = _groups(text, found)
    for k, group in enumerate(groups):
        begin = groups[k - 1][-1][1] if k else 0
        finish = groups[k + 1][0][0] if k + 1 < len(groups) else len(text)
        facts.extend(_group_fact(text, group, begin, finish))

    if not any(f["type"] in ("condition", "medication", "lab") for f in facts) and not pregnancy and not found:
        phrase = _concept_phrase(text)
        if phrase and len(phrase.split()) <= 6:
            resolution = max((concepts.resolve(phrase, k) for k in ("condition", "medication")), key=lambda r: r.score)
            if resolution.concept is not None:
                for fact in _group_fact(text, [(len(text), len(text), resolution.concept)], 0, len(text)):
                    facts.append({**fact, "method": "embedding", "score": resolution.score})

    if facts and all(f["type"] in ("age", "sex") for f in facts) and not found:
        residual = _residual(text)
        if residual:
            # "Women of childbearing potential not using contraception": the sex alone is not the criterion
            facts.append({"type": "other", "concept": residual, "method": "none", "score": 0.0})
    if not facts:
        return [
            Criterion(
                sentence_id, trial_id, section, sentence, "other", method="none", score=0.0, sentence_id=sentence_id
            )
        ]
    return [
        Criterion(
            sentence_id if k == 0 else f"{sentence_id}.{k + 1}",
            trial_id,
            section,
            sentence,
            sentence_id=sentence_id,
            **fact,
        )
        for k, fact in enumerate(facts)
    ]


def _groups(text: str, found: list[tuple[int, int, Concept]]) -> list[list[tuple[int, int, Concept]]]:
    """Concepts of one kind joined by "or" or commas form one any-of group; "and" or another kind starts a new one."""
    groups: list[list[tuple[int, int, Concept]]] = []
    for item in found:
        if groups and groups[-1][-1][2].kind == item[2].kind:
            joint = text[groups[-1][-1][1] : item[0]]
            if re.fullmatch(
                r"[\s,]*(?:or|and/or)?[\s,]*(?:another\s+|any other\s+|other\s+)?(?:history of\s+|prior\s+)?", joint
            ):
                groups[-1].append(item)
                continue
        groups.append([item])
    return groups


def _group_fact(text: str, group: list[tuple[int, int, Concept]], begin: int, finish: int) -> list[dict[str, Any]]:
    """The criteria of an any-of group (one, or one per sex for sex-specific lab thresholds); cue words are read
    between the neighbouring groups."""
    first = group[0]
    concept = first[2]
    if _NOT_THE_FACT.search(text[begin : first[0]]):
        return []  # an allergy or intolerance to the drug is not its use: the record here does not hold it
    names = list(dict.fromkeys(c.name for _, _, c in group))
    fact: dict[str, Any] = {
        "type": concept.kind,
        "concept": " or ".join(names),
        "codes": tuple(dict.fromkeys(code for _, _, c in group for code in c.codes)),
        "negated": is_negated(text, first[0]),
    }
    if concept.kind == "medication":
        fact["ingredients"] = tuple(dict.fromkeys(i for _, _, c in group for i in c.ingredients))
    segment = text[begin:finish]
    span = window(segment)
    if concept.kind == "lab":
        if len({c.unit for _, _, c in group}) > 1:
            return []
        fact.update({"timing": "window" if span is not None else "latest", "window_days": span})
        return _lab_bounds(fact, concept, text[group[-1][1] : finish])
    if span is not None:
        timing = "window"
    elif _EVER.search(text[begin : first[0]]) or re.search(
        r"\b(ever|never|in the past|at any time)\b|-naive\b", segment
    ):
        timing = "ever"
    else:
        timing = "current"
    fact.update({"timing": timing, "window_days": span, "min_duration_days": min_duration(segment)})
    return [fact]


def _lab_bounds(fact: dict[str, Any], concept: Concept, clause: str) -> list[dict[str, Any]]:
    """The lab's threshold; "> 1.5 mg/dL in men or > 1.4 mg/dL in women" gives one criterion per sex (`sex`), each
    of which holds trivially for the other sex, so that together (a sentence's criteria must all hold) they say
    what the sentence says."""
    parts = [(m.group(1), m.group(2)) for m in _SEX_PART.finditer(clause)]
    if not parts:
        bound = threshold(clause)
        return [] if bound is None else [_with_bound(fact, concept, bound)]
    out = []
    for segment, who in parts:
        bound = threshold(segment)
        if bound is None:
            return []
        out.append({**_with_bound(fact, concept, bound), "sex": "male" if who.startswith("m") else "female"})
    if len({f["sex"] for f in out}) == 1:
        out[0]["sex"] = ""  # "in men" alone: the sentence's own sex criterion says it (see sex_of)
    return out


def _with_bound(
    fact: dict[str, Any], concept: Concept, bound: tuple[str, float | None, float | None, str]
) -> dict[str, Any]:
    comparator, low, high, unit = bound
    unit = concepts.normalise_unit(unit) if unit else concept.unit
    return {**fact, "comparator": comparator, "low": low, "high": high, "unit": unit}


def parse_trial(protocol: Mapping[str, Any]) -> ParsedTrial:
    """A registry-style protocol dict (id, title, version, inclusion, exclusion, ...) parsed into criteria."""
    trial_id = str(protocol["id"])
    criteria: list[Criterion] = []
    for section in ("inclusion", "exclusion"):
        for number, sentence in enumerate(protocol.get(section, []), start=1):
            criteria.extend(parse_sentence(trial_id, section, number, str(sentence)))
    return ParsedTrial(
        trial_id,
        str(protocol.get("title", "")),
        int(protocol.get("version", 1)),
        str(protocol.get("phase", "")),
        tuple(str(c) for c in protocol.get("conditions", ())),
        tuple(criteria),
    )
