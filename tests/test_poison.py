"""Poison messages land in the dead-letter queue classified ``poison``; the worker goes on."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from runtime.store.dead_letters import DeadLetterFilter
from tests.support import Deployment, wait_for

REPLY = {"type": "reply", "text": "still alive"}


def poison_entry(dep: Deployment, task_id: str) -> dict[str, Any] | None:
    for entry in dep.svc.dead_letters.find(DeadLetterFilter(dl_class="poison"), limit=None):
        if entry["task_id"] == task_id:
            return entry
    return None


def send(dep: Deployment, name: str, kwargs: dict[str, Any]) -> str:
    task_id = uuid.uuid4().hex
    dep.svc.publisher.app.send_task(name, kwargs=kwargs, task_id=task_id)  # type: ignore[attr-defined]
    return task_id


def assert_worker_still_runs_steps(dep: Deployment) -> None:
    run = dep.submit_script([REPLY])
    assert dep.svc.wait(run.run_id, timeout=60).status == "succeeded"


def test_a_step_message_with_invalid_kwargs_is_poison(deployment: Deployment) -> None:
    task_id = send(deployment, "agentrt.step", {"run_id": "not-a-run", "step": -1, "evil": 1})
    wait_for(lambda: poison_entry(deployment, task_id), timeout=60, message="a poison entry")
    entry = poison_entry(deployment, task_id)
    assert entry is not None
    assert entry["error_type"] == "invalid_payload"
    assert "run_id" in entry["error_message"] and "step" in entry["error_message"]
    assert entry["message"]["kwargs"]["evil"] == 1 and entry["queue"] == "agentrt.steps"
    assert_worker_still_runs_steps(deployment)


def test_a_step_of_a_run_that_does_not_exist_is_poison(deployment: Deployment) -> None:
    task_id = send(deployment, "agentrt.step", {"run_id": uuid.uuid4().hex, "step": 0})
    wait_for(lambda: poison_entry(deployment, task_id), timeout=60, message="a poison entry")
    entry = poison_entry(deployment, task_id)
    assert entry is not None and entry["error_type"] == "unknown_run"


def test_an_unregistered_task_is_poison(deployment: Deployment) -> None:
    task_id = send(deployment, "agentrt.no_such_task", {"x": 1})
    wait_for(lambda: poison_entry(deployment, task_id), timeout=60, message="a poison entry")
    entry = poison_entry(deployment, task_id)
    assert entry is not None and entry["error_type"] == "unknown_task"
    assert entry["task_name"] == "agentrt.no_such_task"
    assert_worker_still_runs_steps(deployment)


def test_garbage_on_the_celery_queue_does_not_crash_the_worker(deployment: Deployment) -> None:
    svc = deployment.svc
    queue = svc.keys.broker_prefix() + "agentrt.steps"
    # an envelope whose JSON body does not decode ...
    task_id = uuid.uuid4().hex
    envelope = {
        "body": base64.b64encode(b"{not json at all").decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"task": "agentrt.step", "id": task_id, "lang": "py"},
        "properties": {
            "body_encoding": "base64",
            "delivery_info": {"exchange": "", "routing_key": "agentrt.steps"},
            "delivery_mode": 2,
            "delivery_tag": uuid.uuid4().hex,
            "priority": 0,
        },
    }
    svc.redis.lpush(queue, json.dumps(envelope))
    wait_for(lambda: poison_entry(deployment, task_id), timeout=60, message="a poison entry")
    entry = poison_entry(deployment, task_id)
    assert entry is not None and entry["error_type"] == "undecodable"
    assert "{not json at all" in entry["message"]["body"]
    # ... and bytes that are not even an envelope: kombu cannot hand them to Celery at all;
    # the worker must survive them and keep running steps
    marker = uuid.uuid4().hex
    svc.redis.lpush(queue, b"\x00\xffgarbage-" + marker.encode())
    assert_worker_still_runs_steps(deployment)

    def raw_entry() -> dict[str, Any] | None:
        for e in svc.dead_letters.find(DeadLetterFilter(dl_class="poison"), limit=None):
            if marker in str((e["message"] or {}).get("body")):
                return e
        return None

    wait_for(raw_entry, timeout=60, message="a poison entry for the raw bytes")
    entry = raw_entry()
    assert entry is not None and entry["error_type"] == "undecodable"
    for worker in deployment.workers:
        assert worker.proc.poll() is None, worker.log()[-3000:]
