"""pm: turn the request text into prioritised requirements (MoSCoW), ambiguities to resolve,
and the questions a product spec usually needs answered that the request leaves open."""

from __future__ import annotations

import re

from conveyor.executor.builtin.payload import Payload, cap, plural
from conveyor.shared.contracts.events import ResultBody

_PRIORITY = (
    ("Won't", re.compile(r"(?i)\b(won't|will not|must not|out of scope|not needed|later)\b")),
    ("Must", re.compile(r"(?i)\b(must|need(s|ed)?|required?|critical|essential|have to|mandatory)\b")),
    ("Could", re.compile(r"(?i)\b(could|nice to have|maybe|optional|if possible|ideally)\b")),
    ("Should", re.compile(r"(?i)\b(should|want|would like|expect)\b")),
)
VAGUE = {
    "fast": "how fast, measured where (e.g. page load under 2 s on 4G)?",
    "quick": "what time limit counts as quick?",
    "easy": "easy for whom, and how will we know (task success rate, time on task)?",
    "simple": "what may be left out to keep it simple?",
    "user-friendly": "which usability goal, tested with which users?",
    "intuitive": "which task must a first-time user complete unaided?",
    "modern": "which reference designs or constraints define modern here?",
    "secure": "against which threats, and which data is sensitive?",
    "scalable": "what load (users, requests per second, data size) must it handle?",
    "robust": "which failures must it survive?",
    "etc": "what else is in the list?",
    "some": "how many exactly?",
    "many": "how many exactly?",
    "several": "how many exactly?",
    "flexible": "which changes must be possible without new work?",
    "seamless": "which hand-offs must need no user action?",
}
ASPECTS = {
    "who the users are": re.compile(r"(?i)\b(user|customer|visitor|admin|member|client|persona)s?\b"),
    "sign-in and permissions": re.compile(
        r"(?i)\b(login|log in|sign[- ]?(in|up)|auth|account|permission|role)s?\b"
    ),
    "data kept and for how long": re.compile(
        r"(?i)\b(data|store|save|database|record|retention|privacy|gdpr)\b"
    ),
    "mobile and screen sizes": re.compile(r"(?i)\b(mobile|phone|tablet|responsive|screen)s?\b"),
    "accessibility": re.compile(r"(?i)\b(accessib\w*|a11y|wcag|screen reader|contrast)\b"),
    "errors and empty states": re.compile(r"(?i)\b(error|fail\w*|empty|offline|invalid)\b"),
    "success measure": re.compile(r"(?i)\b(metric|kpi|measure|goal|conversion|success)s?\b"),
}


def requirements(text: str) -> list[str]:
    """Bullet lines if there are any, else sentences; short fragments dropped."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    bullets = [re.sub(r"^([-*•]|\d+[.)])\s+", "", ln) for ln in lines if re.match(r"^([-*•]|\d+[.)])\s+", ln)]
    items = bullets or [s.strip() for s in re.split(r"(?<=[.!?;])\s+|\n+", text) if s.strip()]
    return [i.rstrip(".") for i in items if len(i.split()) >= 3]


def priority(item: str) -> str:
    for name, pattern in _PRIORITY:
        if pattern.search(item):
            return name
    return "Should"


def analyse(payload: Payload, agent: str) -> ResultBody:
    text = payload.text()
    if not text.strip():
        return ResultBody(
            summary=f"{agent} (builtin): the payload has no request text (prompt, description or "
            "requirements) to plan from."
        )
    items = requirements(text)
    order = {"Must": 0, "Should": 1, "Could": 2, "Won't": 3}
    ranked = sorted(((priority(i), n, i) for n, i in enumerate(items)), key=lambda t: (order[t[0]], t[1]))
    stories = [f"[{p}] {i}" for p, _, i in ranked]
    words = re.findall(r"[a-z][a-z-]*", text.lower())
    vague = [f"'{w}': {VAGUE[w]}" for w in dict.fromkeys(words) if w in VAGUE]
    missing = [aspect for aspect, pattern in ASPECTS.items() if not pattern.search(text)]
    counts = {p: sum(1 for q, _, _ in ranked if q == p) for p in order}
    size = "small" if len(items) <= 3 else "medium" if len(items) <= 8 else "large"
    summary = (
        f"{agent} (builtin): {plural(len(items), 'requirement')} found "
        f"({', '.join(f'{c} {p}' for p, c in counts.items() if c)}); scope looks {size}; "
        f"{plural(len(vague), 'vague term')} to pin down; "
        f"{plural(len(missing), 'topic')} not covered" + (f" ({', '.join(missing)})" if missing else "") + "."
    )
    suggestions = [*stories, *(f"clarify {v}" for v in vague), *(f"decide {m}" for m in missing)]
    if not items:
        suggestions.insert(0, "write the request as one requirement per line, each with a verb")
    return ResultBody(summary=summary, suggestions=cap(suggestions, 60))
