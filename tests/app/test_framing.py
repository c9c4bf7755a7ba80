"""How a request body must be sent: as `application/json`, framed by Content-Length or chunked.

The media type and Content-Length cases use Django's test client; chunked bodies go through a
real gunicorn, the server that removes their framing (Django's test client cannot send one).
"""

from __future__ import annotations

import json

import pytest
from django.test.client import FakePayload
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from revos_schema.models import SchemaSubmission
from tests.app.gunicorn_helpers import pieces, post_chunked, recommended_gunicorn
from tests.app.test_api import assert_envelope, make_token
from tests.app.test_approvals import account, client_for, hold, review, tables_in
from tests.builder.helpers import PATIENTS, envelope, load_fixture

URL = "/wf106/schema-builder"
# A body that is applied when it is read: every refusal below is for how it was sent.
VALID = json.dumps(load_fixture("foundation_v001.json")).encode()

NOT_JSON = [
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=wf106",
    "application/xml",
    "application/jsonx",
    None,
]


@pytest.fixture
def client() -> APIClient:
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {make_token('svc-crm', permitted=True)}")
    return api


def send(api: APIClient, url: str, body: bytes, content_type: str | None):
    """POST `body` with `content_type`, or with no Content-Type header at all when it is None."""
    if content_type is not None:
        return api.post(url, data=body, content_type=content_type)
    # The test client adds a Content-Type to every body it encodes: give it the body unencoded.
    framing = {"CONTENT_LENGTH": str(len(body)), "wsgi.input": FakePayload(body)}
    return api.generic("POST", url, "", content_type=None, **framing)


# --- the media type ------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_body_not_sent_as_json_is_415_and_nothing_is_applied_or_stored(
    client, target, target_conn, content_type
):
    response = send(client, URL, VALID, content_type)

    assert response.status_code == 415
    data = response.json()
    assert_envelope(data, "unsupported_media_type")
    assert data["meta_out"]["success"] is False
    assert "application/json" in data["result"]["summary"]
    assert "submission_id" not in data["result"]
    assert tables_in(target_conn, target) == []
    assert not SchemaSubmission.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json ;"]
)
def test_json_with_parameters_or_in_any_case_is_applied(client, target, target_conn, content_type):
    response = send(client, URL, VALID, content_type)

    assert response.status_code == 200, response.json()
    assert response.json()["result"]["status"] == "applied"
    assert "patients" in tables_in(target_conn, target)


@pytest.mark.django_db
def test_authentication_comes_before_the_media_type(target):
    response = send(APIClient(), URL, VALID, "text/plain")
    assert response.status_code == 401
    assert_envelope(response.json(), "unauthorized")


@pytest.mark.django_db
def test_the_415_names_what_was_sent(client, target):
    plain = send(client, URL, VALID, "text/plain; charset=utf-8").json()["result"]["summary"]
    missing = send(client, URL, VALID, None).json()["result"]["summary"]
    assert '"text/plain"' in plain
    assert "none was sent" in missing


# --- decisions -----------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("content_type", NOT_JSON)
def test_a_decision_body_not_sent_as_json_is_415_and_decides_nothing(target, content_type):
    held = hold(account("svc-author", "submit_schema"), review())
    approver = client_for(account("ops-approver", "approve_schema"))
    body = json.dumps({"reason": "not this way"}).encode()

    response = send(approver, f"{held['submission_url']}/reject", body, content_type)

    assert response.status_code == 415
    assert_envelope(response.json(), "unsupported_media_type")
    assert SchemaSubmission.objects.get(pk=held["submission_id"]).status == "pending_approval"


@pytest.mark.django_db
def test_an_approval_without_a_body_needs_no_content_type(target, target_conn):
    held = hold(account("svc-author", "submit_schema"), review())
    approver = client_for(account("ops-approver", "approve_schema"))

    response = approver.generic("POST", f"{held['submission_url']}/approve", content_type=None)

    assert response.status_code == 200, response.json()
    assert response.json()["result"]["status"] == "applied"
    assert tables_in(target_conn, target) == ["patients", "schema_migrations"]


