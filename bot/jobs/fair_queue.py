"""Fair dispatch order for queued jobs: round-robin over servers, then over users in a server, then FIFO.

Pure Python, no I/O. The job store is the source of truth; a FairQueue is an in-memory index over its
queued jobs, rebuilt with `FairQueue.rebuild(await store.list_queued())` on start.

The order, precisely: servers (guilds) with queued work form a rotation; each dispatch takes the front
server that has an eligible user, serves it one job and moves it to the back. Within a server, users with
queued work form a rotation in the same way. Within a user (in one server), jobs go in `seq` order, so a job
re-queued at the front (the store gives it the smallest seq) runs first. A server or user that is skipped
(paused, or the user is at the running cap) keeps its place, so it is served first once it may run.

With several workers, a job can start only where a worker has a free slot for its image size (pop_next's
`can_place`). A user whose first job has no such slot now starts their next job that has one (a 128 px job
need not wait behind their 512 px one while only 128 px slots are free), and keeps their turn for the other.

Costs, with n queued jobs: push O(log n); pop_next O(log n) plus O(1) for every server or user it has to skip;
remove O(log n) amortised (lazy deletion); position O(servers + users in the job's server + the user's jobs
in that server).
"""

from __future__ import annotations

import heapq
import itertools
import math
import statistics
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

DEFAULT_RUNNING_CAP = 3
DEFAULT_QUEUED_CAP = 10
# Used for ETAs before any job has finished: a 400-step 256 px dream on a current GPU.
DEFAULT_JOB_SECONDS = 120.0

UserFilter = Callable[[int], bool]
LaneFilter = Callable[[int, int], bool]  # (guild_id, user_id)
SizeFilter = Callable[[int], bool]  # image size -> a worker has a free slot for it now


