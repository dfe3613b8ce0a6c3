from __future__ import annotations

import copy
import itertools
from collections import Counter, defaultdict
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from bot.jobs.fair_queue import (
    DEFAULT_JOB_SECONDS,
    FairQueue,
    JobRef,
    UserCaps,
    describe_wait,
    estimate_wait,
    typical_duration,
)

ALLOW_ALL: Callable[[int], bool] = lambda user: True  # noqa: E731


def refs_for(spec: list[tuple[int, int]]) -> list[JobRef]:
    """Jobs from (guild, user) pairs, seq in list order, ids like 'g1u2#0'."""
    per_lane: Counter[tuple[int, int]] = Counter()
    refs = []
    for seq, (guild, user) in enumerate(spec, start=1):
        refs.append(JobRef(f"g{guild}u{user}#{per_lane[(guild, user)]}", guild, user, seq))
        per_lane[(guild, user)] += 1
    return refs


def drain(queue: FairQueue, can_run: Callable[[int], bool] = ALLOW_ALL) -> list[JobRef]:
    popped = []
    while (ref := queue.pop_next(can_run)) is not None:
        popped.append(ref)
    return popped


def ids(refs: list[JobRef]) -> list[str]:
    return [ref.job_id for ref in refs]


# ---- the order, by example -----------------------------------------------------------------------------------


def test_users_in_a_server_take_turns() -> None:
    # Alice (1) queued three before Bob (2) queued two: Bob does not wait for all of Alice's.
    queue = FairQueue.rebuild(refs_for([(1, 1), (1, 1), (1, 1), (1, 2), (1, 2)]))
    assert ids(drain(queue)) == ["g1u1#0", "g1u2#0", "g1u1#1", "g1u2#1", "g1u1#2"]


def test_a_busy_server_does_not_starve_a_quiet_one() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1)] * 4 + [(1, 2)] * 2 + [(2, 3)]))
    assert ids(drain(queue)) == ["g1u1#0", "g2u3#0", "g1u2#0", "g1u1#1", "g1u2#1", "g1u1#2", "g1u1#3"]


def test_a_job_given_back_goes_first() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1), (1, 2), (2, 3)]))
    first = queue.pop_next()
    assert first is not None and first.job_id == "g1u1#0"
    assert queue.running_count(1) == 1
    # The worker stopped; the store re-queued it with a seq below every other.
    queue.requeue(JobRef(first.job_id, first.guild_id, first.user_id, seq=-1))
    assert queue.running_count(1) == 0
    assert ids(drain(queue)) == ["g1u1#0", "g2u3#0", "g1u2#0"]


def test_fifo_within_a_user_follows_seq_not_push_order() -> None:
    queue = FairQueue()
    queue.push(JobRef("late", 1, 1, seq=10))
    queue.push(JobRef("early", 1, 1, seq=-5))
    assert ids(drain(queue)) == ["early", "late"]


def test_duplicate_push_is_refused() -> None:
    queue = FairQueue()
    queue.push(JobRef("a", 1, 1, 1))
    with pytest.raises(ValueError):
        queue.push(JobRef("a", 1, 1, 2))
    queue.pop_next()
    with pytest.raises(ValueError, match="already"):
        queue.push(JobRef("a", 1, 1, 2))  # still running: finish() or requeue() first


def test_positions_match_the_documented_example() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1)] * 4 + [(1, 2)] * 2 + [(2, 3)]))
    assert [queue.position(f"g1u1#{n}") for n in range(4)] == [1, 4, 6, 7]
    assert queue.position("g2u3#0") == 2
    assert queue.position("nope") is None


# ---- caps and pausing ----------------------------------------------------------------------------------------


def test_admission_refuses_over_the_waiting_cap_with_a_reason() -> None:
    queue = FairQueue(UserCaps(running=3, queued=10))
    for ref in refs_for([(1, 7)] * 9 + [(2, 7)]):
        assert queue.admit(7)
        queue.push(ref)
    verdict = queue.admit(7)
    assert not verdict
    assert verdict.reason == (
        "You already have 10 jobs waiting (the limit is 10). Wait for one to finish or /cancel one."
    )
    assert queue.admit(8).allowed
    # A moderator-raised quota for this one call.
    assert queue.admit(7, UserCaps(queued=20)).allowed
    queue.push(JobRef("solo", 1, 9, 100))
    assert queue.admit(9, UserCaps(queued=1)).reason.startswith("You already have 1 job waiting (the limit is 1).")
    assert not queue.admit(8, UserCaps(queued=0))


