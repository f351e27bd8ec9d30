"""Human steps: answering a run that waits for a human (``human.approve``, ``human.input``).

A human step's action raises :class:`~flowyard.workflow.WaitingForInput`; the engine records
the step key as waiting and ends the run ``waiting`` (no process holds it). What is stored in
the run record's ``metadata["human"]``:

``waiting``  ``{step_key: {prompt, kind, schema, deadline, default, has_default, step_id,
             since}}``: every request made (the first one of a key is kept, so its deadline
             survives resumes);
``answers``  ``{step_key: {value, by, at, expired}}``: the answers given (``by`` is who
             answered; ``"flowyard:timeout"`` when the deadline passed; ``expired`` True then).

A key is *pending* while it is in ``waiting`` and not in ``answers``. :func:`answer_step`
claims the run's lease (so two answerers, or an answerer and a resume, never overlap), checks
the answer, stores it with a ``human.answered`` event (and an audit record when the storage
keeps the audit log), then resumes the run under the same lease: the human step returns the
answer and the run goes on; checkpointed steps are not run again. :func:`expire_waiting`
gives every pending key whose deadline passed its default outcome.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from flowyard.errors import WorkflowError
from flowyard.interfaces import RunQuery, SupportsAuditLog
from flowyard.models import AuditRecord, Event
from flowyard.serialization import json_default

from .lease import LeaseKeeper, LeaseSettings, RunInUseError

if TYPE_CHECKING:
    from flowyard.interfaces import Services
    from flowyard.models import RunRecord
    from flowyard.workflow import RunResult

__all__ = ["HumanAnswerError", "answer_step", "expire_waiting", "pending_steps",
           "APPROVE_SCHEMA", "TIMEOUT_ACTOR", "DEFAULT_MAX_ANSWER_BYTES"]

#: The answer of a ``human.approve`` step: ``{"approved": true, "comment": "..."}``.
APPROVE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "comment": {"type": "string"}},
    "required": ["approved"],
    "additionalProperties": False,
}
#: Who "answered" a step whose deadline passed.
TIMEOUT_ACTOR = "flowyard:timeout"
#: Largest answer accepted, in bytes of its JSON (config ``human.max_answer_bytes``).
DEFAULT_MAX_ANSWER_BYTES = 1_000_000


class HumanAnswerError(WorkflowError):
    """An answer was refused: the run is not waiting, the step is not waiting or was already
    answered, or the value is invalid (not JSON, too large, against the step's schema).
    Nothing was stored.

    Attributes:
        reason: ``"state"`` (the run or step is not waiting, or was answered: a conflict) or
            ``"value"`` (the answer itself is invalid).
    """

    def __init__(self, message: str, *, reason: str = "state") -> None:
        super().__init__(message)
        self.reason = reason


def pending_steps(record: RunRecord) -> dict[str, dict[str, Any]]:
    """Return the step keys of ``record`` that wait for an answer.

    Args:
        record: a stored run.

    Returns:
        ``{step_key: request}`` (the request as stored in ``metadata["human"]["waiting"]``:
        prompt, kind, schema, deadline in UNIX seconds or None, default, has_default,
        step_id, since), empty when none waits.
    """
    human = record.metadata.get("human") or {}
    answers = human.get("answers") or {}
    return {key: dict(request) for key, request in (human.get("waiting") or {}).items()
            if key not in answers}


def _resolve_key(record: RunRecord, step: str) -> str:
    pending = pending_steps(record)
    if step in pending:
        return step
    answers = (record.metadata.get("human") or {}).get("answers") or {}
    if step in answers:
        given = answers[step]
        raise HumanAnswerError(
            f"step {step!r} of run {record.id} was already answered by {given.get('by')!r} at "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(given.get('at', 0)))} UTC; "
            "nothing was stored")
    keys = [k for k, r in pending.items() if r.get("step_id") == step]
    if len(keys) == 1:
        return keys[0]
    if len(keys) > 1:
        raise HumanAnswerError(f"step {step!r} of run {record.id} waits with several keys "
                               f"({', '.join(sorted(keys))}): answer one of them")
    waiting = ", ".join(sorted(pending)) or "none"
    raise HumanAnswerError(f"step {step!r} of run {record.id} is not waiting for an answer "
                           f"(waiting: {waiting}); nothing was stored")


def _check_value(record: RunRecord, key: str, request: dict[str, Any], value: Any,
                 max_bytes: int) -> None:
    import jsonschema  # lazy: only when answering

    try:
        text = json.dumps(value, default=json_default, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise HumanAnswerError(f"the answer to step {key!r} of run {record.id} is not "
                               f"JSON-ready: {exc}; nothing was stored", reason="value") from None
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise HumanAnswerError(f"the answer to step {key!r} of run {record.id} is {size} bytes "
                               f"of JSON, more than human.max_answer_bytes ({max_bytes}); "
                               "nothing was stored", reason="value")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise HumanAnswerError(f"the answer to step {key!r} of run {record.id} holds text that "
                               "is not valid Unicode (a lone surrogate); nothing was stored",
                               reason="value") from None
    schema = APPROVE_SCHEMA if request.get("kind") == "approve" else request.get("schema")
    if schema:
        validator = jsonschema.Draft202012Validator(schema)
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(the answer itself)"
            raise HumanAnswerError(
                f"the answer to step {key!r} of run {record.id} does not match its schema at "
                f"{where}: {first.message}"
                + (f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else "")
                + "; nothing was stored", reason="value")


async def _last_seq(stack: Services, run_id: str) -> int:
    storage = stack.storage
    last = 0
    while True:
        page = await storage.list_events(run_id, after_seq=last, limit=1000)
        if not page:
            return last
        last = page[-1].seq
        if len(page) < 1000:
            return last


async def _store_answer(stack: Services, record: RunRecord, key: str, value: Any, actor: str,
                        *, expired: bool) -> None:
    """Store the answer of ``key`` in the run record, its event and its audit record (the
    caller holds the run's lease and checked the answer).
    """
    storage = stack.storage
    request = pending_steps(record)[key]
    at = time.time()
    human = record.metadata.setdefault("human", {})
    human.setdefault("answers", {})[key] = {"value": value, "by": actor, "at": at,
                                            "expired": expired}
    await storage.update_run(record)
    step_id = request.get("step_id") or key
    seq = await _last_seq(stack, record.id) + 1
    await storage.append_events([Event("human.answered", record.id, step_id,
                                       {"step_key": key, "by": actor, "expired": expired,
                                        "kind": request.get("kind")}, time=at, seq=seq)])
    stack.events.seed(record.id, seq)
    if isinstance(storage, SupportsAuditLog):
        tenant = (record.metadata.get("actor") or {}).get("tenant") \
            if isinstance(record.metadata.get("actor"), dict) else None
        await storage.append_audit([AuditRecord(
            action="human.answered", actor=actor, tenant=tenant,
            resource=f"run:{record.id}/step:{key}", outcome="ok", time=at, run_id=record.id,
            step_id=step_id, details={"kind": request.get("kind"), "expired": expired})])


def _max_bytes(stack: Services) -> int:
    value = stack.config.get("human.max_answer_bytes", DEFAULT_MAX_ANSWER_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise HumanAnswerError(f"human.max_answer_bytes must be a positive integer, got "
                               f"{value!r}")
    return value


async def answer_step(stack: Services, run_id: str, step: str, value: Any, *, actor: str,
                      resume: bool = True) -> RunResult | None:
    """Answer a human step of a waiting run, then (by default) resume the run.

    Args:
        stack: the stack (its storage is opened here when needed).
        run_id: the waiting run.
        step: the step key (``id``, ``id[i]`` for a fan-out item) or the step id when one key
            of that step waits.
        value: the answer, JSON-ready: for ``human.approve`` ``{"approved": bool,
            "comment": str}``, for ``human.input`` a value matching the step's schema.
        actor: who answers (``"user:alice"``, ``"api_key:<id>"``); stored with the answer,
            in the ``human.answered`` event and the audit record.
        resume: resume the run at once under the same lease (default); False stores the
            answer only (``stack.resume(run_id)`` continues it later).

    Returns:
        the resumed run's result (``waiting`` again when another human step waits), or None
        when ``resume`` is False.

    Raises:
        RunNotFoundError: no such run.
        RunInUseError: a process holds the run (it is being resumed or answered right now).
        HumanAnswerError: the run is not waiting, the step is not waiting or was already
            answered, or the value is invalid; nothing was stored.
    """
    if not isinstance(actor, str) or not actor.strip():
        raise HumanAnswerError(f"actor must be a non-empty string naming who answers, got "
                               f"{actor!r}", reason="value")
    if not stack.storage_is_open:
        await stack.open()
    max_bytes = _max_bytes(stack)
    await stack.storage.get_run(run_id)  # RunNotFoundError before a lease is written
    keeper = LeaseKeeper(stack.storage, run_id, LeaseSettings.from_config(stack.config))
    await keeper.claim()

    async def body() -> RunResult | None:
        record = await stack.storage.get_run(run_id)
        if record.status != "waiting":
            raise HumanAnswerError(f"run {run_id} is {record.status}, not waiting for an "
                                   "answer; nothing was stored")
        key = _resolve_key(record, step)
        _check_value(record, key, pending_steps(record)[key], value, max_bytes)
        await _store_answer(stack, record, key, value, actor, expired=False)
        if not resume:
            return None
        return await _continue(stack, keeper, run_id)

    try:
        return await keeper.hold(body)
    finally:
        stack.events.forget(run_id)


async def _continue(stack: Services, keeper: LeaseKeeper, run_id: str) -> RunResult:
    from . import _resume_claimed  # lazy: the package imports this module's names

    return await _resume_claimed(stack, keeper, run_id, False, {})


async def expire_waiting(stack: Services, *, now: float | None = None, resume: bool = True
                         ) -> list[tuple[str, str]]:
    """Give every waiting step key whose deadline passed its default outcome and resume its
    run: the step returns its ``default`` (answered by :data:`TIMEOUT_ACTOR`, ``expired``
    True), or fails with "no answer before the deadline" when it has no default.

    Called by ``flowyard runs answer --expired`` and periodically by flowyard-server's
    workers; safe to run from several processes at once (a run another process holds is left
    to it).

    Args:
        stack: the stack.
        now: the time to judge deadlines at, UNIX seconds (default: the current time).
        resume: resume each run whose keys expired (default True).

    Returns:
        the ``(run_id, step_key)`` pairs that expired, in the order handled.
    """
    if not stack.storage_is_open:
        await stack.open()
    at = time.time() if now is None else now
    storage = stack.storage
    due: list[str] = []
    offset = 0
    while True:
        page = await storage.list_runs(RunQuery(status="waiting", limit=1000, offset=offset,
                                                order="created_at"))
        for record in page:
            if any(r.get("deadline") is not None and r["deadline"] <= at
                   for r in pending_steps(record).values()):
                due.append(record.id)
        if len(page) < 1000:
            break
        offset += len(page)
    expired: list[tuple[str, str]] = []
    settings = LeaseSettings.from_config(stack.config)
    for run_id in due:
        keeper = LeaseKeeper(storage, run_id, settings)
        try:
            await keeper.claim()
        except RunInUseError:
            continue  # being answered or resumed by another process

        async def body(run_id: str = run_id, keeper: LeaseKeeper = keeper) -> None:
            record = await storage.get_run(run_id)
            if record.status != "waiting":
                return
            keys = [k for k, r in pending_steps(record).items()
                    if r.get("deadline") is not None and r["deadline"] <= at]
            for key in keys:
                request = pending_steps(record)[key]
                await _store_answer(stack, record, key, request.get("default")
                                    if request.get("has_default") else None, TIMEOUT_ACTOR,
                                    expired=True)
                expired.append((run_id, key))
            if keys and resume:
                await _continue(stack, keeper, run_id)

        try:
            await keeper.hold(body)
        finally:
            stack.events.forget(run_id)
    return expired
