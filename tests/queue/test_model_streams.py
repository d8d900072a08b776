"""One job stream per model: a consumer receives only the jobs of the models it names,
the models take turns, and a blocking read over several streams claims one job only."""

from __future__ import annotations

import pytest

from service.queue import Broker
from tests.queue.test_broker import BLOBS, PARAMS

pytestmark = pytest.mark.anyio


async def test_a_consumer_receives_only_the_jobs_of_its_models(broker: Broker) -> None:
    a = await broker.submit(PARAMS, BLOBS, model="alpha")
    b = await broker.submit(PARAMS, BLOBS, model="beta")
    default = await broker.submit(PARAMS, BLOBS)

    assert default.model == broker.settings.default_model
    only_beta = await broker.receive("w1", block_ms=0, models=["beta"])
    assert only_beta is not None and only_beta.job_id == b.id and only_beta.model == "beta"
    assert await broker.receive("w1", block_ms=0, models=["beta"]) is None
    both = await broker.receive("w2", block_ms=0, models=["alpha", "beta"])
    assert both is not None and both.job_id == a.id
    assert await broker.receive("w3", block_ms=0) is not None  # the default model's stream
    assert set(await broker.known_models()) == {"alpha", "beta", broker.settings.default_model}
    lengths = {model: c.length for model, c in (await broker.model_streams()).items()}
    assert lengths == {"alpha": 1, "beta": 1, "afunet": 1}
    assert await broker.running_count() == 3


async def test_models_take_turns_so_a_busy_one_does_not_starve_another(broker: Broker) -> None:
    variant = Broker(
        broker.redis, broker.settings.model_copy(update={"max_queue_length": 20}), broker.store
    )
    for _ in range(4):
        await variant.submit(PARAMS, BLOBS, model="busy")
    await variant.submit(PARAMS, BLOBS, model="quiet")

    got = []
    for _ in range(2):
        delivery = await variant.receive("w1", block_ms=0, models=["busy", "quiet"])
        assert delivery is not None
        got.append(delivery.model)
    assert sorted(got) == ["busy", "quiet"]


async def test_a_read_of_several_streams_claims_one_job_and_frees_the_rest(
    broker: Broker,
) -> None:
    """A blocking read over several streams returns an entry of each that has one (entries
    that arrived between the per-stream reads and the blocking one): one is delivered, the
    others are aged so that the next receive of any worker takes them over at once, with
    no attempt spent."""
    jobs = {m: await broker.submit(PARAMS, BLOBS, model=m) for m in ("alpha", "beta")}
    await broker.ensure_group(["alpha", "beta"])

    found = await broker._xreadgroup("w1", ["alpha", "beta"], block=100)
    assert len(found) == 2  # what the blocking read of receive can get
    kept = await broker._keep_first("w1", found)
    assert kept is not None
    one = await broker._admit(kept, "w1", redelivered=False)
    other = await broker.receive("w2", block_ms=0, models=["alpha", "beta"])

    assert one is not None and one.attempts == 1
    assert other is not None and other.redelivered and other.attempts == 1
    assert {one.job_id, other.job_id} == {r.id for r in jobs.values()}
    assert await broker.receive("w3", block_ms=0, models=["alpha", "beta"]) is None


async def test_model_streams_count_entries_and_those_handed_out_per_model(broker: Broker) -> None:
    """What a metrics scrape reads in one pipeline, including a model whose stream has
    no consumer group yet (a job queued before any worker of its model started)."""
    await broker.submit(PARAMS, BLOBS, model="alpha")
    await broker.submit(PARAMS, BLOBS, model="alpha")
    await broker.submit(PARAMS, BLOBS, model="nogroup")
    await broker.ensure_group(["alpha"])
    assert await broker.receive("w1", block_ms=0, models=["alpha"]) is not None

    streams = await broker.model_streams()
    default = broker.settings.default_model  # its stream made by the fixture, empty
    assert {m: (c.length, c.pending) for m, c in streams.items()} == {
        "alpha": (2, 1),
        "nogroup": (1, 0),
        default: (0, 0),
    }
    assert await broker.running_count() == 1
