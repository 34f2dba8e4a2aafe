"""End to end on the real default base model: the tutorial's job really teaches the task."""

from __future__ import annotations

import pytest

from conftest import TUTORIAL_EXAMPLES, TUTORIAL_REQUESTS_BODY, LiveServer, wait_for_operation

HELD_OUT = [
    ("5", "6"), ("41", "42"), ("-10", "-9"), ("123", "124"), ("2,000", "2,001"),
    ("six", "seven"), ("twenty", "twenty one"), ("forty five", "forty six"),
]  # fmt: skip


@pytest.mark.slow
def test_tutorial_job_on_gemma_answers_the_task(tmp_path):
    server = LiveServer(tmp_path / "data", {}).start(timeout=600)
    try:
        with server.client() as client:
            body = TUTORIAL_REQUESTS_BODY
            operation = client.post("/v1beta/tunedModels", json=body).json()
            assert operation["metadata"]["totalSteps"] == 19
            done = wait_for_operation(client, operation["name"], timeout=600)
            assert "error" not in done, done
            losses = [s["meanLoss"] for s in done["metadata"]["snapshots"]]
            assert sum(losses[-3:]) < sum(losses[:3])  # it learned
            name = done["response"]["name"]

            def answer(text: str) -> str:
                reply = client.post(
                    f"/v1beta/{name}:generateContent",
                    json={
                        "contents": [{"parts": [{"text": text}]}],
                        "generationConfig": {"temperature": 0, "maxOutputTokens": 16},
                    },
                )
                assert reply.status_code == 200, reply.text
                return reply.json()["candidates"][0]["content"]["parts"][0]["text"].strip()

            trained = sum(answer(i) == o for i, o in TUTORIAL_EXAMPLES)
            held_out = sum(answer(i) == o for i, o in HELD_OUT)
            assert trained >= 13, trained
            # Each job draws its own seed. Over the 58-run recipe sweep (docs/PERFORMANCE.md)
            # held-out digits came out right about 75% of the time and number words about 40%,
            # so this list averages about 5 of 8. 3 shows it generalises beyond the training
            # inputs without failing on an unlucky seed.
            assert held_out >= 3, held_out
    finally:
        server.stop()
