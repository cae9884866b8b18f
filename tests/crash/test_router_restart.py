"""SIGKILL the sidecar: router cards, catalog and outcomes survive, and the indexes are rebuilt."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from are_sdk import AgentCard, Client, ModelSpec
from are_sdk.testing import SidecarProcess

DIMENSION = 256


def unit(*components: float) -> list[float]:
    vector = [0.0] * DIMENSION
    vector[: len(components)] = components
    return vector


def prompts(seed: int, n: int) -> list[tuple[list[float], bool]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        hard = i % 2 == 1
        vector = np.eye(DIMENSION, dtype=np.float32)[int(hard)] + rng.normal(0, 0.03, DIMENSION).astype(
            np.float32
        )
        out.append(((vector / np.linalg.norm(vector)).tolist(), hard))
    return out


async def test_router_state_survives_sigkill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            for i in range(20):
                await client.router.register_agent(
                    AgentCard(f"agent-{i:02d}", vector=unit(1.0, i / 20), cost_per_call_micro_usd=100 - i)
                )
            await client.router.register_agent(AgentCard("legal", description="summarize legal contracts"))
            await client.router.deregister_agent("agent-19")
            await client.router.put_model_catalog(
                [
                    ModelSpec("cheap", input_cost_per_million_tokens_micro_usd=1, prior_success_rate=0.9),
                    ModelSpec(
                        "strong", tier=9, input_cost_per_million_tokens_micro_usd=100, prior_success_rate=0.9
                    ),
                ]
            )
            for vector, hard in prompts(seed=5, n=40):
                route = await client.router.route_model(vector)
                await client.router.report_outcome(
                    route.route_id, success=not (hard and route.model_id == "cheap")
                )
            pending = await client.router.route_model(unit(1.0))
            before_route = await client.router.route_task(unit(1.0), threshold=0.9, top_k=3)
            before_model = await client.router.route_model(prompts(seed=6, n=2)[1][0])
    finally:
        process.kill()
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            ids = [card.agent_id async for card in client.router.iter_agents()]
            assert ids == ["agent-00", *(f"agent-{i:02d}" for i in range(1, 19)), "legal"]
            after_route = await client.router.route_task(unit(1.0), threshold=0.9, top_k=3)
            assert after_route.candidates == before_route.candidates
            assert (await client.router.route_task("summarize a legal contract")).candidates[
                0
            ].agent_id == "legal"
            catalog = await client.router.get_model_catalog()
            assert [m.model_id for m in catalog.models] == ["cheap", "strong"]
            after_model = await client.router.route_model(prompts(seed=6, n=2)[1][0])
            assert after_model.model_id == before_model.model_id == "strong"
            assert after_model.estimates == before_model.estimates
            await client.router.report_outcome(
                pending.route_id, success=True
            )  # a route from before the crash
    finally:
        process.kill()
        process.cleanup()


async def test_saved_index_is_reused_after_a_clean_stop_and_never_when_stale(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = SidecarProcess.start(data_dir=data)
    try:
        async with await Client.connect(process.target) as client:
            await client.router.register_agent(AgentCard("a", vector=unit(1.0)))
            await client.router.register_agent(AgentCard("b", vector=unit(0.0, 1.0)))
    finally:
        assert process.stop() == 0
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        assert "restored_indexes=1" in process.log_text()
        async with await Client.connect(process.target) as client:
            assert (await client.router.route_task(unit(1.0))).candidates[0].agent_id == "a"
            # Changed after the saved copy, then killed: the copy is stale.
            await client.router.register_agent(AgentCard("a", vector=unit(0.0, 0.0, 1.0)))
    finally:
        process.kill()
        process.cleanup()

    process = SidecarProcess.start(data_dir=data)
    try:
        assert "restored_indexes=0" in process.log_text()
        async with await Client.connect(process.target) as client:
            assert (await client.router.route_task(unit(0.0, 0.0, 1.0))).candidates[0].agent_id == "a"
            assert (await client.router.route_task(unit(1.0), include_below_threshold=True)).candidates[
                0
            ].above_threshold is False
    finally:
        process.kill()
        process.cleanup()
