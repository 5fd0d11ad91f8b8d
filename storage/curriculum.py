"""The dynamic reference scheduling curriculum (Writing-RL, arXiv 2506.05760), in the DuckDB catalog.

Every training instruction has a ladder of references in ascending quality (rung 0: the policy's own
initial response) and a current rung, starting at 0. After each training step an instruction whose
rollouts beat its current reference moves up one rung. Whether they beat it is decided by the
caller (tasks/curriculum/scheduling.py); this module keeps the state and enforces the invariants
that must hold whatever the caller does:

- at most one rung per step, never above the top rung, and only when the outcome was judged against
  the instruction's *current* rung (a stale outcome never moves the state);
- steps arrive in increasing order. Re-applying a step that is already recorded is a no-op when
  its outcomes are identical to the recorded ones (a retried call returns the recorded promotions
  and promotes nothing twice) and an error otherwise;
- one transaction per step: the history rows and the state updates of a step commit together, so
  a crash mid-call leaves the previous step's state, never half a step;
- an instruction whose rollouts beat its TOP rung cannot move up; the step it first did is kept
  (`topped_step`, history `reached_top`), snapshotted and restored with the rungs, so what
  `curriculum.top` does with it (stay, retire, judge within the group) resumes exactly;
- a checkpoint saves a snapshot of the state (`snapshot`), and a resumed run calls `restore`, which
  puts that snapshot back and deletes the history (and later snapshots) of the lost tail: the steps
  after the checkpoint were trained into weights that no longer exist, so a resumed run must judge
  against the checkpoint's rungs, not against the rungs reached at the moment of the kill.

The official implementation kept the rungs in a JSON file rewritten in place and added one rung per
winning rollout; both are fixed here. `create` also snapshots the initial state as step 0, so a run
killed before its first checkpoint restores step 0. Step numbers are the trainer's optimizer steps,
counted from 1: apply step N's outcomes, then `snapshot(N)` when checkpoint N is saved.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import pyarrow as pa

from storage.catalog import Catalog
from storage.refs import DatasetRef

HISTORY_SCHEMA = pa.schema(
    [
        ("step", pa.int64()),
        ("instruction_id", pa.string()),
        ("rung_judged", pa.int32()),
        ("rung_before", pa.int32()),
        ("rung_after", pa.int32()),
        ("wins", pa.int32()),
        ("ties", pa.int32()),
        ("losses", pa.int32()),
        ("failures", pa.int32()),
        ("mean_reward", pa.float64()),
        ("promoted", pa.bool_()),
        ("reached_top", pa.bool_()),  # this step's rollouts beat the top rung, for the first time
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)
_HISTORY_COLUMNS = tuple(HISTORY_SCHEMA.names)
_EXAMPLES = 5  # instruction ids quoted in an error message


class CurriculumError(RuntimeError):
    """A curriculum call that would break its invariants (unknown curriculum or instruction, a step
    out of order or replayed with different outcomes, a missing snapshot)."""


@dataclass(frozen=True)
class StepOutcome:
    """One instruction's result in one step, as judged by the caller.

    `rung_judged` is the rung its rollouts were compared with (None: several rungs, as under the
    random schedule); `promote` is the caller's decision under its promotion rule. The store
    promotes only if `rung_judged` is still the instruction's current rung.
    """

    instruction_id: str
    rung_judged: int | None
    wins: int
    ties: int
    losses: int
    failures: int
    mean_reward: float | None
    promote: bool


@dataclass(frozen=True)
class Promotion:
    instruction_id: str
    rung_before: int
    rung_after: int


def reaches_top(outcome: StepOutcome, rung: int, n_rungs: int, already_topped: bool) -> bool:
    """Whether `outcome`, judged while its instruction sits on `rung` of `n_rungs`, is its first win
    over its top rung. The store records it; the reward's in-memory copy follows the same rule."""
    return bool(outcome.promote) and outcome.rung_judged == rung == n_rungs - 1 and not already_topped


