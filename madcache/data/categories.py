"""Question categories: VCR's 7 types (question patterns) and VQA's 8 types (first words).

Low-shot sampling draws k examples per category (MAD.md, "Evaluation protocol"), so these
functions decide which examples a split can contain. Both are pure functions of the question text.
"""

from __future__ import annotations

import re

# ----------------------------------------------------------------------------- VCR

VCR_CATEGORIES = ("explanation", "activity", "temporal", "mental", "role", "scene", "hypothetical")

# Checked in this order; the first pattern that matches the lower-cased question wins. The order
# goes from the most specific cue to the most generic one: "What would happen if ..." is
# hypothetical although it also looks temporal; "Do person1 and person2 know each other?" is
# about a role although "know" is a mental verb; "-ing" verbs are the last, weakest cue.
_NOT_VERBS = r"(?:some|no|any|every)?thing|during|morning|evening|ceiling|wedding|clothing"
VCR_PATTERNS: tuple[tuple[str, str], ...] = (
    ("hypothetical", r"\b(if|would|suppose|imagine|were to|could happen)\b"),
    ("explanation", r"\b(why|how come|reason|purpose|explain)\b"),
    (
        "role",
        r"\b(relation|relationship|related|role|job|occupation|profession|who|"
        r"know each other|friends?|married|couple|family|boss|status|for a living)\b"
        r"|^(is|are) [a-z]+\d+( and [a-z]+\d+)? (a|an|the)\b",
    ),
    (
        "mental",
        r"\b(think|thinks|thinking|thought|feel|feels|feeling|feelings|mood|emotion|"
        r"emotions|want|wants|wanting|believe|believes|know|knows|expect|expects|"
        r"opinion|attitude|react|reacting|reaction|worried|afraid|scared|happy|sad|"
        r"angry|mad|upset|surprised|nervous|excited|calm|bored|jealous|proud|confused|"
        r"embarrassed|annoyed|aware|attracted|interested|sorry|fun|enjoy|enjoys|"
        r"enjoying|care|cares|love|loves|hate|hates|mind|intention|intend|intends|"
        r"plan|plans|planning|hoping|hope|hopes)\b|(?<!look )(?<!looks )\blikes?\b",
    ),
    (
        "temporal",
        r"\b(will|going to|gonna|next|after|afterwards|before|later|soon|then|"
        r"previously|just|earlier|did|happened|happen|recently|about to|been)\b",
    ),
    (
        "scene",
        r"\b(where|place|location|setting|room|building|time of day|what time|"
        r"year|era|weather|season|city|country|indoors|outdoors)\b",
    ),
    (
        "activity",
        r"\b(doing|do|does|activity|happening|going on|holding|carrying|wearing)\b"
        rf"|\b(?!(?:{_NOT_VERBS})\b)[a-z]{{2,}}ing\b",
    ),
)
VCR_FALLBACK = "explanation"
_VCR_COMPILED = tuple((name, re.compile(pattern)) for name, pattern in VCR_PATTERNS)


def vcr_category(question: str) -> str:
    """One of `VCR_CATEGORIES` for a rendered VCR question (object tags as words)."""
    lowered = question.lower()
    for name, pattern in _VCR_COMPILED:
        if pattern.search(lowered):
            return name
    return VCR_FALLBACK


# ----------------------------------------------------------------------------- VQA

# The official 65 question types (GT-Vision-Lab/VQA QuestionTypes/mscoco_question_types.txt), in
# file order. A question's type is its longest matching prefix, as in the official annotations.
VQA_QUESTION_TYPES = (
    "how many",
    "is the",
    "what",
    "what color is the",
    "what is the",
    "is this",
    "is this a",
    "what is",
    "are the",
    "what kind of",
    "is there a",
    "what type of",
    "is it",
    "what are the",
    "where is the",
    "is there",
    "does the",
    "what color are the",
    "are these",
    "are there",
    "which",
    "is",
    "what is the man",
    "is the man",
    "are",
    "how",
    "does this",
    "what is on the",
    "what does the",
    "how many people are",
    "what is in the",
    "what is this",
    "do",
    "what are",
    "are they",
    "what time",
    "what sport is",
    "are there any",
    "is he",
    "what color is",
    "why",
    "where are the",
    "what color",
    "who is",
    "what animal is",
    "is the woman",
    "is this an",
    "do you",
    "how many people are in",
    "what room is",
    "has",
    "is this person",
    "what is the woman",
    "can you",
    "why is the",
    "is the person",
    "what is the color of the",
    "what is the person",
    "could",
    "was",
    "is that a",
    "what number is",
    "what is the name",
    "what brand",
    "none of the above",
)
VQA_NONE = "none of the above"

VQA_CATEGORIES = ("yes/no", "what", "what color", "how many", "where", "who", "why", "other")

# Official question type -> one of the 8 categories. Types not listed here fall to the rule in
# `_vqa_group`: "what ..." -> what; everything else -> other.
_YES_NO_STARTS = ("is", "are", "does", "do", "has", "can", "could", "was")


def _vqa_group(question_type: str) -> str:
    first = question_type.split()[0]
    if "color" in question_type:
        return "what color"
    if question_type.startswith("how many"):
        return "how many"
    if first in _YES_NO_STARTS:
        return "yes/no"
    if first in ("where", "who", "why", "what"):
        return first
    return "other"


VQA_TYPE_TO_CATEGORY: dict[str, str] = {t: _vqa_group(t) for t in VQA_QUESTION_TYPES}

_WORDS = re.compile(r"[a-z0-9']+")


def vqa_question_type(question: str) -> str:
    """The official question type: the longest type whose words start the question."""
    words = _WORDS.findall(question.lower())
    best = VQA_NONE
    for qtype in VQA_QUESTION_TYPES:
        type_words = qtype.split()
        if words[: len(type_words)] == type_words and (
            best == VQA_NONE or len(type_words) > len(best.split())
        ):
            best = qtype
    return best


def vqa_category(question: str) -> str:
    """One of `VQA_CATEGORIES`, from the question's first words."""
    return VQA_TYPE_TO_CATEGORY[vqa_question_type(question)]
