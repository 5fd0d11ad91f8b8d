"""A pairwise judge with a known truth, served over HTTP by the fault server (`reply_text`).

Every response the judge may see is registered with a hidden quality. For a prompt that shows
responses A and B (found by their text, so any prompt version works), the judge prefers A by

    z = q_A - q_B + position_bias + length_bias * log(words_A / words_B) + noise

and answers `[[A]]` if z > tie_band, `[[B]]` if z < -tie_band, else `[[C]]`. `position_bias`
> 0 favours the first position (the bias the paper's order works against), `length_bias` > 0
the longer response. The noise is a normal draw with sd `noise`, a function of the request: at
temperature 0 of the messages alone (a greedy judge repeats itself), above it also of how many
times this exact request was seen (a sampling judge varies between repeated calls). So runs are
reproducible whatever the order the requests arrive in.

The truth of a comparison is q_policy > q_reference: the reward a perfect judge would give.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SimulatedJudge:
    position_bias: float = 0.0
    length_bias: float = 0.0
    noise: float = 0.25
    tie_band: float = 0.05
    quality: dict[str, float] = field(default_factory=dict)  # response text -> hidden quality
    _seen: Counter[str] = field(default_factory=Counter, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, text: str, quality: float) -> str:
        self.quality[text] = quality
        return text

    def preference(self, a: str, b: str, draw: float) -> float:
        """z: how strongly the judge prefers A to B on this call (`draw`: a standard normal)."""
        words = math.log(max(1, len(a.split())) / max(1, len(b.split())))
        return (self.quality[a] - self.quality[b] + self.position_bias + self.length_bias * words
                + self.noise * draw)  # fmt: skip

    def letter(self, z: float) -> str:
        return "A" if z > self.tie_band else "B" if z < -self.tie_band else "C"

    def shown(self, prompt: str) -> tuple[str, str]:
        """(Response A, Response B): the two registered texts the prompt shows, in prompt order."""
        found = sorted((prompt.find(text), text) for text in self.quality if text in prompt)
        if len(found) != 2:
            raise ValueError(f"the prompt shows {len(found)} registered responses, not 2")
        return found[0][1], found[1][1]

    def _draw(self, body: dict[str, Any]) -> float:
        key = json.dumps(body.get("messages"), sort_keys=True)
        if (body.get("temperature") or 0) > 0:  # sampling: the k-th repeat of a request draws anew
            key += json.dumps([body.get("seed"), body.get("temperature")])
            with self._lock:
                repeat = self._seen[key]
                self._seen[key] += 1
            key += f"#{repeat}"
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:16], 16)
        return random.Random(seed).gauss(0.0, 1.0)

    def reply_text(self, body: dict[str, Any]) -> str:
        prompt = "\n".join(str(m.get("content")) for m in body.get("messages", []) if m.get("role") == "user")
        a, b = self.shown(prompt)
        return f"Compared on the criteria.\n[[{self.letter(self.preference(a, b, self._draw(body)))}]]"
