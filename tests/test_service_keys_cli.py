"""``flask service-keys create --tag --expires-days`` and ``rotate --overlap-hours``."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from vault.models import AuditEvent, ServiceKey, utcnow
from vault.services import service_keys


@pytest.fixture
def providers(providers_file):
    providers_file.write_text('[voicenter]\npreset = "voicenter"\n', encoding="utf-8")


def run(runner, *args):
    return runner.invoke(args=["service-keys", *args])


def last_line(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output.strip().splitlines()[-1]


def row(db) -> ServiceKey:
    db.session.expire_all()
    return db.session.scalars(select(ServiceKey)).one()


def test_create_with_tags_and_expiry_prints_the_key_last(providers, runner, db):
    result = run(runner, "create", "billing", "--provider", "voicenter", "--tag", "Billing",
                 "--tag", "finance", "--expires-days", "90")
    key = last_line(result)
    assert key.startswith("tvk_") and "connections tagged billing, finance" in result.output
    stored = row(db)
    assert stored.allowed_tags == ["billing", "finance"] and stored.created_by == "cli"
    assert timedelta(days=89) < stored.expires_at - utcnow() <= timedelta(days=90)
    assert service_keys.authenticate(key).allowed_tags == ("billing", "finance")
    listed = run(runner, "list").output
    assert key not in listed
    assert "tags billing,finance" in listed and "created by cli" in listed
    assert "expires " + stored.expires_at.strftime("%Y-%m-%d") in listed


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tag", "no spaces"], "is not a tag"),
        (["--expires-days", "0"], "0 is not in the range"),
        (["--provider", "nope"], "unknown provider"),
    ],
)
def test_create_refuses_bad_options_and_stores_nothing(providers, runner, db, args, message):
    result = run(runner, "create", "billing", *args)
    assert result.exit_code != 0 and message in result.output
    assert db.session.scalar(select(ServiceKey.id)) is None


def test_rotate_prints_the_new_key_last_and_the_old_one_works_for_the_overlap(providers, runner,
                                                                             db):
    old = last_line(run(runner, "create", "billing", "--tag", "billing"))
    result = run(runner, "rotate", "billing", "--overlap-hours", "2")
    new = last_line(result)
    assert new.startswith("tvk_") and new != old and old not in result.output
    assert "keeps working until" in result.output
    stored = row(db)
    assert stored.allowed_tags == ["billing"] and stored.rotated_at is not None
    assert timedelta(hours=1) < stored.previous_key_expires_at - utcnow() <= timedelta(hours=2)
    assert service_keys.authenticate(old) is not None
    assert service_keys.authenticate(new) is not None
    assert "in overlap" in run(runner, "list").output

    db.session.execute(update(ServiceKey).values(
        previous_key_expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    assert service_keys.authenticate(old) is None
    assert service_keys.authenticate(new) is not None
    detail = db.session.scalar(select(AuditEvent.detail).where(
        AuditEvent.action == "service_key.rotated"))
    assert old not in detail and new not in detail and "2 more hours" in detail


def test_rotate_defaults_to_a_24_hour_overlap_and_zero_stops_the_old_key(providers, runner,
                                                                         db):
    first = last_line(run(runner, "create", "billing"))
    second = last_line(run(runner, "rotate", "billing"))
    assert timedelta(hours=23) < row(db).previous_key_expires_at - utcnow() <= timedelta(hours=24)
    third = last_line(run(runner, "rotate", "billing", "--overlap-hours", "0"))
    assert service_keys.authenticate(first) is None  # a second rotation ends the oldest
    assert service_keys.authenticate(second) is None  # no overlap asked for
    assert service_keys.authenticate(third) is not None


def test_rotate_refuses_unknown_revoked_and_expired_keys(providers, runner, db):
    assert "no service key" in run(runner, "rotate", "nobody").output
    last_line(run(runner, "create", "billing"))
    db.session.execute(update(ServiceKey).values(expires_at=utcnow() - timedelta(seconds=1)))
    db.session.commit()
    expired = run(runner, "rotate", "billing")
    assert expired.exit_code == 1 and "has expired" in expired.output
    assert "expired" in run(runner, "list").output
    last_line(run(runner, "revoke", "billing"))
    revoked = run(runner, "rotate", "billing")
    assert revoked.exit_code == 1 and "is revoked" in revoked.output
    too_long = run(runner, "rotate", "billing", "--overlap-hours", "721")
    assert too_long.exit_code == 2
