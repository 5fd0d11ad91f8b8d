"""Spending limits: a stage never sends a call that would take it past the recipe's budget.

`Allowance` is what a stage may still spend: for each limit over it (`budget.stages.<stage>`,
`budget.run`), the limit minus what was already spent on it (`tasks.stages.runner` works that out
from `llm_usage`, counting every earlier attempt at the same work, so a stopped stage does not get
a fresh budget by being run again). `BudgetMeter` holds it for one stage run, shared by every client
of the stage; `BudgetedClient` (inside the response cache, so hits are free) asks the meter before
each call:

- A call is sent only if what was spent, plus the estimates of the calls in flight, plus its own
  estimate, stays within every limit. The estimate is the call's input (prompt characters / 4,
  scaled up by the ratio of actual to estimated input measured on the calls paid so far) plus its
  `max_tokens` (a hard bound on its output), priced at the batch price where the stage batches.
- The first call refused makes the meter exhausted: from then on every call is refused at once,
  without reaching the backend, as a failed Completion. Calls already in flight finish and are
  recorded (paid for, so kept). So past the moment the budget was reached, at most the calls in
  flight then are paid: a stage's `max_concurrency` on a live backend; none in batch mode (a batch
  holds only admitted calls); the training judge's `max_concurrency` per step.
- The owner checks `exhausted` when its work returns: a stage run ends `stopped_at_budget`
  (`BudgetExhaustedError`), the trainer checkpoints its last finished step and exits.

Only paid backends are metered (`Recipe.is_paid`: an API; in-process and locally served models
cost nothing and are not counted, in tokens either).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from configs.schema import Decoding, Price
from tasks.llm.base import Completion, Message
from tasks.llm.limits import estimate_tokens


class BudgetExhaustedError(RuntimeError):
    """A stage stopped at its budget: what it paid is recorded, and it resumes when the budget is
    raised. The message names the limit, what was spent, and how to go on."""


@dataclass(frozen=True)
class Remaining:
    """What one limit leaves: `where` it is set, the limit, and how much of it was spent before."""

    where: str  # e.g. "budget.stages.generate" or "budget.run"
    cost_usd: float | None
    tokens: int | None
    spent_cost_usd: float = 0.0
    spent_tokens: int = 0


@dataclass(frozen=True)
class Allowance:
    """Every limit over one stage run (none: no budget)."""

    limits: tuple[Remaining, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.limits)


@dataclass
class _Ticket:
    cost_usd: float
    tokens: int
    input_estimate: int


@dataclass
class BudgetMeter:
    """Spend against an allowance, for one stage run; thread-safe (the trainer's judge runs on
    loops of its own)."""

    allowance: Allowance
    prices: Mapping[str, Price] = field(default_factory=dict)
    spent_cost_usd: float = 0.0
    spent_tokens: int = 0
    refused: int = 0
    exhausted: str | None = None  # the message, once a call was refused
    in_flight_at_exhaustion: int = 0  # calls admitted and not yet back then: all that can still be paid
    _in_flight: int = 0
    _reserved_cost: float = 0.0
    _reserved_tokens: int = 0
    _input_estimated: int = 0
    _input_actual: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _price(self, model: str, input_tokens: float, output_tokens: float, batched: bool) -> float:
        price = self.prices.get(model)
        if price is None:
            return 0.0  # a free model (in process, served locally); the recipe refuses unpriced paid ones
        return price.cost(input_tokens, output_tokens, batched=batched)

    def admit(
        self, model: str, messages: Sequence[Message], params: Decoding, *, batched: bool
    ) -> _Ticket | None:
        """A ticket for the call, or None when it would cross a limit (the meter is then exhausted)."""
        with self._lock:
            if self.exhausted is not None:
                self.refused += 1
                return None
            ratio = max(1.0, self._input_actual / self._input_estimated) if self._input_estimated else 1.0
            input_estimate = estimate_tokens(messages, 0)  # the rate limiter's: prompt characters / 4
            input_tokens = int(input_estimate * ratio) + 1
            tokens = input_tokens + params.max_tokens
            cost = self._price(model, input_tokens, params.max_tokens, batched)
            for limit in self.allowance.limits:
                over = self._crosses(limit, cost, tokens)
                if over is not None:
                    self.exhausted = over
                    self.in_flight_at_exhaustion = self._in_flight
                    self.refused += 1
                    return None
            self._reserved_cost += cost
            self._reserved_tokens += tokens
            self._in_flight += 1
            return _Ticket(cost, tokens, input_estimate)

    def _crosses(self, limit: Remaining, cost: float, tokens: int) -> str | None:
        spent_cost = limit.spent_cost_usd + self.spent_cost_usd
        spent_tokens = limit.spent_tokens + self.spent_tokens
        if limit.cost_usd is not None and spent_cost + self._reserved_cost + cost > limit.cost_usd:
            return (f"{limit.where}.cost_usd ({limit.cost_usd:g} USD) reached: ${spent_cost:.4f} spent"
                    f" and ${self._reserved_cost:.4f} in flight; the next call would take about ${cost:.4f}")  # fmt: skip
        if limit.tokens is not None and spent_tokens + self._reserved_tokens + tokens > limit.tokens:
            return (f"{limit.where}.tokens ({limit.tokens:,}) reached: {spent_tokens:,} tokens spent and "
                    f"{self._reserved_tokens:,} in flight; the next call would take up to {tokens:,}")  # fmt: skip
        return None

    def settle(self, ticket: _Ticket, model: str, completion: Completion) -> None:
        """The call is back: release its reservation and count what it actually used."""
        with self._lock:
            self._reserved_cost -= ticket.cost_usd
            self._reserved_tokens -= ticket.tokens
            self._in_flight -= 1
            if completion.cached:  # another caller's answer to the same call: paid there
                return
            used = completion.usage
            self.spent_tokens += used.input_tokens + used.output_tokens
            self.spent_cost_usd += self._price(
                model, used.input_tokens, used.output_tokens, completion.batched
            )
            if used.input_tokens:
                self._input_estimated += max(1, ticket.input_estimate)
                self._input_actual += used.input_tokens

    def summary(self) -> dict[str, Any]:
        return {"spent_cost_usd": round(self.spent_cost_usd, 6), "spent_tokens": self.spent_tokens,
                "refused_calls": self.refused, "exhausted": self.exhausted,
                "in_flight_at_exhaustion": self.in_flight_at_exhaustion}  # fmt: skip


class BudgetedClient:
    """An LLMClient that asks the stage's `BudgetMeter` before each call (module docstring)."""

    def __init__(self, inner: Any, meter: BudgetMeter, *, batched: bool = False) -> None:
        self.inner = inner
        self.meter = meter
        self.batched = batched
        self.backend_name = inner.backend_name
        self.model = inner.model

    def identity(self) -> dict[str, Any]:
        return self.inner.identity()

    async def chat(
        self, messages: Sequence[Message], params: Decoding, *, sample_index: int = 0
    ) -> Completion:
        ticket = self.meter.admit(self.model, messages, params, batched=self.batched)
        if ticket is None:
            return Completion.failure(f"not sent: {self.meter.exhausted}", attempts=0)  # no request made
        completion = Completion.failure("not run")
        try:
            completion = await self.inner.chat(messages, params, sample_index=sample_index)
            return completion
        finally:
            self.meter.settle(ticket, self.model, completion)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