def test_users_at_the_running_cap_are_skipped_but_keep_their_place() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1)] * 3 + [(1, 2)] * 2), caps=UserCaps(running=1))
    assert queue.pop_next().job_id == "g1u1#0"
    assert queue.pop_next().job_id == "g1u2#0"
    assert queue.pop_next() is None  # both at their cap of one
    queue.finish("g1u2#0")
    assert queue.pop_next().job_id == "g1u2#1"
    queue.finish("g1u1#0")
    queue.finish("g1u2#1")
    assert queue.pop_next().job_id == "g1u1#1"
    # A custom filter replaces the default: user 1 may not run at all now.
    queue.finish("g1u1#1")
    assert queue.pop_next(lambda user: user != 1) is None
    assert queue.pop_next().job_id == "g1u1#2"


def test_paused_servers_are_skipped_and_have_no_position() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1), (2, 2), (1, 1)]))
    queue.pause_guild(1)
    assert queue.position("g1u1#0") is None
    assert queue.position("g2u2#0") == 1
    assert ids(drain(queue)) == ["g2u2#0"]
    assert len(queue) == 2 and queue.guild_length(1) == 2
    queue.resume_guild(1)
    assert ids(drain(queue)) == ["g1u1#0", "g1u1#1"]


def test_remove_takes_a_job_out_everywhere() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1), (1, 2), (1, 1), (2, 3)]))
    assert queue.remove("g1u1#0").job_id == "g1u1#0"
    assert queue.remove("g1u1#0") is None
    assert "g1u1#0" not in queue
    assert (len(queue), queue.queued_count(1), queue.guild_lengths()) == (3, 1, {1: 2, 2: 1})
    assert queue.remove("g2u3#0") is not None
    assert queue.guild_lengths() == {1: 2}
    assert ids(drain(queue)) == ["g1u1#1", "g1u2#0"]
    assert len(queue) == 0 and queue.guild_lengths() == {}


def test_user_who_cancelled_everything_rejoins_at_the_back() -> None:
    queue = FairQueue.rebuild(refs_for([(1, 1), (1, 2)]))
    queue.remove("g1u1#0")
    queue.push(JobRef("again", 1, 1, 99))
    assert ids(drain(queue)) == ["g1u2#0", "again"]


def test_many_removals_keep_the_lane_compact() -> None:
    queue = FairQueue()
    for seq in range(1000):
        queue.push(JobRef(f"j{seq}", 1, 1, seq))
    for seq in range(999):
        queue.remove(f"j{seq}")
    assert len(queue._lane_heaps[(1, 1)]) < 20
    assert ids(drain(queue)) == ["j999"]


# ---- properties ----------------------------------------------------------------------------------------------

lanes = st.tuples(st.integers(0, 3), st.integers(0, 4))
queue_contents = st.lists(lanes, max_size=40)


@st.composite
def queues(draw: st.DrawFn) -> tuple[FairQueue, list[JobRef]]:
    """A queue with jobs pushed in seq order, some given back to the front, some cancelled."""
    refs = refs_for(draw(queue_contents))
    queue = FairQueue()
    for ref in refs:
        queue.push(ref)
    fronts = draw(st.lists(lanes, max_size=4))
    for n, (guild, user) in enumerate(fronts):
        ref = JobRef(f"front{n}", guild, user, seq=-n - 1)
        queue.push(ref, front=True)
        refs.append(ref)
    removed = draw(st.sets(st.sampled_from(ids(refs)), max_size=5)) if refs else set()
    for job_id in removed:
        assert queue.remove(job_id) is not None
    return queue, [ref for ref in refs if ref.job_id not in removed]


@settings(max_examples=150, deadline=None)
@given(queues())
def test_draining_pops_every_job_exactly_once(built: tuple[FairQueue, list[JobRef]]) -> None:
    queue, live = built
    assert len(queue) == len(live)
    popped = drain(queue)
    assert sorted(ids(popped)) == sorted(ids(live))
    assert len(queue) == 0 and queue.pop_next() is None


@settings(max_examples=150, deadline=None)
@given(queues())
def test_fifo_by_seq_within_each_user_in_a_server(built: tuple[FairQueue, list[JobRef]]) -> None:
    queue, _ = built
    by_lane: dict[tuple[int, int], list[int]] = defaultdict(list)
    for ref in drain(queue):
        by_lane[(ref.guild_id, ref.user_id)].append(ref.seq)
    for seqs in by_lane.values():
        assert seqs == sorted(seqs)


