"""Tamper evidence on PostgreSQL: seal the sample cloud's log, then edit, delete or insert a
row with SQL; `audit verify` names the exact position and the checkpoint that exposes it, and an
untouched store passes. Inclusion proofs check with the public key alone."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from gateways.cli.main import main
from kernel.bootstrap import SAMPLE_INVENTORY, Platform, open_platform
from kernel.bootstrap.migrations import migrate_all
from kernel.inventory.loader import load_inventory_file
from kernel.settings import Settings

POSITION = 11  # sealed as leaf 10; with --every 5 the checkpoint of size 15 covers it first
EXPOSED_BY = 15


@pytest.fixture
def platform(pg_dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Platform]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CLOUDKERNEL_STORE", "postgres")
    monkeypatch.setenv("CLOUDKERNEL_POSTGRES_DSN", pg_dsn)
    monkeypatch.setenv("CLOUDKERNEL_DATA_DIR", str(tmp_path / "data"))
    settings = Settings(store="postgres", postgres_dsn=pg_dsn)
    migrate_all(settings)
    opened = open_platform(settings)
    load_inventory_file(opened.commands, SAMPLE_INVENTORY)
    yield opened
    opened.close()


@pytest.fixture
def sealed(platform: Platform, capsys: pytest.CaptureFixture[str]) -> Platform:
    assert main(["audit", "keygen"]) == 0
    assert main(["audit", "seal", "--every", "5"]) == 0
    capsys.readouterr()
    return platform


def execute(platform: Platform, pg_dsn: str, statement: str) -> None:
    """Run SQL on the platform's events table, named {table}."""
    recorder: Any = platform.app.recorder
    table = sql.Identifier(recorder.datastore.schema, recorder.events_table_name)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(statement).format(table=table))