class _QueueableJob(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def guild_id(self) -> int: ...
    @property
    def user_id(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def size(self) -> int: ...


@dataclass(frozen=True, slots=True)
class JobRef:
    """What the queue needs to know about a job."""

    job_id: str
    guild_id: int
    user_id: int
    seq: int
    # Image side in pixels: only a worker that makes this size can run it.
    size: int = 0
    # The grid the job is an image of (bot.jobs.grids): its images start together (take_grid).
    grid_id: str | None = None

    @classmethod
    def of(cls, job: _QueueableJob) -> JobRef:
        """From a `bot.jobs.job.Job` (or anything with id, guild_id, user_id, seq and size, and maybe grid_id)."""
        return cls(job_id=job.id, guild_id=job.guild_id, user_id=job.user_id, seq=job.seq, size=job.size,
                   grid_id=getattr(job, "grid_id", None))


@dataclass(frozen=True)
class UserCaps:
    """How many jobs one person may have running at once and waiting, over all servers."""

    running: int = DEFAULT_RUNNING_CAP
    queued: int = DEFAULT_QUEUED_CAP


@dataclass(frozen=True)
class CapCheck:
    """Whether a user may queue one more job (FairQueue.admit)."""

    allowed: bool
    # A sentence for the user when not allowed.
    reason: str = ""

    def __bool__(self) -> bool:
        return self.allowed


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


_Lane = tuple[int, int]  # (guild_id, user_id)
_HeapEntry = tuple[int, int, str]  # (seq, push token, job_id); the token breaks seq ties and marks staleness


class FairQueue:
    def __init__(self, caps: UserCaps | None = None) -> None:
        self.caps = caps or UserCaps()
        self._queued: dict[str, JobRef] = {}
        # A heap entry is live only while its token is the job's current token (lazy deletion).
        self._live_token: dict[str, int] = {}
        self._tokens = itertools.count()
        self._lane_heaps: dict[_Lane, list[_HeapEntry]] = {}
        self._lane_sizes: Counter[_Lane] = Counter()
        self._guild_sizes: Counter[int] = Counter()
        # Rotations: insertion order is the turn order; OrderedDict gives O(1) move-to-back and delete.
        self._guild_rotation: OrderedDict[int, None] = OrderedDict()
        self._user_rotations: dict[int, OrderedDict[int, None]] = {}
        self._user_queued: Counter[int] = Counter()
        self._running: dict[str, JobRef] = {}
        self._user_running: Counter[int] = Counter()
        self._paused_guilds: set[int] = set()
        # The queued images of each grid.
        self._grids: dict[str, set[str]] = {}

    @classmethod
    def rebuild(cls, jobs: Iterable[_QueueableJob | JobRef], caps: UserCaps | None = None) -> FairQueue:
        """A queue holding these queued jobs. Pushing in seq order makes the rotations start with the users
        and servers whose jobs waited longest (re-queued jobs have the smallest seq, so theirs come first)."""
        queue = cls(caps)
        refs = [job if isinstance(job, JobRef) else JobRef.of(job) for job in jobs]
        for ref in sorted(refs, key=lambda ref: ref.seq):
            queue.push(ref)
        return queue

    # -- sizes --

    def __len__(self) -> int:
        return len(self._queued)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queued

    def get(self, job_id: str) -> JobRef | None:
        return self._queued.get(job_id)

    def guild_length(self, guild_id: int) -> int:
        return self._guild_sizes[guild_id]

    def guild_lengths(self) -> dict[int, int]:
        """Queued jobs per server, for servers that have any."""
        return {guild: self._guild_sizes[guild] for guild in self._guild_rotation}

    def queued_count(self, user_id: int) -> int:
        return self._user_queued[user_id]

    def running_count(self, user_id: int) -> int:
        return self._user_running[user_id]

    def running(self) -> list[JobRef]:
        """Jobs handed out by pop_next and not yet finish()ed, oldest dispatch first."""
        return list(self._running.values())

    # -- caps --

    def admit(self, user_id: int, caps: UserCaps | None = None, count: int = 1) -> CapCheck:
        """May this user queue `count` more jobs (a grid: all or none)? `caps` overrides the queue's defaults.

        Only the waiting cap applies here: running jobs hold back dispatch, not queueing. Check and push
        without an `await` in between (or under a per-user lock), or two commands at once can both pass.
        """
        caps = caps or self.caps
        waiting = self._user_queued[user_id]
        if waiting + count <= caps.queued:
            return CapCheck(True)
        if caps.queued <= 0:
            return CapCheck(False, "You can't queue new jobs right now (your limit is 0).")
        if waiting < caps.queued:
            return CapCheck(
                False,
                f"A grid of {count} needs {count} places in the queue; you have {caps.queued - waiting} left "
                f"(the limit is {caps.queued}). Ask for fewer images, or wait for a job to finish.",
            )
        return CapCheck(
            False,
            f"You already have {_plural(waiting, 'job')} waiting (the limit is {caps.queued}). "
            "Wait for one to finish or /cancel one.",
        )

    def can_start(self, user_id: int, caps: UserCaps | None = None) -> bool:
        """The default pop_next filter: the user is below the running cap."""
        return self._user_running[user_id] < (caps or self.caps).running

    def running_in(self, guild_id: int, user_id: int) -> int:
        """The user's jobs running for this server (for a server's own running cap)."""
        return sum(1 for ref in self._running.values() if ref.guild_id == guild_id and ref.user_id == user_id)

    # -- pausing (bot.moderation persists it per server and applies it at start) --

    def pause_guild(self, guild_id: int) -> None:
        """Stop dispatching this server's jobs; they keep their place and stay counted."""
        self._paused_guilds.add(guild_id)

    def resume_guild(self, guild_id: int) -> None:
        self._paused_guilds.discard(guild_id)

    def is_paused(self, guild_id: int) -> bool:
        return guild_id in self._paused_guilds

    # -- changes --

    def push(self, ref: JobRef, *, front: bool = False) -> None:
        """Add a queued job. With front=True its user and server also move to the front of their rotations
        (for a job the worker gave back); the job itself goes first in its lane only if its seq is lowest."""
        if ref.job_id in self._queued or ref.job_id in self._running:
            raise ValueError(f"job {ref.job_id} is already in the queue")
        lane = (ref.guild_id, ref.user_id)
        token = next(self._tokens)
        self._queued[ref.job_id] = ref
        self._live_token[ref.job_id] = token
        heapq.heappush(self._lane_heaps.setdefault(lane, []), (ref.seq, token, ref.job_id))
        self._lane_sizes[lane] += 1
        self._guild_sizes[ref.guild_id] += 1
        self._user_queued[ref.user_id] += 1
        if ref.grid_id is not None:
            self._grids.setdefault(ref.grid_id, set()).add(ref.job_id)
        users = self._user_rotations.setdefault(ref.guild_id, OrderedDict())
        users.setdefault(ref.user_id, None)
        self._guild_rotation.setdefault(ref.guild_id, None)
        if front:
            users.move_to_end(ref.user_id, last=False)
            self._guild_rotation.move_to_end(ref.guild_id, last=False)

    def pop_next(
        self, can_run: UserFilter | None = None, can_run_in: LaneFilter | None = None, can_place: SizeFilter | None = None
    ) -> JobRef | None:
        """Take the next job to run and count it as running for its user (call finish() when it ends).

        `can_run(user_id)` decides who may start now; by default, users below the running cap. `can_run_in
        (guild_id, user_id)`, if given, also asks per server (a server's own running cap). `can_place(size)`,
        if given, says which image sizes a worker has room for now: a user's earliest job of such a size is
        taken. Users they refuse, users with no job that fits and paused servers are skipped but keep their
        places. Returns None when nothing may run.
        """
        allowed = can_run or self.can_start
        verdicts: dict[int, bool] = {}
        for guild in self._guild_rotation:
            if guild in self._paused_guilds:
                continue
            for user in self._user_rotations[guild]:
                if user not in verdicts:
                    verdicts[user] = bool(allowed(user))
                if not verdicts[user] or (can_run_in is not None and not can_run_in(guild, user)):
                    continue
                job_id = self._first_placeable((guild, user), can_place)
                if job_id is not None:
                    ref = self._take_from_lane(guild, user, job_id)
                    self._running[ref.job_id] = ref
                    self._user_running[ref.user_id] += 1
                    return ref
        return None

    def _first_placeable(self, lane: _Lane, can_place: SizeFilter | None) -> str | None:
        """The lane's earliest live job whose size can be placed (any size without a filter), or None."""
        heap = self._lane_heaps[lane]
        while self._live_token.get(heap[0][2]) != heap[0][1]:
            heapq.heappop(heap)  # stale: removed or taken out of order
        head = heap[0][2]
        if can_place is None or can_place(self._queued[head].size):
            return head
        # A lane holds one user's waiting jobs in one server: a few, bounded by the waiting cap.
        fitting = [entry for entry in heap
                   if self._live_token.get(entry[2]) == entry[1] and can_place(self._queued[entry[2]].size)]
        return min(fitting)[2] if fitting else None

    def _take_from_lane(self, guild: int, user: int, job_id: str) -> JobRef:
        # The caller iterates the rotations; we only mutate them here, after it has stopped iterating.
        heap = self._lane_heaps[(guild, user)]
        if heap[0][2] == job_id:
            heapq.heappop(heap)
        ref = self._forget(job_id)  # any entry left behind for it is stale from now on
        users = self._user_rotations.get(guild)
        if users is not None and user in users:
            users.move_to_end(user)
        if guild in self._guild_rotation:
            self._guild_rotation.move_to_end(guild)
        return ref

    def _forget(self, job_id: str) -> JobRef:
        """Drop a queued job from every count and rotation (its heap entry, if any, goes stale)."""
        ref = self._queued.pop(job_id)
        del self._live_token[job_id]
        if ref.grid_id is not None:
            grid = self._grids[ref.grid_id]
            grid.discard(job_id)
            if not grid:
                del self._grids[ref.grid_id]
        lane = (ref.guild_id, ref.user_id)
        self._user_queued[ref.user_id] -= 1
        if not self._user_queued[ref.user_id]:
            del self._user_queued[ref.user_id]
        self._lane_sizes[lane] -= 1
        if not self._lane_sizes[lane]:
            del self._lane_sizes[lane]
            del self._lane_heaps[lane]
            users = self._user_rotations[ref.guild_id]
            del users[ref.user_id]
            if not users:
                del self._user_rotations[ref.guild_id]
        elif len(self._lane_heaps[lane]) > 2 * self._lane_sizes[lane] + 8:
            # Removed jobs leave stale entries behind; rebuild once they dominate so memory stays O(n).
            heap = [entry for entry in self._lane_heaps[lane] if self._live_token.get(entry[2]) == entry[1]]
            heapq.heapify(heap)
            self._lane_heaps[lane] = heap
        self._guild_sizes[ref.guild_id] -= 1
        if not self._guild_sizes[ref.guild_id]:
            del self._guild_sizes[ref.guild_id]
            del self._guild_rotation[ref.guild_id]
        return ref

    def take_grid(self, grid_id: str, limit: int, skip: Collection[str] = ()) -> list[JobRef]:
        """Up to `limit` queued images of a grid whose first image pop_next just handed out, in seq order, counted
        as running like it: a grid runs as one batch, so they start with it whatever the running caps say (which
        held the grid back until its first image could start). `skip`: job ids to leave queued."""
        ids = sorted((job_id for job_id in self._grids.get(grid_id, ()) if job_id not in skip),
                     key=lambda job_id: self._queued[job_id].seq)[:max(0, limit)]
        taken = []
        for job_id in ids:
            ref = self._forget(job_id)
            self._running[ref.job_id] = ref
            self._user_running[ref.user_id] += 1
            taken.append(ref)
        return taken

    def remove(self, job_id: str) -> JobRef | None:
        """Take a queued job out (it was cancelled). Returns it, or None if it is not queued here."""
        if job_id not in self._queued:
            return None
        return self._forget(job_id)

    def finish(self, job_id: str) -> JobRef | None:
        """A job from pop_next ended (done, failed, cancelled or given back): free its running slot."""
        ref = self._running.pop(job_id, None)
        if ref is not None:
            self._user_running[ref.user_id] -= 1
            if not self._user_running[ref.user_id]:
                del self._user_running[ref.user_id]
        return ref

    def requeue(self, ref: JobRef) -> None:
        """A running job was given back (worker stopped): free its slot and queue it at the front.
        Pass the ref with the seq that `JobStore.requeue` assigned."""
        self.finish(ref.job_id)
        self.push(ref, front=True)

    # -- where am I --

    def position(self, job_id: str) -> int | None:
        """1-based place of a queued job in the dispatch order, or None (not queued, or its server is paused).

        Exact for the current contents, assuming every user may start (no one held back by the running cap)
        and no pushes or removals happen meanwhile: it equals the number of pop_next calls that would return
        this job. Derived from the two round-robin levels without simulating them: in round r of its
        server, every user with at least r jobs there is served once, in rotation order; servers interleave
        the same way. Cost: O(servers + users in its server + the user's jobs in its server).
        """
        ref = self._queued.get(job_id)
        if ref is None or ref.guild_id in self._paused_guilds:
            return None
        lane = (ref.guild_id, ref.user_id)
        token = self._live_token[job_id]
        key = (ref.seq, token)
        # k: this job's 1-based turn within its own lane.
        k = 1 + sum(
            1
            for seq, entry_token, other in self._lane_heaps[lane]
            if (seq, entry_token) < key and self._live_token.get(other) == entry_token
        )
        in_guild = self._place_in_rounds(
            ((user, self._lane_sizes[(ref.guild_id, user)]) for user in self._user_rotations[ref.guild_id]),
            ref.user_id,
            k,
        )
        return self._place_in_rounds(
            (
                (guild, self._guild_sizes[guild])
                for guild in self._guild_rotation
                if guild not in self._paused_guilds
            ),
            ref.guild_id,
            in_guild,
        )

    @staticmethod
    def _place_in_rounds(members: Iterable[tuple[int, int]], target: int, turn: int) -> int:
        """Round-robin over members (in rotation order, each with `count` items): where is target's turn-th item?"""
        earlier = 0
        before_target = True
        for member, count in members:
            earlier += min(count, turn - 1)
            if member == target:
                before_target = False
            elif before_target and count >= turn:
                earlier += 1
        return earlier + 1


# ---- waiting-time estimates --------------------------------------------------------------------------------


def typical_duration(recent_durations: Sequence[float], default: float = DEFAULT_JOB_SECONDS) -> float:
    """Median of the usable recent durations (robust to one stuck job), or the default without history."""
    usable = [d for d in recent_durations if isinstance(d, (int, float)) and math.isfinite(d) and d > 0]
    return float(statistics.median(usable)) if usable else default


def estimate_wait(
    position: int,
    recent_durations: Sequence[float],
    *,
    slots: int = 1,
    busy_slots: int | None = None,
    default_duration: float = DEFAULT_JOB_SECONDS,
) -> float:
    """Seconds until the job at `position` (1-based, from FairQueue.position) should start.

    Model: every job takes the typical duration; `slots` workers run in parallel; `busy_slots` of them
    (default: all) are midway through a job. Jobs are handed to whichever slot frees first.
    """
    if position < 1:
        raise ValueError(f"position is 1-based, not {position}")
    if slots < 1:
        raise ValueError(f"slots must be at least 1, not {slots}")
    busy = slots if busy_slots is None else max(0, min(busy_slots, slots))
    duration = typical_duration(recent_durations, default_duration)
    # Free times of the slots, soonest first; they differ by less than one duration, so the slots keep
    # taking turns in this order for every later round.
    free_at = sorted([0.0] * (slots - busy) + [duration / 2] * busy)
    ahead = position - 1
    return free_at[ahead % slots] + (ahead // slots) * duration


def describe_wait(seconds: float) -> str:
    """A rough human phrase ("about 5 minutes") for a wait estimate."""
    if seconds < 45:
        return "less than a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {_plural(minutes, 'minute')}"
    hours = round(seconds / 3600, 1)
    return f"about {hours:g} hour" + ("" if hours == 1 else "s")
