"""Upload ids (tusd_py.core.service.new_upload_id)."""

from __future__ import annotations

from unittest import mock

from tusd_protocol import rules
from tusd_py.core import service


def test_ids_are_valid_and_never_begin_with_a_dash() -> None:
    # a leading '-' made `tusd-py uploads show ID` read the id as an option
    drawn = iter(["-dashfirstdashfirst_a", "okokokokokokokokokok_b"])
    with mock.patch.object(service.secrets, "token_urlsafe", lambda _: next(drawn)):
        assert service.new_upload_id() == "okokokokokokokokokok_b"
    ids = {service.new_upload_id() for _ in range(5000)}
    assert len(ids) == 5000
    assert all(rules.is_valid_upload_id(i) and not i.startswith("-") for i in ids)