class CurriculumStore:
    def __init__(self, catalog: Catalog):
        self.catalog = catalog

    # -- setup -----------------------------------------------------------------------------------

    def create(
        self,
        curriculum_id: str,
        n_rungs: Mapping[str, int],
        *,
        start_rungs: Mapping[str, int] | None = None,
        config_json: str | Mapping[str, Any] = "{}",
        ladders_ref: str | DatasetRef | None = None,
    ) -> dict[str, int]:
        """Create a curriculum over `n_rungs` (instruction -> ladder length, rung 0 included).

        Idempotent: if it already exists over the same instructions and ladder lengths, its current
        state is returned unchanged (`start_rungs`, `config_json` and `ladders_ref` are then
        ignored); over different ones it is an error. Returns instruction -> current rung.
        """
        _check_id(curriculum_id)
        sizes = {str(iid): _int(n, f"n_rungs[{iid!r}]") for iid, n in n_rungs.items()}
        if not sizes:
            raise ValueError(f"curriculum '{curriculum_id}' needs at least one instruction")
        if bad := sorted(iid for iid, n in sizes.items() if n < 1):
            raise ValueError(f"n_rungs must be >= 1 (rung 0 is the policy's own response); got {bad}")
        start = {iid: 0 for iid in sizes}
        for iid, rung in (start_rungs or {}).items():
            if iid not in sizes:
                raise ValueError(f"start_rungs names instruction '{iid}', which has no ladder")
            rung = _int(rung, f"start_rungs[{iid!r}]")
            if not 0 <= rung < sizes[iid]:
                raise ValueError(
                    f"start rung {rung} of instruction '{iid}' is outside its ladder 0..{sizes[iid] - 1}"
                )
            start[iid] = rung
        if not isinstance(config_json, str):
            config_json = json.dumps(config_json, sort_keys=True, default=str)

        with self.catalog.connect("curriculum create") as con:
            if _exists(con, curriculum_id):
                stored = dict(
                    con.execute(
                        "SELECT instruction_id, n_rungs FROM curriculum_state WHERE curriculum_id = ?",
                        [curriculum_id],
                    ).fetchall()
                )
                if stored != sizes:
                    raise CurriculumError(
                        f"curriculum '{curriculum_id}' already exists over different ladders: "
                        f"{_describe_difference(stored, sizes)}. Use a new curriculum id for new ladders."
                    )
                return _state(con, curriculum_id)
            con.execute(
                "INSERT INTO curricula VALUES (?, current_timestamp, ?, ?)",
                [curriculum_id, config_json, None if ladders_ref is None else str(ladders_ref)],
            )
            rows = pa.table(
                {
                    "instruction_id": pa.array(list(sizes), pa.string()),
                    "rung": pa.array([start[iid] for iid in sizes], pa.int32()),
                    "n_rungs": pa.array(list(sizes.values()), pa.int32()),
                }
            )
            with _registered(con, "wrl_curriculum_new", rows):
                con.execute(
                    "INSERT INTO curriculum_state (curriculum_id, instruction_id, rung, n_rungs, updated_step,"
                    " topped_step) SELECT ?, instruction_id, rung, n_rungs, NULL, NULL FROM wrl_curriculum_new",
                    [curriculum_id],
                )
            _write_snapshot(con, curriculum_id, 0)
            return dict(sorted(start.items()))

    # -- reading ---------------------------------------------------------------------------------

    def exists(self, curriculum_id: str) -> bool:
        with self.catalog.connect("curriculum lookup") as con:
            return _exists(con, curriculum_id)

    def info(self, curriculum_id: str) -> dict[str, Any]:
        """The curriculum's row plus its size, last applied step and snapshot steps."""
        with self.catalog.connect("curriculum info") as con:
            rows = con.execute(
                "SELECT curriculum_id, created_at, config_json, ladders_ref FROM curricula"
                " WHERE curriculum_id = ?",
                [curriculum_id],
            ).fetchall()
            if not rows:
                raise _unknown(curriculum_id)
            info = dict(
                zip(("curriculum_id", "created_at", "config_json", "ladders_ref"), rows[0], strict=True)
            )
            info["n_instructions"] = _scalar(
                con, "SELECT count(*) FROM curriculum_state WHERE curriculum_id = ?", [curriculum_id]
            )
            info["last_step"] = _last_step(con, curriculum_id)
            info["snapshot_steps"] = _snapshot_steps(con, curriculum_id)
        return info

    def state(self, curriculum_id: str, instruction_ids: Iterable[str] | None = None) -> dict[str, int]:
        """Instruction -> current rung: every instruction's, or only those of `instruction_ids` (a
        training step reads its batch's, so its cost does not grow with the dataset)."""
        with self.catalog.connect("curriculum state") as con:
            _require(con, curriculum_id)
            if instruction_ids is None:
                return _state(con, curriculum_id)
            ids = sorted(set(instruction_ids))
            return {iid: rung for iid, (rung, *_) in _current_rungs(con, curriculum_id, ids).items()}

    def topped(self, curriculum_id: str) -> dict[str, int]:
        """Instruction -> the step its rollouts first beat its top rung, for those that have."""
        with self.catalog.connect("curriculum topped") as con:
            _require(con, curriculum_id)
            return dict(
                con.execute(
                    "SELECT instruction_id, topped_step FROM curriculum_state WHERE curriculum_id = ?"
                    " AND topped_step IS NOT NULL ORDER BY instruction_id",
                    [curriculum_id],
                ).fetchall()
            )

    def n_rungs(self, curriculum_id: str) -> dict[str, int]:
        """Instruction -> ladder length (rung 0 included)."""
        with self.catalog.connect("curriculum ladder sizes") as con:
            _require(con, curriculum_id)
            return dict(
                con.execute(
                    "SELECT instruction_id, n_rungs FROM curriculum_state WHERE curriculum_id = ?"
                    " ORDER BY instruction_id",
                    [curriculum_id],
                ).fetchall()
            )

    def last_step(self, curriculum_id: str) -> int | None:
        """The last step with recorded outcomes; None before the first."""
        with self.catalog.connect("curriculum last step") as con:
            _require(con, curriculum_id)
            return _last_step(con, curriculum_id)

    def snapshot_steps(self, curriculum_id: str) -> list[int]:
        with self.catalog.connect("curriculum snapshot steps") as con:
            _require(con, curriculum_id)
            return _snapshot_steps(con, curriculum_id)

    def history(self, curriculum_id: str) -> pa.Table:
        """Every recorded outcome, ordered by step and instruction (schema: HISTORY_SCHEMA)."""
        with self.catalog.connect("curriculum history") as con:
            _require(con, curriculum_id)
            rows = con.execute(
                f"SELECT {', '.join(_HISTORY_COLUMNS)} FROM curriculum_history WHERE curriculum_id = ?"
                " ORDER BY step, instruction_id",
                [curriculum_id],
            ).fetchall()
        return pa.Table.from_pylist(
            [dict(zip(_HISTORY_COLUMNS, row, strict=True)) for row in rows], schema=HISTORY_SCHEMA
        )

    # -- steps -----------------------------------------------------------------------------------

    def apply_step(self, curriculum_id: str, step: int, outcomes: Sequence[StepOutcome]) -> list[Promotion]:
        """Record step `step`'s outcomes and promote, in one transaction; returns the promotions.

        `step` must be greater than every step already recorded or snapshotted. A step that is
        already recorded is a no-op returning its recorded promotions if `outcomes` match the
        recorded ones, and a CurriculumError otherwise (see the module docstring).
        """
        step = _int(step, "step")
        if step < 1:
            raise ValueError(f"steps are counted from 1 (step 0 is the initial state); got {step}")
        outcomes = list(outcomes)
        _validate_outcomes(outcomes)
        with self.catalog.connect(f"curriculum step {step}") as con:
            _require(con, curriculum_id)
            recorded = _recorded_step(con, curriculum_id, step)
            if recorded:
                return _replay(curriculum_id, step, recorded, outcomes)
            steps = (_last_step(con, curriculum_id), _last_snapshot(con, curriculum_id))
            last = max((s for s in steps if s is not None), default=None)
            if last is not None and step <= last:
                raise CurriculumError(
                    f"curriculum '{curriculum_id}': step {step} is not after step {last}, which is already "
                    "recorded or snapshotted; steps must increase. After a crash, call restore() with the "
                    "checkpoint's step first."
                )
            if not outcomes:
                return []
            current = _current_rungs(con, curriculum_id, [o.instruction_id for o in outcomes])
            rows, promotions = [], []
            for o in outcomes:
                rung, size, topped_step = current[o.instruction_id]
                # Judged against the current rung: a stale outcome moves nothing.
                promoted = bool(o.promote) and o.rung_judged == rung and rung < size - 1
                reached_top = reaches_top(o, rung, size, topped_step is not None)
                after = rung + 1 if promoted else rung
                if promoted:
                    promotions.append(Promotion(o.instruction_id, rung, after))
                rows.append((o, rung, after, promoted, reached_top))
            _insert_history(con, curriculum_id, step, rows)
            _update_state(con, curriculum_id, step, rows)
        return promotions

    # -- checkpoints -----------------------------------------------------------------------------

    def snapshot(self, curriculum_id: str, step: int) -> None:
        """Save the current state as the state of checkpoint `step` (replacing an earlier snapshot
        of the same step). The state must already include step `step`: snapshotting a step older
        than the last recorded one is refused, since the state has moved past it."""
        step = _int(step, "step")
        with self.catalog.connect(f"curriculum snapshot {step}") as con:
            _require(con, curriculum_id)
            for what, last in (
                ("recorded", _last_step(con, curriculum_id)),
                ("snapshotted", _last_snapshot(con, curriculum_id)),
            ):
                if last is not None and step < last:
                    raise CurriculumError(
                        f"curriculum '{curriculum_id}': cannot snapshot step {step}, step {last} is already "
                        f"{what} and the state includes it"
                    )
            _write_snapshot(con, curriculum_id, step)

    def restore(self, curriculum_id: str, step: int) -> dict[str, int]:
        """Put back the state of checkpoint `step` and forget every later step (history rows and
        snapshots), in one transaction. Returns the restored state."""
        step = _int(step, "step")
        with self.catalog.connect(f"curriculum restore {step}") as con:
            _require(con, curriculum_id)
            if step not in _snapshot_steps(con, curriculum_id):
                raise CurriculumError(
                    f"curriculum '{curriculum_id}' has no snapshot for step {step}; snapshots exist for "
                    f"steps {_snapshot_steps(con, curriculum_id)}"
                )
            con.execute(
                "UPDATE curriculum_state SET rung = snap.rung, topped_step = snap.topped_step"
                " FROM curriculum_snapshots snap"
                " WHERE curriculum_state.curriculum_id = ? AND snap.curriculum_id = ? AND snap.step = ?"
                " AND snap.instruction_id = curriculum_state.instruction_id",
                [curriculum_id, curriculum_id, step],
            )
            for table in ("curriculum_history", "curriculum_snapshots"):
                con.execute(
                    f"DELETE FROM {table} WHERE curriculum_id = ? AND step > ?", [curriculum_id, step]
                )
            # updated_step: the last surviving step that judged each instruction.
            con.execute(
                "UPDATE curriculum_state SET updated_step = (SELECT max(h.step) FROM curriculum_history h"
                " WHERE h.curriculum_id = curriculum_state.curriculum_id"
                " AND h.instruction_id = curriculum_state.instruction_id) WHERE curriculum_id = ?",
                [curriculum_id],
            )
            return _state(con, curriculum_id)


