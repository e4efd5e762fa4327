"""docs/runbook.md, checked: the JetStream API requests the NATS CLI commands in the runbook
make, sent raw with nc.request, against dead letters the deliverer wrote; replays delivered.

    runbook command                                   API request made here
    nats stream ls                                    $JS.API.STREAM.LIST
    nats stream info DLQ                              $JS.API.STREAM.INFO.DLQ
    nats stream subjects DLQ                          $JS.API.STREAM.INFO.DLQ {"subjects_filter": ">"}
    nats stream view DLQ --subject 'dlq.deliver.>'    $JS.API.CONSUMER.CREATE.DLQ.<pager> + MSG.NEXT
    nats stream get DLQ <seq> --json                  $JS.API.STREAM.MSG.GET.DLQ {"seq": N}
    nats stream get DLQ --last-for <subject> --json   $JS.API.STREAM.MSG.GET.DLQ {"last_by_subj": S}
    ... | nats pub --jetstream <subject> -H Nats-Msg-Id:replay-DLQ-<seq>   publish to <subject>
    nats stream rmm DLQ <seq> -f                      $JS.API.STREAM.MSG.DELETE.DLQ {"seq": N}
    nats stream purge DLQ --subject 'dlq.deliver.>' -f   $JS.API.STREAM.PURGE.DLQ {"filter": ...}
    nats stream subjects PARKED 'parked.hold.>'       $JS.API.STREAM.INFO.PARKED {"subjects_filter": ...}
    nats stream get PARKED --last-for <hold subject>  $JS.API.STREAM.MSG.GET.PARKED {"last_by_subj": S}
"""

from __future__ import annotations

import base64
import json
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from conveyor.deliverer.config import Settings
from conveyor.deliverer.service import SPEC
from conveyor.shared.contracts import subjects
from conveyor.shared.contracts.events import delivery_log_decoder
from conveyor.shared.runtime.config import Secret
from conveyor.shared.runtime.runner import serve
from conveyor.shared.testing.fixtures import eventually

NO_MESSAGE_FOUND = 10037  # the API's err_code for a sequence that was deleted or purged