def verify(capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = main(["audit", "verify", "--json"])
    return code, json.loads(capsys.readouterr().out)


def first(report: dict[str, Any]) -> tuple[str, int, int]:
    finding = report["findings"][0]
    return finding["kind"], finding["position"], finding["exposed_by"]


def test_an_untouched_store_verifies_and_later_events_are_only_unsealed(
        sealed: Platform, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    total = sealed.app.recorder.max_notification_id()
    assert total is not None and total > 15
    code, report = verify(capsys)
    assert code == 0, report
    assert report["clean"] and report["sealed"] == total and report["unsealed"] == 0
    checkpoints = (tmp_path / "data/audit/checkpoints.jsonl").read_text().splitlines()
    assert [json.loads(c)["tree_size"] for c in checkpoints] == [
        *range(5, total + 1, 5), *([total] if total % 5 else [])]

    # Sealing again with nothing new adds no checkpoint; the text report says OK.
    assert main(["audit", "seal"]) == 0
    assert len((tmp_path / "data/audit/checkpoints.jsonl").read_text().splitlines()) == len(
        checkpoints)
    capsys.readouterr()
    assert main(["audit", "verify"]) == 0
    assert "OK: the store matches every checkpoint" in capsys.readouterr().out


def test_an_edited_event_is_named_with_the_checkpoint_exposing_it(
        sealed: Platform, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    execute(sealed, pg_dsn, "UPDATE {table} SET state = set_byte(state, 3, "
                            f"get_byte(state, 3) # 1) WHERE notification_id = {POSITION}")
    code, report = verify(capsys)
    assert code == 1
    assert first(report) == ("edited", POSITION, EXPOSED_BY)
    assert len(report["findings"]) == 1
    assert report["failing_checkpoints"][0] == EXPOSED_BY
    assert 10 not in report["failing_checkpoints"]
    main(["audit", "verify"])
    out = capsys.readouterr().out
    assert f"TAMPERED: first difference: position {POSITION} edited" in out
    assert f"exposed by checkpoint tree_size={EXPOSED_BY}" in out


def test_a_deleted_event_is_named(sealed: Platform, pg_dsn: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    execute(sealed, pg_dsn, f"DELETE FROM {{table}} WHERE notification_id = {POSITION}")
    code, report = verify(capsys)
    assert code == 1
    assert first(report) == ("removed", POSITION, EXPOSED_BY)
    assert len(report["findings"]) == 1


def test_an_inserted_event_is_named_even_when_the_later_ones_are_renumbered(
        sealed: Platform, pg_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    total = sealed.app.recorder.max_notification_id()
    # Make room at POSITION (ids are gap-free), then insert a copy of another event there.
    execute(sealed, pg_dsn, "UPDATE {table} SET notification_id = notification_id + 1000000 "
                            f"WHERE notification_id >= {POSITION}")
    execute(sealed, pg_dsn, "UPDATE {table} SET notification_id = notification_id - 999999 "
                            "WHERE notification_id > 1000000")
    execute(sealed, pg_dsn, "INSERT INTO {table} (originator_id, originator_version, topic, "
                            "state, notification_id) SELECT gen_random_uuid(), "
                            f"originator_version, topic, state, {POSITION} FROM {{table}} "
                            "WHERE notification_id = 3")
    code, report = verify(capsys)
    assert code == 1
    assert first(report) == ("inserted", POSITION, EXPOSED_BY)
    kinds = [f["kind"] for f in report["findings"]]
    assert kinds[1:] == ["renumbered"] * (len(kinds) - 1)
    assert report["store_events"] == total + 1


def test_inclusion_proofs_check_with_the_public_key_alone(
        sealed: Platform, pg_dsn: str, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    pub = str(tmp_path / "data/audit/signing.pub")
    proof_file = tmp_path / "proof.json"
    assert main(["audit", "prove", "7", "--checkpoint", "10"]) == 0
    proof_file.write_text(capsys.readouterr().out)
    proof = json.loads(proof_file.read_text())
    assert (proof["leaf_index"], proof["tree_size"]) == (6, 10)
    assert main(["audit", "check-proof", str(proof_file), "--public-key", pub]) == 0
    assert "OK" in capsys.readouterr().out
    from gateways.audit.verifier import main as verifier_main

    assert verifier_main([str(proof_file), "--public-key", pub]) == 0

    # A proof of an edited event does not hold.
    execute(sealed, pg_dsn, "UPDATE {table} SET state = set_byte(state, 3, "
                            f"get_byte(state, 3) # 1) WHERE notification_id = {POSITION}")
    capsys.readouterr()
    assert main(["audit", "prove", str(POSITION)]) == 0
    proof_file.write_text(capsys.readouterr().out)
    assert main(["audit", "check-proof", str(proof_file), "--public-key", pub]) == 1
    assert "does not lead to the checkpoint's root" in capsys.readouterr().out


def test_bad_input_exits_2(platform: Platform, capsys: pytest.CaptureFixture[str],
                           tmp_path: Path) -> None:
    assert main(["audit", "seal"]) == 2
    assert "no signing key" in capsys.readouterr().err
    assert main(["audit", "verify"]) == 2
    assert "no public key" in capsys.readouterr().err
    assert main(["audit", "keygen"]) == 0
    assert main(["audit", "keygen"]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["audit", "verify"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
    assert main(["audit", "prove", "1"]) == 2
    assert main(["audit", "seal"]) == 0
    total = platform.app.recorder.max_notification_id()
    capsys.readouterr()
    assert main(["audit", "prove", str(total + 1)]) == 2
    assert "is not in the tree" in capsys.readouterr().err
    assert main(["audit", "prove", "1", "--checkpoint", "999"]) == 2
    assert "no checkpoint of tree size 999" in capsys.readouterr().err
    assert main(["audit", "prove", "0"]) == 2
    key = tmp_path / "data/audit/signing.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_checkpoints_are_published_on_nats(platform: Platform, nats_server: Any,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    import nats

    monkeypatch.setenv("CLOUDKERNEL_NATS_URLS", nats_server.url)
    assert main(["audit", "keygen"]) == 0

    async def seal_and_listen() -> list[dict[str, Any]]:
        nc = await nats.connect(nats_server.url)
        got: list[dict[str, Any]] = []

        async def on_message(msg: Any) -> None:
            got.append(json.loads(msg.data))

        await nc.subscribe("cloudkernel.audit.checkpoints", cb=on_message)
        await nc.flush()
        code = await asyncio.to_thread(main, ["audit", "seal", "--every", "5", "--publish"])
        assert code == 0
        data_dir = Path.cwd() / "data/audit"
        written = len((data_dir / "checkpoints.jsonl").read_text().splitlines())
        for _ in range(100):
            if len(got) >= written:
                break
            await asyncio.sleep(0.05)
        await nc.close()
        return got

    async def stored() -> list[dict[str, Any]]:
        """What the AUDIT_CHECKPOINTS stream holds, read after the fact."""
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        info = await js.stream_info("AUDIT_CHECKPOINTS")
        out = [json.loads((await js.get_msg("AUDIT_CHECKPOINTS", seq)).data or b"null")
               for seq in range(info.state.first_seq, info.state.last_seq + 1)]
        await nc.close()
        return out

    published = asyncio.run(seal_and_listen())
    lines = (Path.cwd() / "data/audit/checkpoints.jsonl").read_text().splitlines()
    kept = [json.loads(line) for line in lines]
    assert published == kept and len(kept) >= 4
    # a copy outside the database that a late reader still finds, each checkpoint once
    assert asyncio.run(stored()) == kept
    from gateways.audit.follower import publish_checkpoints
    from gateways.audit.seal import read_checkpoints

    async def again() -> None:
        nc = await nats.connect(nats_server.url)
        await publish_checkpoints(nc, read_checkpoints(Path.cwd() / "data/audit"))
        await nc.close()

    asyncio.run(again())
    assert asyncio.run(stored()) == kept


def test_the_follower_seals_new_events_until_sigterm(
        platform: Platform, tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    assert main(["audit", "keygen"]) == 0
    total = platform.app.recorder.max_notification_id()
    checkpoints = tmp_path / "data/audit/checkpoints.jsonl"
    follower = subprocess.Popen(
        [sys.executable, "-m", "gateways.cli.main", "audit", "seal", "--follow", "--every",
         "1000", "--interval", "0", "--poll", "0.1"],
        env=os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (checkpoints.is_file() and checkpoints.read_text().strip()):
            assert follower.poll() is None and time.monotonic() < deadline, follower.stderr
            time.sleep(0.1)
    finally:
        follower.send_signal(signal.SIGTERM)
        _, err = follower.communicate(timeout=30)
    assert follower.returncode == 0, err
    last = json.loads(checkpoints.read_text().splitlines()[-1])
    assert last["tree_size"] == total