def assert_alternates(sequence: list[int]) -> None:
    """While two members both still have items left, their turns in `sequence` alternate."""
    remaining = Counter(sequence)
    last_served: dict[frozenset[int], int] = {}
    for member in sequence:
        for other in remaining:
            if other != member and remaining[other] > 0:
                pair = frozenset((member, other))
                assert last_served.get(pair) != member, f"{member} served twice while {other} waited"
                last_served[pair] = member
        remaining[member] -= 1


@settings(max_examples=150, deadline=None)
@given(queues())
def test_servers_alternate_while_both_have_work(built: tuple[FairQueue, list[JobRef]]) -> None:
    queue, _ = built
    assert_alternates([ref.guild_id for ref in drain(queue)])


@settings(max_examples=150, deadline=None)
@given(queues())
def test_users_in_a_server_alternate_while_both_have_work(built: tuple[FairQueue, list[JobRef]]) -> None:
    queue, _ = built
    popped = drain(queue)
    for guild in {ref.guild_id for ref in popped}:
        assert_alternates([ref.user_id for ref in popped if ref.guild_id == guild])


def test_alternation_checker_catches_unfair_orders() -> None:
    with pytest.raises(AssertionError):
        assert_alternates([1, 1, 2, 2])
    assert_alternates([1, 2, 1, 1])  # 2 ran out; 1 may go twice


@settings(max_examples=150, deadline=None)
@given(queues(), st.sets(st.integers(0, 3), max_size=2))
def test_position_agrees_with_the_actual_pop_order(
    built: tuple[FairQueue, list[JobRef]], paused: set[int]
) -> None:
    queue, live = built
    for guild in paused:
        queue.pause_guild(guild)
    positions = {ref.job_id: queue.position(ref.job_id) for ref in live}
    order = ids(drain(queue))
    assert {job_id: n for n, job_id in enumerate(order, start=1)} == {
        job_id: n for job_id, n in positions.items() if n is not None
    }
    assert all(positions[ref.job_id] is None for ref in live if ref.guild_id in paused)


@settings(max_examples=100, deadline=None)
@given(queue_contents, st.integers(1, 3), st.lists(st.integers(0, 4), max_size=60))
def test_running_cap_is_never_exceeded(contents: list[tuple[int, int]], cap: int, finishes: list[int]) -> None:
    queue = FairQueue.rebuild(refs_for(contents), caps=UserCaps(running=cap))
    running: dict[int, list[str]] = defaultdict(list)
    for user_to_finish in finishes + [None] * len(contents):
        ref = queue.pop_next()
        if ref is not None:
            running[ref.user_id].append(ref.job_id)
            assert len(running[ref.user_id]) <= cap
            assert queue.running_count(ref.user_id) == len(running[ref.user_id])
        else:
            # Nothing handed out means every user with waiting work is at the cap.
            waiting_users = {r.user_id for r in queue._queued.values()}
            assert all(len(running[user]) >= cap for user in waiting_users)
        if user_to_finish is not None and running[user_to_finish]:
            queue.finish(running[user_to_finish].pop(0))


