"""The pieces of grids (bot.jobs.grids) without Discord: the store keeps a grid's jobs together, the fair queue
admits and starts a grid as a whole, quotas count each image, the board shows a grid's state, compose lays the
pictures out 2x2."""

from __future__ import annotations

import dataclasses
import io
import itertools

from PIL import Image

from bot.jobs.fair_queue import FairQueue, JobRef, UserCaps
from bot.jobs.grids import GridBoard, compose
from bot.jobs.job import Job
from bot.jobs.simulated import solid_png
from bot.jobs.store import JobStore
from bot.moderation.quotas import EffectiveLimits, MemberLimits, QuotaStatus, WindowUsage, refusal
from generator.protocol import DreamSpec

GUILD, ALICE = 1001, 11


async def new_grid(store: JobStore, count: int = 4) -> list[Job]:
    return await store.create_jobs(
        guild_id=GUILD, channel_id=GUILD * 10, user_id=ALICE, specs=[DreamSpec("owls", seed=s) for s in range(count)]
    )


async def test_a_grid_is_jobs_in_a_row_sharing_a_grid_id_that_no_job_has(store: JobStore):
    single = await store.create_job(guild_id=GUILD, channel_id=GUILD * 10, user_id=ALICE, spec=DreamSpec("alone"))
    jobs = await new_grid(store)

    grid_id = jobs[0].grid_id
    assert grid_id and all(job.grid_id == grid_id for job in jobs) and single.grid_id is None
    assert grid_id not in {job.id for job in [single, *jobs]}
    assert [job.grid_index for job in jobs] == [0, 1, 2, 3] and {job.grid_size for job in jobs} == {4}
    assert [job.seq for job in jobs] == [single.seq + 1 + i for i in range(4)]
    assert [job.id for job in await store.grid(grid_id.upper())] == [job.id for job in jobs]
    assert await store.grid(single.id) == []


async def test_ids_of_grids_and_jobs_never_collide(database, clock):
    # The factory offers the same id twice: the grid's id is taken, so the job's next try is used.
    ids = itertools.chain(["aaaaaaaa", "aaaaaaaa", "bbbbbbbb", "cccccccc"])
    store = JobStore(database, clock=clock, id_factory=lambda: next(ids))
    jobs = await store.create_jobs(guild_id=GUILD, channel_id=1, user_id=ALICE, specs=[DreamSpec("a"), DreamSpec("b")])
    assert (jobs[0].grid_id, [job.id for job in jobs]) == ("aaaaaaaa", ["bbbbbbbb", "cccccccc"])


async def test_the_grid_shares_one_message_and_its_ending_is_shown_for_all(store: JobStore):
    jobs = await new_grid(store, 2)
    other = await store.create_job(guild_id=GUILD, channel_id=1, user_id=ALICE, spec=DreamSpec("other"))

    await store.set_progress_message(jobs[1].id, 555)
    for job in jobs:
        await store.mark_running(job.id)
        await store.mark_failed(job.id, "no")
    await store.mark_final_shown(jobs[0].id)

    assert [(await store.require(job.id)).progress_message_id for job in jobs] == [555, 555]
    assert (await store.require(other.id)).progress_message_id is None
    assert await store.unshown_finished() == []


def test_the_waiting_cap_admits_a_grid_only_with_room_for_all_of_it():
    queue = FairQueue(UserCaps(running=3, queued=5))
    for n in range(2):
        queue.push(JobRef(f"j{n}", GUILD, ALICE, seq=n))
    assert queue.admit(ALICE, count=3)
    refused = queue.admit(ALICE, count=4)
    assert not refused and "A grid of 4 needs 4 places in the queue; you have 3 left" in refused.reason


def test_take_grid_starts_the_rest_of_a_grid_past_the_running_cap():
    queue = FairQueue(UserCaps(running=1, queued=10))
    for index in range(4):
        queue.push(JobRef(f"g{index}", GUILD, ALICE, seq=index, grid_id="grid"))
    queue.push(JobRef("other", GUILD, ALICE, seq=10))

    first = queue.pop_next()
    taken = queue.take_grid("grid", limit=2, skip={"g2"})

    assert first.job_id == "g0" and [ref.job_id for ref in taken] == ["g1", "g3"]
    assert queue.running_count(ALICE) == 3 and len(queue) == 2
    assert queue.pop_next() is None  # the cap holds her next job back
    for ref in (first, *taken):
        queue.finish(ref.job_id)
    assert queue.pop_next().job_id == "g2" and queue.take_grid("grid", limit=4) == []


def test_quotas_count_every_image_of_a_grid():
    status = QuotaStatus(
        effective=EffectiveLimits(MemberLimits(per_day=4), False, "the server's rules"),
        day=WindowUsage(used=1, limit=4, frees_at=None), hour=None, queued=0, running=0, server_jobs=None,
        server_gpu=None, now=0.0,
    )
    assert refusal(status, 3) is None
    assert "A grid of 4 counts as 4 jobs, and you have 3 of 4 left" in refusal(status, 4)


def _job(index: int, state: str, size: int = 4) -> Job:
    base = Job(
        id=f"job{index}", seq=index, guild_id=GUILD, channel_id=1, user_id=ALICE, user_name="", kind="imagine",
        parent_job_id=None, state=state, spec=DreamSpec("owls", seed=index, size=128), init_latents_path=None,
        created_at=0.0, started_at=None, finished_at=None, attempts=0, error=None, progress_message_id=None,
        progress_step=0, png_path=None, latents_path=None, timelapse_path=None, wall_seconds=None, ran_spec=None,
        gpu_seconds=0.0, gpu_spent_at=None,
    )
    return dataclasses.replace(base, grid_id="grid", grid_index=index, grid_size=size)


def test_the_board_shows_progress_then_the_ending_with_buttons_for_the_images_made():
    board = GridBoard()
    shown = board.update(_job(0, "running"), step=(3, 12), picture=solid_png(8, 8, (255, 0, 0)))
    assert not shown.final and "1 25% · 2 waiting · 3 waiting · 4 waiting" in shown.text
    assert shown.picture[0] == "grid.png" and shown.picture[1][0] is not None

    board.update(_job(1, "done"), picture=solid_png(8, 8, (0, 255, 0)))
    board.update(_job(2, "cancelled"))
    board.update(_job(0, "done"), picture=solid_png(8, 8, (255, 0, 0)))
    final = board.update(_job(3, "failed"), reason="out of luck", spoiler=True)

    assert final.final and len(board) == 0
    assert "3 (`job2`) cancelled; 4 (`job3`) failed: out of luck" in final.text
    assert [item.custom_id for item in final.view.children] == [
        "bs:upscale:job0", "bs:upscale:job1", "bs:vary:job0", "bs:vary:job1"
    ]
    # Behind a spoiler, the picture stays out of the embed.
    assert final.picture[0] == "SPOILER_grid.png" and final.embed.image.url is None


def test_compose_lays_the_pictures_out_two_per_row_with_empty_slots_grey():
    red, blue = solid_png(16, 16, (255, 0, 0)), solid_png(32, 32, (0, 0, 255))
    sheet = Image.open(io.BytesIO(compose([red, None, blue], 8)))
    assert sheet.size == (16, 16)
    assert [sheet.getpixel(xy) for xy in ((4, 4), (12, 4), (4, 12), (12, 12))] == [
        (255, 0, 0), (47, 49, 54), (0, 0, 255), (47, 49, 54)
    ]