# -- helpers (all run inside a caller's connection/transaction) -----------------------------------


@contextmanager
def _registered(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> Iterator[str]:
    # DuckDB refuses register() while a result is only partly fetched: the helpers below fetchall().
    con.register(name, table)
    try:
        yield name
    finally:
        con.unregister(name)


def _exists(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> bool:
    return bool(con.execute("SELECT 1 FROM curricula WHERE curriculum_id = ?", [curriculum_id]).fetchall())


def _require(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> None:
    if not _exists(con, curriculum_id):
        raise _unknown(curriculum_id)


def _unknown(curriculum_id: str) -> CurriculumError:
    return CurriculumError(f"no curriculum '{curriculum_id}' in this storage; create() it first")


def _state(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> dict[str, int]:
    return dict(
        con.execute(
            "SELECT instruction_id, rung FROM curriculum_state WHERE curriculum_id = ? ORDER BY instruction_id",
            [curriculum_id],
        ).fetchall()
    )


def _last_step(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> int | None:
    return _scalar(con, "SELECT max(step) FROM curriculum_history WHERE curriculum_id = ?", [curriculum_id])


def _last_snapshot(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> int | None:
    return _scalar(con, "SELECT max(step) FROM curriculum_snapshots WHERE curriculum_id = ?", [curriculum_id])


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> Any:
    return con.execute(sql, params).fetchall()[0][0]


def _snapshot_steps(con: duckdb.DuckDBPyConnection, curriculum_id: str) -> list[int]:
    rows = con.execute(
        "SELECT DISTINCT step FROM curriculum_snapshots WHERE curriculum_id = ? ORDER BY step",
        [curriculum_id],
    ).fetchall()
    return [r[0] for r in rows]


def _write_snapshot(con: duckdb.DuckDBPyConnection, curriculum_id: str, step: int) -> None:
    con.execute(
        "DELETE FROM curriculum_snapshots WHERE curriculum_id = ? AND step = ?", [curriculum_id, step]
    )
    con.execute(
        "INSERT INTO curriculum_snapshots (curriculum_id, step, instruction_id, rung, topped_step)"
        " SELECT curriculum_id, ?, instruction_id, rung, topped_step FROM curriculum_state WHERE curriculum_id = ?",
        [step, curriculum_id],
    )


def _current_rungs(
    con: duckdb.DuckDBPyConnection, curriculum_id: str, instruction_ids: list[str]
) -> dict[str, tuple[int, int, int | None]]:
    """Instruction -> (current rung, ladder length, the step it reached the top or None)."""
    with _registered(con, "wrl_curriculum_ids", pa.table({"instruction_id": instruction_ids})):
        rows = con.execute(
            "SELECT s.instruction_id, s.rung, s.n_rungs, s.topped_step FROM curriculum_state s"
            " JOIN wrl_curriculum_ids i ON s.instruction_id = i.instruction_id WHERE s.curriculum_id = ?",
            [curriculum_id],
        ).fetchall()
    current = {iid: (rung, size, topped) for iid, rung, size, topped in rows}
    if missing := [iid for iid in instruction_ids if iid not in current]:
        raise CurriculumError(
            f"curriculum '{curriculum_id}' has no instruction(s) {missing[:_EXAMPLES]}"
            f"{' ...' if len(missing) > _EXAMPLES else ''} ({len(missing)} unknown)"
        )
    return current


def _insert_history(
    con: duckdb.DuckDBPyConnection,
    curriculum_id: str,
    step: int,
    rows: list[tuple[StepOutcome, int, int, bool, bool]],
) -> None:
    table = pa.table(
        {
            "instruction_id": pa.array([o.instruction_id for o, *_ in rows], pa.string()),
            "rung_judged": pa.array([o.rung_judged for o, *_ in rows], pa.int32()),
            "rung_before": pa.array([before for _, before, *_ in rows], pa.int32()),
            "rung_after": pa.array([after for _, _, after, *_ in rows], pa.int32()),
            "wins": pa.array([o.wins for o, *_ in rows], pa.int32()),
            "ties": pa.array([o.ties for o, *_ in rows], pa.int32()),
            "losses": pa.array([o.losses for o, *_ in rows], pa.int32()),
            "failures": pa.array([o.failures for o, *_ in rows], pa.int32()),
            "mean_reward": pa.array([o.mean_reward for o, *_ in rows], pa.float64()),
            "promoted": pa.array([promoted for *_, promoted, _ in rows], pa.bool_()),
            "reached_top": pa.array([top for *_, top in rows], pa.bool_()),
        }
    )
    with _registered(con, "wrl_curriculum_step", table):
        con.execute(
            f"INSERT INTO curriculum_history (curriculum_id, step, {', '.join(_HISTORY_COLUMNS[1:])})"
            " SELECT ?, ?, instruction_id, rung_judged, rung_before, rung_after, wins, ties, losses, failures,"
            " mean_reward, promoted, reached_top, current_timestamp FROM wrl_curriculum_step",
            [curriculum_id, step],
        )


def _update_state(
    con: duckdb.DuckDBPyConnection,
    curriculum_id: str,
    step: int,
    rows: list[tuple[StepOutcome, int, int, bool, bool]],
) -> None:
    table = pa.table(
        {
            "instruction_id": pa.array([o.instruction_id for o, *_ in rows], pa.string()),
            "rung_after": pa.array([after for _, _, after, *_ in rows], pa.int32()),
            "reached_top": pa.array([top for *_, top in rows], pa.bool_()),
        }
    )
    with _registered(con, "wrl_curriculum_update", table):
        con.execute(
            "UPDATE curriculum_state SET rung = u.rung_after, updated_step = ?,"
            " topped_step = CASE WHEN u.reached_top THEN ? ELSE curriculum_state.topped_step END"
            " FROM wrl_curriculum_update u"
            " WHERE curriculum_state.curriculum_id = ? AND curriculum_state.instruction_id = u.instruction_id",
            [step, step, curriculum_id],
        )


def _recorded_step(con: duckdb.DuckDBPyConnection, curriculum_id: str, step: int) -> dict[str, tuple]:
    rows = con.execute(
        "SELECT instruction_id, rung_judged, wins, ties, losses, failures, mean_reward, promoted,"
        " rung_before, rung_after FROM curriculum_history WHERE curriculum_id = ? AND step = ?",
        [curriculum_id, step],
    ).fetchall()
    return {r[0]: r[1:] for r in rows}


def _replay(
    curriculum_id: str, step: int, recorded: dict[str, tuple], outcomes: list[StepOutcome]
) -> list[Promotion]:
    """A step already recorded: identical outcomes are a no-op, anything else an error."""
    if not _same_outcomes(recorded, outcomes):
        raise CurriculumError(
            f"curriculum '{curriculum_id}': step {step} is already recorded with different outcomes; a step "
            "is applied once. After a crash, call restore() with the checkpoint's step first."
        )
    promotions = []
    for o in outcomes:
        *_, promoted, before, after = recorded[o.instruction_id]
        if promoted:
            promotions.append(Promotion(o.instruction_id, before, after))
    return promotions


def _same_outcomes(recorded: dict[str, tuple], outcomes: list[StepOutcome]) -> bool:
    if set(recorded) != {o.instruction_id for o in outcomes}:
        return False
    for o in outcomes:
        judged, wins, ties, losses, failures, mean, promoted, _, _ = recorded[o.instruction_id]
        counts = (o.rung_judged, o.wins, o.ties, o.losses, o.failures, o.mean_reward)
        # A recorded promotion must have been asked for; a refused one (stale, top rung) may have been.
        if (judged, wins, ties, losses, failures, mean) != counts or (promoted and not o.promote):
            return False
    return True


def _validate_outcomes(outcomes: list[StepOutcome]) -> None:
    seen: set[str] = set()
    for o in outcomes:
        if not isinstance(o.instruction_id, str) or not o.instruction_id:
            raise ValueError(f"outcome has no instruction id: {o!r}")
        if o.instruction_id in seen:
            raise ValueError(
                f"instruction '{o.instruction_id}' has two outcomes in one step; aggregate its rollouts first"
            )
        seen.add(o.instruction_id)
        for name in ("wins", "ties", "losses", "failures"):
            if _int(getattr(o, name), f"{name} of '{o.instruction_id}'") < 0:
                raise ValueError(f"{name} of '{o.instruction_id}' is negative: {o!r}")
        if o.rung_judged is not None and _int(o.rung_judged, f"rung_judged of '{o.instruction_id}'") < 0:
            raise ValueError(f"rung_judged of '{o.instruction_id}' is negative: {o!r}")
        if o.promote and o.rung_judged is None:
            raise ValueError(
                f"outcome of '{o.instruction_id}' asks for a promotion but names no judged rung: {o!r}"
            )
        if o.mean_reward is not None and not math.isfinite(o.mean_reward):
            raise ValueError(f"mean_reward of '{o.instruction_id}' is not finite: {o!r}")


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        # numpy integers and the like: accept what converts exactly, refuse floats and strings.
        try:
            as_int = int(value)
        except (TypeError, ValueError):
            raise TypeError(f"{what} must be an integer, got {value!r}") from None
        if isinstance(value, bool | float | str) or as_int != value:
            raise TypeError(f"{what} must be an integer, got {value!r}")
        return as_int
    return value


def _check_id(curriculum_id: str) -> None:
    if not isinstance(curriculum_id, str) or not curriculum_id.strip():
        raise ValueError(f"curriculum id must be a non-empty string, got {curriculum_id!r}")


def _describe_difference(stored: Mapping[str, int], wanted: Mapping[str, int]) -> str:
    parts = []
    if missing := sorted(set(wanted) - set(stored)):
        parts.append(f"{len(missing)} new instruction(s) such as {missing[:_EXAMPLES]}")
    if gone := sorted(set(stored) - set(wanted)):
        parts.append(f"{len(gone)} instruction(s) no longer present such as {gone[:_EXAMPLES]}")
    if resized := sorted(iid for iid in set(stored) & set(wanted) if stored[iid] != wanted[iid]):
        examples = [f"{iid}: {stored[iid]} -> {wanted[iid]} rungs" for iid in resized[:_EXAMPLES]]
        parts.append(f"{len(resized)} ladder(s) of a different length such as {examples}")
    return "; ".join(parts)