@pytest.mark.django_db
def test_a_decision_body_is_read_like_the_webhooks(target, settings):
    held = hold(account("svc-author", "submit_schema"), review())
    approver = client_for(account("ops-approver", "approve_schema"))
    url = f"{held['submission_url']}/reject"
    settings.WF106_MAX_BODY_BYTES = 100

    too_large = send(approver, url, json.dumps({"reason": "x" * 200}).encode(), "application/json")
    duplicate = send(approver, url, b'{"reason": "a", "reason": "b"}', "application/json")
    rejected = send(approver, url, b'{"reason": "no"}', "application/json; charset=utf-8")

    errors = [r.json()["result"].get("validation_errors") for r in (too_large, duplicate)]
    assert [r.status_code for r in (too_large, duplicate, rejected)] == [400, 400, 200]
    assert [e[0]["code"] for e in errors] == ["too_large", "invalid_json"]
    assert rejected.json()["result"]["decision"]["reason"] == "no"


# --- framing -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_body_without_content_length_on_a_server_that_cannot_end_it_is_411(client, target):
    """Django's development server passes a chunked body on with its framing, unreadable.

    Its WSGI environ (wsgiref's) has the Transfer-Encoding header, CONTENT_LENGTH "" and no
    `wsgi.input_terminated`, as the test client's environ has here.
    """
    response = client.post(
        URL, content_type="application/json", HTTP_TRANSFER_ENCODING="chunked", CONTENT_LENGTH=""
    )

    assert response.status_code == 411
    assert_envelope(response.json(), "length_required")
    assert "Content-Length" in response.json()["result"]["summary"]
    assert not SchemaSubmission.objects.exists()


# --- chunked bodies, through gunicorn (which must see committed rows: the tokens) ----------------


def json_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}", "Content-Type": "application/json"}


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_is_read_and_applied(tmp_path, target_schema, target_conn):
    token = make_token("svc-crm", permitted=True)
    with recommended_gunicorn(tmp_path, WF106_TARGET_SCHEMA=target_schema) as server:
        status, answer = post_chunked(server.port, URL, pieces(VALID, 997), json_headers(token))

    assert status == 200, answer
    assert json.loads(answer)["result"]["status"] == "applied"
    assert "patients" in tables_in(target_conn, target_schema)
    assert SchemaSubmission.objects.get().status == "applied"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_chunked_body_over_the_limit_is_refused_unread(tmp_path, target_schema, target_conn):
    token = make_token("svc-crm", permitted=True)
    limit = len(VALID) + 100
    padded = envelope([PATIENTS]) | {"meta": {"padding": "x" * 2 * limit}}
    with recommended_gunicorn(
        tmp_path, WF106_TARGET_SCHEMA=target_schema, WF106_MAX_BODY_BYTES=str(limit)
    ) as server:
        body = json.dumps(padded).encode()
        status, answer = post_chunked(server.port, URL, pieces(body), json_headers(token))
        applied_after = tables_in(target_conn, target_schema)
        under_limit, _ = post_chunked(server.port, URL, pieces(VALID), json_headers(token))

    assert status == 400, answer
    result = json.loads(answer)["result"]
    assert [e["code"] for e in result["validation_errors"]] == ["too_large"]
    assert applied_after == []
    refused = SchemaSubmission.objects.get(pk=result["submission_id"])
    assert (refused.status, refused.http_status, refused.envelope) == ("blocked", 400, None)
    assert under_limit == 200  # the limit, not chunking, refused the first one


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_chunked_decision_body_is_read(tmp_path, target_schema):
    author = Token.objects.create(user=account("svc-author", "submit_schema")).key
    approver = Token.objects.create(user=account("ops-approver", "approve_schema")).key
    with recommended_gunicorn(tmp_path, WF106_TARGET_SCHEMA=target_schema) as server:
        request = json.dumps(review()).encode()
        held_status, held = post_chunked(server.port, URL, pieces(request), json_headers(author))
        url = json.loads(held)["result"]["submission_url"] + "/reject"
        reason = [b'{"reason": ', b'"not this quarter"}']
        status, answer = post_chunked(server.port, url, reason, json_headers(approver))

    assert held_status == 202, held
    assert status == 200, answer
    assert json.loads(answer)["result"]["decision"]["reason"] == "not this quarter"
