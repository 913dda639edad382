import asyncio

from voicepipe.engines.llm import InstancePool


async def test_waiting_turns_are_served_in_arrival_order() -> None:
    pool = InstancePool(["only"])
    first = await pool.acquire("call-a")
    served: list[str] = []

    async def turn(call: str) -> None:
        model = await pool.acquire(call)
        served.append(call)
        await asyncio.sleep(0)
        pool.release(model)

    waiting = [asyncio.create_task(turn(c)) for c in ("call-b", "call-c", "call-a", "call-d")]
    await asyncio.sleep(0)
    pool.release(first)
    await asyncio.gather(*waiting)
    assert served == ["call-b", "call-c", "call-a", "call-d"]


async def test_a_call_gets_back_its_own_instance_when_free() -> None:
    pool = InstancePool(["m1", "m2"])
    a, b = await pool.acquire("call-a"), await pool.acquire("call-b")
    pool.release(a)
    pool.release(b)
    assert await pool.acquire("call-b") == b
    assert await pool.acquire("call-a") == a


async def test_a_cancelled_waiter_does_not_swallow_an_instance() -> None:
    pool = InstancePool(["only"])
    held = await pool.acquire("call-a")
    waiter = asyncio.create_task(pool.acquire("call-b"))
    await asyncio.sleep(0)
    waiter.cancel()
    pool.release(held)
    await asyncio.gather(waiter, return_exceptions=True)
    assert await asyncio.wait_for(pool.acquire("call-c"), 1) == "only"