class QueueAgainstModel(RuleBasedStateMachine):
    """Random pushes, pops, removals, finishes and pauses, checked against a naive list-based model."""

    def __init__(self) -> None:
        super().__init__()
        self.queue = FairQueue(UserCaps(running=2))
        self.seqs = itertools.count(1)
        self.front_seqs = itertools.count(-1, -1)
        self.names = itertools.count()
        # Model: rotation lists and per-lane lists sorted by seq.
        self.guilds: list[int] = []
        self.users: dict[int, list[int]] = {}
        self.lanes: dict[tuple[int, int], list[JobRef]] = {}
        self.running: Counter[int] = Counter()
        self.running_ids: list[JobRef] = []
        self.paused: set[int] = set()

    def model_refs(self) -> list[JobRef]:
        return [ref for lane in self.lanes.values() for ref in lane]

    @rule(lane=lanes, front=st.booleans())
    def push(self, lane: tuple[int, int], front: bool) -> None:
        guild, user = lane
        ref = JobRef(f"j{next(self.names)}", guild, user, next(self.front_seqs) if front else next(self.seqs))
        self.queue.push(ref, front=front)
        jobs = self.lanes.setdefault(lane, [])
        jobs.append(ref)
        jobs.sort(key=lambda r: r.seq)
        users = self.users.setdefault(guild, [])
        if guild not in self.guilds:
            self.guilds.append(guild)
        if user not in users:
            users.append(user)
        if front:
            users.remove(user)
            users.insert(0, user)
            self.guilds.remove(guild)
            self.guilds.insert(0, guild)

    def model_drop(self, ref: JobRef) -> None:
        lane = (ref.guild_id, ref.user_id)
        self.lanes[lane].remove(ref)
        if not self.lanes[lane]:
            del self.lanes[lane]
            self.users[ref.guild_id].remove(ref.user_id)
            if not self.users[ref.guild_id]:
                del self.users[ref.guild_id]
                self.guilds.remove(ref.guild_id)

    @rule(blocked=st.sets(st.integers(0, 4), max_size=2))
    def pop(self, blocked: set[int]) -> None:
        def allowed(user: int) -> bool:
            return user not in blocked and self.running[user] < 2

        expected = None
        for guild in self.guilds:
            if guild in self.paused:
                continue
            user = next((u for u in self.users[guild] if allowed(u)), None)
            if user is not None:
                expected = self.lanes[(guild, user)][0]
                self.model_drop(expected)
                if guild in self.guilds:
                    self.guilds.remove(guild)
                    self.guilds.append(guild)
                if user in self.users.get(guild, []):
                    self.users[guild].remove(user)
                    self.users[guild].append(user)
                break
        got = self.queue.pop_next(allowed)
        assert got == expected
        if got is not None:
            self.running[got.user_id] += 1
            self.running_ids.append(got)

    @precondition(lambda self: self.lanes)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self.model_refs()))
        assert self.queue.remove(ref.job_id) == ref
        self.model_drop(ref)

    @precondition(lambda self: self.running_ids)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        ref = data.draw(st.sampled_from(self.running_ids))
        self.running_ids.remove(ref)
        self.running[ref.user_id] -= 1
        assert self.queue.finish(ref.job_id) == ref

    @rule(guild=st.integers(0, 3))
    def toggle_pause(self, guild: int) -> None:
        if guild in self.paused:
            self.paused.discard(guild)
            self.queue.resume_guild(guild)
        else:
            self.paused.add(guild)
            self.queue.pause_guild(guild)

    @invariant()
    def counts_match(self) -> None:
        refs = self.model_refs()
        assert len(self.queue) == len(refs)
        expected_lengths = {g: sum(len(self.lanes[(g, u)]) for u in self.users[g]) for g in self.guilds}
        assert self.queue.guild_lengths() == expected_lengths
        for user in range(5):
            assert self.queue.queued_count(user) == sum(1 for r in refs if r.user_id == user)
            assert self.queue.running_count(user) == self.running[user]

    @invariant()
    def positions_match_a_drain(self) -> None:
        copied = copy.deepcopy(self.queue)
        expected = {ref.job_id: n for n, ref in enumerate(drain(copied), start=1)}
        for ref in self.model_refs():
            assert self.queue.position(ref.job_id) == expected.get(ref.job_id)


QueueAgainstModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_queue_against_model = QueueAgainstModel.TestCase


# ---- waiting-time estimates ----------------------------------------------------------------------------------


def test_typical_duration_is_the_median_of_usable_history() -> None:
    assert typical_duration([100.0, 20.0, 60.0, 9999.0, 80.0]) == 80.0
    assert typical_duration([]) == DEFAULT_JOB_SECONDS
    assert typical_duration([float("nan"), -3.0, 0.0], default=42.0) == 42.0


@pytest.mark.parametrize(
    ("position", "slots", "busy", "expected"),
    [
        (1, 1, None, 30.0),  # the running job is assumed half done
        (1, 1, 0, 0.0),  # idle worker: starts now
        (3, 1, None, 150.0),
        (1, 2, 1, 0.0),
        (2, 2, 1, 30.0),
        (3, 2, 1, 60.0),
        (4, 2, 1, 90.0),
        (5, 2, 2, 150.0),
    ],
)
def test_estimate_wait(position: int, slots: int, busy: int | None, expected: float) -> None:
    assert estimate_wait(position, [60.0, 60.0, 50.0, 70.0], slots=slots, busy_slots=busy) == expected


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 10_000), st.integers(1, 4), st.lists(st.floats(1, 1e4), max_size=10))
def test_estimate_wait_grows_with_position(position: int, slots: int, durations: list[float]) -> None:
    here = estimate_wait(position, durations, slots=slots)
    assert 0 <= here <= estimate_wait(position + 1, durations, slots=slots)


def test_estimate_wait_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        estimate_wait(0, [])
    with pytest.raises(ValueError):
        estimate_wait(1, [], slots=0)


def test_describe_wait() -> None:
    assert describe_wait(10) == "less than a minute"
    assert describe_wait(60) == "about 1 minute"
    assert describe_wait(7 * 60 + 10) == "about 7 minutes"
    assert describe_wait(3 * 3600) == "about 3 hours"
    assert describe_wait(3600) == "about 1 hour"