async def api(nc: Client, subject: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    reply = await nc.request(subject, json.dumps(body).encode() if body is not None else b"", timeout=5)
    return json.loads(reply.data)


def ok(resp: dict[str, Any]) -> dict[str, Any]:
    assert "error" not in resp, resp
    return resp


def nats_headers(hdrs_b64: str) -> dict[str, str]:
    """What `jq -r .hdrs | base64 -d` shows: a NATS/1.0 header block."""
    lines = base64.b64decode(hdrs_b64).decode().split("\r\n")
    assert lines[0].startswith("NATS/1.0")
    return dict(line.split(": ", 1) for line in lines[1:] if line)


async def replay_like_the_runbook(nc: Client, seq: int) -> dict[str, Any] | None:
    """The runbook's "replay one": get --json, subject minus 'dlq.<stage>.', body via base64 -d,
    nats pub --jetstream with the replay id, then rmm. None when the sequence is a gap."""
    got = await api(nc, f"$JS.API.STREAM.MSG.GET.{subjects.DLQ}", {"seq": seq})
    if got.get("error", {}).get("err_code") == NO_MESSAGE_FOUND:
        return None
    message = ok(got)["message"]  # `nats stream get --json` prints this object
    target = message["subject"].split(".", 2)[2]  # cut -d. -f3-
    body = base64.b64decode(message["data"])  # jq -r .data | base64 -d
    pub = await nc.request(target, body, timeout=5, headers={subjects.MSG_ID: f"replay-DLQ-{seq}"})
    ack = json.loads(pub.data)
    ok(await api(nc, f"$JS.API.STREAM.MSG.DELETE.{subjects.DLQ}", {"seq": seq}))
    return {"target": target, "body": body, "ack": ack, "headers": nats_headers(message["hdrs"])}


async def test_runbook_commands_against_real_dead_letters(
    nats_url: str, nc: Client, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    settings = Settings(
        nats_url=nats_url,
        port=0,
        callback_signing_secrets=Secret("whsec_cnVuYm9vay10ZXN0LWtleQ=="),
        callback_allowed_networks="127.0.0.0/8",
        callback_max_attempts=1,
        dlq_gauge_interval_s=0.2,
    )
    sink.status = 500
    async with serve(SPEC, settings):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        published = {job: await publish_result(job, sink.url()) for job in ("job_a", "job_b", "job_c")}

        async def three_dead() -> None:
            assert (await js.stream_info(subjects.DLQ)).state.messages == 3

        await eventually(three_dead)
        sink.status = 200  # the endpoint is fixed; now the operator replays

        # nats stream ls / nats stream info DLQ
        names = [s["config"]["name"] for s in ok(await api(nc, "$JS.API.STREAM.LIST", {}))["streams"]]
        assert subjects.DLQ in names
        info = ok(await api(nc, f"$JS.API.STREAM.INFO.{subjects.DLQ}"))
        assert info["state"]["messages"] == 3
        first, last = info["state"]["first_seq"], info["state"]["last_seq"]

        # nats stream subjects DLQ
        subj = ok(await api(nc, f"$JS.API.STREAM.INFO.{subjects.DLQ}", {"subjects_filter": ">"}))
        assert subj["state"]["subjects"] == {f"dlq.deliver.results.{j}": 1 for j in published}

        # nats stream view DLQ --subject 'dlq.deliver.>': a pager consumer, one page, then deleted
        viewed = await view(nc, "dlq.deliver.>")
        assert [m.subject for m in viewed] == [f"dlq.deliver.results.{j}" for j in published]
        assert all((m.headers or {})[subjects.H_LAST_STATUS] == "500" for m in viewed)

        # nats stream get DLQ --last-for dlq.deliver.results.job_a --json
        last_a = ok(
            await api(
                nc, f"$JS.API.STREAM.MSG.GET.{subjects.DLQ}", {"last_by_subj": "dlq.deliver.results.job_a"}
            )
        )
        seq_a = last_a["message"]["seq"]
        assert seq_a == first

        # Replay one
        replayed = await replay_like_the_runbook(nc, seq_a)
        assert replayed is not None
        assert replayed["target"] == "results.job_a" == replayed["headers"][subjects.H_ORIGINAL_SUBJECT]
        assert replayed["body"] == published["job_a"]  # byte for byte
        assert replayed["ack"]["stream"] == subjects.RESULTS and not replayed["ack"].get("duplicate")
        # Run again by mistake (the dead letter is gone, but say the publish is repeated):
        again = await nc.request(
            "results.job_a", replayed["body"], timeout=5, headers={subjects.MSG_ID: f"replay-DLQ-{seq_a}"}
        )
        assert json.loads(again.data)["duplicate"] is True  # the duplicate window drops it

        # Replay all: the loop over first..last skips the gap left by the replay above
        done = [r for seq in range(first, last + 1) if (r := await replay_like_the_runbook(nc, seq))]
        assert [r["target"] for r in done] == ["results.job_b", "results.job_c"]
        assert ok(await api(nc, f"$JS.API.STREAM.INFO.{subjects.DLQ}"))["state"]["messages"] == 0

        async def all_delivered() -> None:
            for job in published:
                log = delivery_log_decoder.decode((await kv.get(job)).value or b"")
                assert [a.outcome for a in log.attempts] == ["dead_lettered", "delivered"], job

        await eventually(all_delivered)

        async def settled() -> None:
            ci = await js.consumer_info(subjects.RESULTS, subjects.DELIVERER)
            assert ci.num_pending == 0 and ci.num_ack_pending == 0

        await eventually(settled)
        assert sorted(r.headers["webhook-id"] for r in sink.requests if r.answered == 200) == [
            "result-job_a",
            "result-job_b",
            "result-job_c",
        ]  # each replayed result delivered exactly once

        # Purge with a subject filter
        sink.status = 500
        for job in ("job_d", "job_e"):
            await publish_result(job, sink.url())

        async def two_dead() -> None:
            assert (await js.stream_info(subjects.DLQ)).state.messages == 2

        await eventually(two_dead)
        purged = ok(await api(nc, f"$JS.API.STREAM.PURGE.{subjects.DLQ}", {"filter": "dlq.deliver.>"}))
        assert purged["success"] is True and purged["purged"] == 2
        assert ok(await api(nc, f"$JS.API.STREAM.INFO.{subjects.DLQ}"))["state"]["messages"] == 0


async def test_a_replay_run_again_after_the_duplicate_window_sends_no_second_callback(
    nats_url: str, nc: Client, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    """RESULTS remembers ids for 2 minutes, not a day: a replay interrupted before the dead
    letter was deleted and run again later is stored a second time. The delivery log stops it."""
    settings = Settings(
        nats_url=nats_url,
        port=0,
        callback_signing_secrets=Secret("whsec_cnVuYm9vay10ZXN0LWtleQ=="),
        callback_allowed_networks="127.0.0.0/8",
        callback_max_attempts=1,
    )
    sink.status = 500
    async with serve(SPEC, settings):
        kv = await js.key_value(subjects.KV_DELIVERIES)
        await publish_result("job_a", sink.url())

        async def dead() -> None:
            assert (await js.stream_info(subjects.DLQ)).state.messages == 1

        await eventually(dead)
        sink.status = 200
        seq = (await js.stream_info(subjects.DLQ)).state.first_seq
        letter = await js.get_msg(subjects.DLQ, seq)
        headers = {subjects.MSG_ID: f"replay-DLQ-{seq}"}  # the runbook's replay, not deleted after
        assert not (await js.publish("results.job_a", letter.data, headers=headers)).duplicate

        async def log_says(outcomes: list[str]) -> None:
            log = delivery_log_decoder.decode((await kv.get("job_a")).value or b"")
            assert [a.outcome for a in log.attempts] == outcomes

        await eventually(lambda: log_says(["dead_lettered", "delivered"]))
        # The window passes (cut short here), and the same replay is run again.
        info = await js.stream_info(subjects.RESULTS)
        info.config.duplicate_window = 0.2
        await js.update_stream(info.config)

        async def stored_again() -> None:
            assert not (await js.publish("results.job_a", letter.data, headers=headers)).duplicate

        await eventually(stored_again)

        async def settled() -> None:
            assert (await js.stream_info(subjects.RESULTS)).state.messages == 3
            ci = await js.consumer_info(subjects.RESULTS, subjects.DELIVERER)
            assert ci.num_pending == 0 and ci.num_ack_pending == 0

        await eventually(settled)
        assert [r.answered for r in sink.requests] == [500, 200]  # one callback, not two
        await log_says(["dead_lettered", "delivered"])


async def view(nc: Client, filter_subject: str) -> list[Any]:
    """What `nats stream view` does on a limits stream: a short-lived pager consumer, pulled a
    page at a time with no_wait until the server says there is nothing more."""
    name = "stream_pager_runbook"
    ok(
        await api(
            nc,
            f"$JS.API.CONSUMER.CREATE.{subjects.DLQ}.{name}",
            {
                "stream_name": subjects.DLQ,
                "config": {
                    "durable_name": name,
                    "deliver_policy": "all",
                    "ack_policy": "explicit",
                    "filter_subject": filter_subject,
                    "mem_storage": True,
                    "num_replicas": 1,
                    "inactive_threshold": 3600 * 10**9,
                },
            },
        )
    )
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    got = []
    try:
        await nc.publish(
            f"$JS.API.CONSUMER.MSG.NEXT.{subjects.DLQ}.{name}",
            json.dumps({"batch": 25, "no_wait": True}).encode(),
            reply=inbox,
        )
        while True:
            msg = await sub.next_msg(timeout=5)
            if (msg.headers or {}).get("Status") in ("404", "408"):
                break
            await msg.ack()
            got.append(msg)
    finally:
        await sub.unsubscribe()
        ok(await api(nc, f"$JS.API.CONSUMER.DELETE.{subjects.DLQ}.{name}"))
    return got


async def test_runbook_looks_at_parked_results_without_a_consumer(
    nats_url: str, nc: Client, js: JetStreamContext, sink: Any, publish_result: Any
) -> None:
    """The runbook's commands for parked results are read-only (stream info and direct gets):
    a consumer on the work-queue stream PARKED could take holds away, and `nats stream view`
    (an ordered consumer) is refused on it."""
    settings = Settings(
        nats_url=nats_url,
        port=0,
        callback_signing_secrets=Secret("whsec_cnVuYm9vay10ZXN0LWtleQ=="),
        callback_allowed_networks="127.0.0.0/8",
        callback_retry_schedule_s="3600",  # the retry waits parked for an hour
        callback_retry_jitter=0.0,
    )
    sink.status = 503
    async with serve(SPEC, settings):
        await publish_result("job_parked", sink.url())
        hold = subjects.parked_hold("job_parked")

        async def parked() -> dict[str, Any]:
            # nats stream subjects PARKED 'parked.hold.>'
            info = ok(
                await api(nc, f"$JS.API.STREAM.INFO.{subjects.PARKED}", {"subjects_filter": "parked.hold.>"})
            )
            assert info["state"]["subjects"] == {hold: 1}
            return info

        info = await eventually(parked)
        assert info["state"]["messages"] == 1  # nats stream info PARKED
        # nats stream get PARKED --last-for parked.hold.job_parked --json
        message = ok(await api(nc, f"$JS.API.STREAM.MSG.GET.{subjects.PARKED}", {"last_by_subj": hold}))[
            "message"
        ]
        headers = nats_headers(message["hdrs"])
        assert headers[subjects.H_SCHEDULE].startswith("@at ")
        assert headers[subjects.H_SCHEDULE_TARGET] == subjects.parked_result("job_parked")
        assert (
            base64.b64decode(message["data"])
            == (await js.get_last_msg(subjects.RESULTS, "results.job_parked")).data
        )
        # What `nats stream view` asks for: a pager consumer that does not acknowledge.
        pager = {
            "stream_name": subjects.PARKED,
            "config": {
                "name": "pager",
                "ack_policy": "none",
                "deliver_policy": "all",
                "filter_subject": "parked.hold.>",
                "mem_storage": True,
            },
        }
        refused = await api(nc, f"$JS.API.CONSUMER.CREATE.{subjects.PARKED}.pager", pager)
        assert refused["error"]["err_code"] == 10084, refused  # explicit ack required on a work queue
