"""The Google emulator on its own: the token endpoint checks signed JWTs, tokens expire on
its clock, Cloud Storage and tuningJobs answer in Google's shapes (int64 as strings), list
filters and page tokens are strict, and the tuned endpoint lives in one region."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Iterator
from typing import Any

import google.auth.crypt
import google.auth.jwt
import pytest
from fastapi.testclient import TestClient

from orchestrator.providers.vertex.auth import HttpxRequest
from orchestrator.providers.vertex.emulator import Scenario, create_app
from tests.helpers import KEY_ID, SERVICE_ACCOUNT, Clock, _rsa_key, service_account_key

JOBS = "/v1/projects/p-1/locations/us-central1/tuningJobs"
LINE = {"contents": [{"role": "user", "parts": [{"text": "What is 2+2?"}]},
                     {"role": "model", "parts": [{"text": "4"}]}]}


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def emu(clock: Clock) -> Iterator[TestClient]:
    with TestClient(create_app(Scenario(job_duration_s=10), clock=clock.epoch,
                               buckets=["bkt"])) as client:
        client.post("/_emulator/service-accounts", json=service_account_key()
                    ).raise_for_status()
        yield client


def assertion(**claims: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    pem = _rsa_key().private_bytes(serialization.Encoding.PEM,
                                   serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    signer = google.auth.crypt.RSASigner.from_string(pem, KEY_ID)
    now = int(time.time())
    payload = {"iss": SERVICE_ACCOUNT, "aud": "http://testserver/token", "iat": now,
               "exp": now + 3600, "scope": "https://www.googleapis.com/auth/cloud-platform",
               **claims}
    return google.auth.jwt.encode(signer, payload).decode()


def token(emu: TestClient, **claims: Any) -> Any:
    return emu.post("/token", data={
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": assertion(**claims)})


def bearer(emu: TestClient) -> dict[str, str]:
    return {"authorization": f"Bearer {token(emu).json()['access_token']}"}


class TestTokens:
    def test_a_signed_jwt_gets_a_bearer_token(self, emu: TestClient) -> None:
        reply = token(emu)

        assert reply.status_code == 200
        assert reply.json()["token_type"] == "Bearer" and reply.json()["expires_in"] == 3600
        assert reply.json()["access_token"].startswith("ya29.")

    @pytest.mark.parametrize(("claims", "words"), [
        pytest.param({"scope": "email"}, "scope", id="without-cloud-platform"),
        pytest.param({"iss": "someone@else.example"}, "iss", id="another-issuer"),
        pytest.param({"iat": int(time.time()) - 9000, "exp": int(time.time()) - 5400},
                     "Invalid JWT", id="expired-jwt"),
    ])
    def test_a_wrong_jwt_is_an_invalid_grant(self, emu: TestClient, claims: dict[str, Any],
                                             words: str) -> None:
        reply = token(emu, **claims)

        assert reply.status_code == 400
        assert reply.json()["error"] == "invalid_grant"
        assert words in reply.json()["error_description"]

    @pytest.mark.parametrize("access", ["full_control", "read_write", "read_only"])
    def test_a_cloud_storage_scope_gets_a_token(self, emu: TestClient, access: str) -> None:
        """gcsfs asks for devstorage.<access>, not cloud-platform; Google grants it."""
        reply = token(emu, scope=f"https://www.googleapis.com/auth/devstorage.{access}")

        assert reply.status_code == 200 and reply.json()["access_token"].startswith("ya29.")

    def test_a_tampered_signature_is_refused(self, emu: TestClient) -> None:
        head, body, signature = assertion().split(".")
        reply = emu.post("/token", data={
            "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
            "assertion": f"{head}.{body}X.{signature}"})

        assert reply.status_code == 400 and reply.json()["error"] == "invalid_grant"

    def test_other_grants_are_unsupported(self, emu: TestClient) -> None:
        reply = emu.post("/token", data={"grant_type": "password"})

        assert reply.json()["error"] == "unsupported_grant_type"

    def test_a_key_file_the_emulator_makes_signs_in_with_google_auth(
            self, emu: TestClient) -> None:
        from google.oauth2 import service_account

        info = emu.post("/_emulator/service-accounts/keys", json={}).json()
        creds = service_account.Credentials.from_service_account_info(
            info, scopes=["https://www.googleapis.com/auth/cloud-platform"])

        assert info["token_uri"] == "http://testserver/token"
        creds.refresh(HttpxRequest(emu))
        assert emu.get(JOBS, headers={"authorization": f"Bearer {creds.token}"}
                       ).status_code == 200

    def test_sts_exchanges_a_subject_token_for_a_pool_and_iam_impersonates(
            self, emu: TestClient) -> None:
        exchange = {"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
                    "subject_token": "eyJ.oidc", "audience": "//iam.googleapis.com/projects/1/"
                    "locations/global/workloadIdentityPools/p/providers/oidc",
                    "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                    "scope": "https://www.googleapis.com/auth/cloud-platform"}
        impersonate = ("/iamcredentials/v1/projects/-/serviceAccounts/"
                       "tuner@p-1.iam.gserviceaccount.com:generateAccessToken")
        scope = {"scope": ["https://www.googleapis.com/auth/cloud-platform"]}

        sts = emu.post("/sts/v1/token", data=exchange)
        no_subject = emu.post("/sts/v1/token", data={**exchange, "subject_token": ""})
        other_audience = emu.post("/sts/v1/token", data={**exchange, "audience": "x"})
        anonymous = emu.post(impersonate, json=scope)
        impersonated = emu.post(impersonate, json=scope, headers={
            "authorization": f"Bearer {sts.json()['access_token']}"})

        assert sts.status_code == 200 and sts.json()["access_token"].startswith("ya29.")
        assert no_subject.status_code == other_audience.status_code == 400
        assert no_subject.json()["error"] == "invalid_request"
        assert anonymous.status_code == 401
        assert impersonated.status_code == 200
        assert impersonated.json()["expireTime"].endswith("Z")

    def test_the_token_endpoint_is_under_the_fault_and_latency_knobs(
            self, emu: TestClient) -> None:
        emu.put("/_emulator/scenario", json=Scenario(
            server_errors={"count": 1, "status": 503, "routes": "^/token"},
            throttle={"count": 1, "routes": "^/token"}).model_dump())

        first, second, third = token(emu), token(emu), token(emu)

        assert (first.status_code, second.status_code, third.status_code) == (429, 503, 200)
        assert first.json()["error"]["status"] == "RESOURCE_EXHAUSTED"

    def test_api_calls_need_an_unexpired_issued_token(self, emu: TestClient,
                                                      clock: Clock) -> None:
        headers = bearer(emu)

        assert emu.get(JOBS).json()["error"]["status"] == "UNAUTHENTICATED"
        assert emu.get(JOBS, headers={"authorization": "Bearer made-up"}).status_code == 401
        assert emu.get(JOBS, headers=headers).status_code == 200
        clock.advance(3600)
        assert emu.get(JOBS, headers=headers).status_code == 401


def upload(emu: TestClient, headers: dict[str, str], name: str, lines: list[Any]) -> str:
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    reply = emu.post("/upload/storage/v1/b/bkt/o", headers=headers, content=content,
                        params={"uploadType": "media", "name": name})
    assert reply.status_code == 200, reply.text
    return f"gs://bkt/{name}"


class TestStorage:
    def test_objects_have_int64_strings_and_a_precondition(self, emu: TestClient) -> None:
        headers = bearer(emu)
        upload(emu, headers, "d/x.jsonl", [LINE])

        meta = emu.get("/storage/v1/b/bkt/o/d%2Fx.jsonl", headers=headers).json()
        again = emu.post("/upload/storage/v1/b/bkt/o", headers=headers, content=b"x",
                            params={"uploadType": "media", "name": "d/x.jsonl",
                                    "ifGenerationMatch": "0"})

        assert meta["kind"] == "storage#object" and isinstance(meta["size"], str)
        assert isinstance(meta["generation"], str) and meta["md5Hash"]
        assert again.status_code == 412
        assert emu.get("/storage/v1/b/bkt/o/nope", headers=headers).json()["error"][
            "errors"][0]["reason"] == "notFound"

    def test_a_resumable_chunk_must_not_leave_a_gap(self, emu: TestClient) -> None:
        headers = bearer(emu)
        start = emu.post("/upload/storage/v1/b/bkt/o", headers=headers,
                            params={"uploadType": "resumable"}, json={"name": "r.jsonl"})
        session = start.headers["location"]

        gap = emu.put(session, headers={**headers, "content-range": "bytes 10-11/20"},
                         content=b"ab")
        status = emu.put(session, headers={**headers, "content-range": "bytes */20"})

        assert gap.status_code == 400
        assert status.status_code == 308 and "range" not in status.headers


    @pytest.mark.parametrize("given", [
        pytest.param({"md5Hash": base64.b64encode(hashlib.md5(b"other").digest()).decode()},
                     id="md5"),
        pytest.param({"crc32c": base64.b64encode(b"\0\0\0\0").decode()}, id="crc32c"),
    ])
    def test_bytes_that_are_not_the_hash_given_are_refused_and_nothing_stored(
            self, emu: TestClient, given: dict[str, str]) -> None:
        headers = bearer(emu)
        boundary = "b0undary"
        body = (f"--{boundary}\r\ncontent-type: application/json\r\n\r\n"
                f"{json.dumps({'name': 'h.jsonl', **given})}\r\n--{boundary}\r\n"
                f"content-type: application/jsonl\r\n\r\nsent\r\n--{boundary}--\r\n")
        start = emu.post("/upload/storage/v1/b/bkt/o", headers=headers,
                         params={"uploadType": "resumable"}, json={"name": "r.jsonl", **given})

        multipart = emu.post("/upload/storage/v1/b/bkt/o", headers={
            **headers, "content-type": f"multipart/related; boundary={boundary}"},
            params={"uploadType": "multipart"}, content=body.encode())
        resumable = emu.put(start.headers["location"], content=b"sent",
                            headers={**headers, "content-range": "bytes 0-3/4"})

        for reply in (multipart, resumable):
            assert reply.status_code == 400 and "doesn't match calculated" in reply.text
        for name in ("h.jsonl", "r.jsonl"):
            assert emu.get(f"/storage/v1/b/bkt/o/{name}", headers=headers).status_code == 404

    def test_an_object_carries_its_md5_and_crc32c(self, emu: TestClient) -> None:
        import google_crc32c

        headers = bearer(emu)
        upload(emu, headers, "c.jsonl", [LINE])
        content = (json.dumps(LINE) + "\n").encode()

        meta = emu.get("/storage/v1/b/bkt/o/c.jsonl", headers=headers).json()

        assert meta["md5Hash"] == base64.b64encode(hashlib.md5(content).digest()).decode()
        assert base64.b64decode(meta["crc32c"]) == google_crc32c.value(content).to_bytes(4, "big")

    def test_buckets_must_exist_and_can_be_created(self, emu: TestClient) -> None:
        headers = bearer(emu)
        media = {"uploadType": "media", "name": "x.jsonl"}

        missing = emu.post("/upload/storage/v1/b/nope/o", headers=headers, params=media,
                           content=b"x")
        created = emu.post("/storage/v1/b", headers=headers, params={"project": "p-1"},
                           json={"name": "nope"})
        again = emu.post("/storage/v1/b", headers=headers, params={"project": "p-1"},
                         json={"name": "nope"})
        stored = emu.post("/upload/storage/v1/b/nope/o", headers=headers, params=media,
                          content=b"x")

        assert missing.status_code == 404 and "bucket does not exist" in missing.text
        assert created.status_code == 200 and again.status_code == 409
        assert stored.status_code == 200
        assert emu.get("/storage/v1/b/nope", headers=headers).json()["name"] == "nope"

    def test_a_delete_with_a_generation_deletes_only_that_one(self, emu: TestClient) -> None:
        headers = bearer(emu)
        upload(emu, headers, "g.jsonl", [LINE])
        generation = emu.get("/storage/v1/b/bkt/o/g.jsonl", headers=headers).json()["generation"]

        other = emu.delete("/storage/v1/b/bkt/o/g.jsonl", headers=headers,
                           params={"ifGenerationMatch": str(int(generation) + 1)})
        deleted = emu.delete("/storage/v1/b/bkt/o/g.jsonl", headers=headers,
                             params={"ifGenerationMatch": generation})

        assert other.status_code == 412 and deleted.status_code == 204
        assert emu.get("/storage/v1/b/bkt/o/g.jsonl", headers=headers).status_code == 404

    def test_a_session_can_keep_part_of_a_chunk_or_expire(self, emu: TestClient) -> None:
        headers = bearer(emu)
        emu.put("/_emulator/scenario", json=Scenario(
            partial_chunks=1, partial_chunk_bytes=1, expire_sessions=0).model_dump())
        start = emu.post("/upload/storage/v1/b/bkt/o", headers=headers,
                         params={"uploadType": "resumable"}, json={"name": "p.jsonl"})
        session = start.headers["location"]

        partial = emu.put(session, content=b"abcd",
                          headers={**headers, "content-range": "bytes 0-3/4"})
        emu.put("/_emulator/scenario", json=Scenario(expire_sessions=1).model_dump())
        expired = emu.put(session, content=b"bcd",
                          headers={**headers, "content-range": "bytes 1-3/4"})
        gone = emu.put(session, headers={**headers, "content-range": "bytes */4"})

        assert partial.status_code == 308 and partial.headers["range"] == "bytes=0-0"
        assert expired.status_code == 410 and gone.status_code == 404


    def test_a_session_takes_chunks_by_post_and_can_be_cancelled(self,
                                                                 emu: TestClient) -> None:
        """gcsfs POSTs a session's chunks and DELETEs a session it gives up on."""
        headers = bearer(emu)
        start = {"uploadType": "resumable"}
        kept = emu.post("/upload/storage/v1/b/bkt/o", headers=headers, params=start,
                        json={"name": "kept.jsonl"}).headers["location"]
        dropped = emu.post("/upload/storage/v1/b/bkt/o", headers=headers, params=start,
                           json={"name": "dropped.jsonl"}).headers["location"]
        first, rest = b"a" * (256 << 10), b"tail\n"
        total = len(first) + len(rest)

        partway = emu.post(kept, content=first, headers={
            **headers, "content-range": f"bytes 0-{len(first) - 1}/*"})
        done = emu.post(kept, content=rest, headers={
            **headers, "content-range": f"bytes {len(first)}-{total - 1}/{total}"})
        emu.post(dropped, content=first, headers={
            **headers, "content-range": f"bytes 0-{len(first) - 1}/*"})
        cancelled = emu.delete(dropped, headers=headers)
        after = emu.put(dropped, content=rest, headers={
            **headers, "content-range": f"bytes {len(first)}-{total - 1}/{total}"})

        assert partway.status_code == 308 and partway.headers["range"] == "bytes=0-262143"
        assert done.status_code == 200 and done.json()["size"] == str(total)
        assert emu.get("/storage/v1/b/bkt/o/kept.jsonl", headers=headers,
                       params={"alt": "media"}).content == first + rest
        assert cancelled.status_code == 499 and after.status_code == 404
        assert emu.delete(dropped, headers=headers).status_code == 404
        assert emu.get("/storage/v1/b/bkt/o/dropped.jsonl", headers=headers).status_code == 404

    def test_a_multipart_body_with_bare_line_feeds_is_read(self, emu: TestClient) -> None:
        """gcsfs separates the parts with LF alone; the boundary string inside the media,
        not at the start of a line, is media."""
        headers = bearer(emu)
        media = b"a line\nwith --==0== inside\n"
        body = (b'--==0==\nContent-Type: application/json; charset=UTF-8\n\n'
                b'{"name": "lf.jsonl", "metadata": {"k": "v"}}\n--==0==\n'
                b"Content-Type: application/jsonl\n\n" + media + b"\n--==0==--")

        reply = emu.post("/upload/storage/v1/b/bkt/o", params={"uploadType": "multipart"},
                         headers={**headers, "content-type": 'multipart/related; '
                                  'boundary="==0=="'}, content=body)
        stored = emu.get("/storage/v1/b/bkt/o/lf.jsonl", headers=headers,
                         params={"alt": "media"})

        assert reply.status_code == 200, reply.text
        assert reply.json()["metadata"] == {"k": "v"}
        assert reply.json()["contentType"] == "application/jsonl"
        assert stored.content == media


def listing(emu: TestClient, headers: dict[str, str], **params: Any) -> Any:
    reply = emu.get("/storage/v1/b/bkt/o", headers=headers, params=params)
    assert reply.status_code == 200, reply.text
    return reply.json()


def names(page: dict[str, Any]) -> tuple[list[str], list[str]]:
    return [item["name"] for item in page.get("items", [])], page.get("prefixes", [])


class TestObjectList:
    """objects.list as Cloud Storage documents it (its own example bucket: a/b, a/c, d, e,
    e/f, e/g/h)."""

    @pytest.fixture
    def headers(self, emu: TestClient) -> dict[str, str]:
        headers = bearer(emu)
        for name in ("e/g/h", "a/c", "d", "e/f", "a/b", "e"):
            upload(emu, headers, name, [LINE])
        return headers

    def test_names_come_in_order_with_their_resources(self, emu: TestClient,
                                                      headers: dict[str, str]) -> None:
        page = listing(emu, headers)

        assert page["kind"] == "storage#objects" and "nextPageToken" not in page
        assert names(page) == (["a/b", "a/c", "d", "e", "e/f", "e/g/h"], [])
        assert page["items"][0] == emu.get("/storage/v1/b/bkt/o/a%2Fb",
                                           headers=headers).json()
        assert emu.get("/storage/v1/b/bkt/o/", headers=headers).json() == page

    @pytest.mark.parametrize(("params", "expected"), [
        pytest.param({"delimiter": "/"}, (["d", "e"], ["a/", "e/"]), id="top-level"),
        pytest.param({"delimiter": "/", "prefix": "e/"}, (["e/f"], ["e/g/"]), id="in-e"),
        pytest.param({"prefix": "e"}, (["e", "e/f", "e/g/h"], []), id="prefix-alone"),
        pytest.param({"startOffset": "a/c", "endOffset": "e/f"}, (["a/c", "d", "e"], []),
                     id="offsets"),
        pytest.param({"prefix": "x/"}, ([], []), id="nothing"),
    ])
    def test_a_delimiter_folds_names_into_prefixes(
            self, emu: TestClient, headers: dict[str, str], params: dict[str, str],
            expected: tuple[list[str], list[str]]) -> None:
        page = listing(emu, headers, **params)

        assert names(page) == expected
        if expected == ([], []):
            assert page == {"kind": "storage#objects"}  # empty lists are left out

    def test_a_trailing_delimiter_object_is_an_item_too_if_asked(
            self, emu: TestClient, headers: dict[str, str]) -> None:
        upload(emu, headers, "a/", [LINE])

        assert names(listing(emu, headers, delimiter="/")) == (["d", "e"], ["a/", "e/"])
        assert names(listing(emu, headers, delimiter="/", includeTrailingDelimiter="true")) \
            == (["a/", "d", "e"], ["a/", "e/"])

    def test_pages_hold_max_results_items_and_prefixes_and_resume_after_the_last(
            self, emu: TestClient, headers: dict[str, str]) -> None:
        first = listing(emu, headers, delimiter="/", maxResults=3)
        upload(emu, headers, "c", [LINE])  # before the token: not listed
        upload(emu, headers, "f", [LINE])  # after it: listed
        second = listing(emu, headers, delimiter="/", maxResults=3,
                         pageToken=first["nextPageToken"])

        assert names(first) == (["d", "e"], ["a/"])
        assert names(second) == (["f"], ["e/"]) and "nextPageToken" not in second

    def test_one_entry_a_page_walks_everything_once(self, emu: TestClient,
                                                    headers: dict[str, str]) -> None:
        seen: list[str] = []
        token: str | None = None
        for _ in range(10):
            page = listing(emu, headers, delimiter="/", prefix="e/", maxResults=1,
                           **({"pageToken": token} if token else {}))
            items, prefixes = names(page)
            seen += items + prefixes
            token = page.get("nextPageToken")
            if token is None:
                break

        assert seen == ["e/f", "e/g/"]

    def test_a_page_is_at_most_a_thousand(self, emu: TestClient) -> None:
        headers = bearer(emu)
        store = emu.app.state.store  # type: ignore[attr-defined]  # 1001 uploads, quickly
        for i in range(1001):
            store.put_object("bkt", f"n/{i:04d}", b"x", "", {}, False, "media", "", {})

        page = listing(emu, headers, maxResults=5000)
        rest = listing(emu, headers, pageToken=page["nextPageToken"])

        assert len(page["items"]) == 1000 and names(rest) == (["n/1000"], [])

    @pytest.mark.parametrize(("path", "params", "status", "words"), [
        pytest.param("/storage/v1/b/nope/o", {}, 404, "bucket does not exist", id="no-bucket"),
        pytest.param("/storage/v1/b/bkt/o", {"pageToken": "not-one"}, 400, "pageToken",
                     id="bad-token"),
        pytest.param("/storage/v1/b/bkt/o", {"maxResults": "-1"}, 400, "maxResults",
                     id="negative-max"),
        pytest.param("/storage/v1/b/bkt/o", {"matchGlob": "**.jsonl"}, 400, "matchGlob",
                     id="glob-unsupported"),
    ])
    def test_what_it_cannot_list_is_refused(self, emu: TestClient, path: str,
                                            params: dict[str, str], status: int,
                                            words: str) -> None:
        reply = emu.get(path, headers=bearer(emu), params=params)

        assert reply.status_code == status and words in reply.text
        assert reply.json()["error"]["errors"][0]["reason"] in ("notFound", "invalid")


class TestTuningJobs:
    def test_a_job_walks_pending_running_succeeded_with_int64_strings(
            self, emu: TestClient, clock: Clock) -> None:
        headers = bearer(emu)
        uri = upload(emu, headers, "t.jsonl", [LINE])
        created = emu.post(JOBS, headers=headers, json={
            "baseModel": "gemini-2.5-flash",
            "supervisedTuningSpec": {"trainingDatasetUri": uri,
                                     "hyperParameters": {"epochCount": 3}}}).json()
        states = []
        for _ in range(3):
            states.append(emu.get(f"/v1/{created['name']}", headers=headers).json())
            clock.advance(5)

        assert [s["state"] for s in states] == ["JOB_STATE_PENDING", "JOB_STATE_RUNNING",
                                                "JOB_STATE_SUCCEEDED"]
        done = states[-1]
        assert done["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == "3"
        stats = done["tuningDataStats"]["supervisedTuningDataStats"]
        assert stats["tuningDatasetExampleCount"] == "1"
        assert done["tunedModel"]["endpoint"].startswith(
            "projects/p-1/locations/us-central1/endpoints/")
        assert done["endTime"].endswith("Z")

    @pytest.mark.parametrize(("body", "words"), [
        pytest.param({"baseModel": "gemini-1.0-pro"}, "not supported", id="model"),
        pytest.param({"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": {
            "trainingDatasetUri": "gs://bkt/t.jsonl", "hyperParameters": {
                "epochCount": "three"}}}, "epochCount", id="epochs"),
        pytest.param({"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": {
            "trainingDatasetUri": "gs://bkt/t.jsonl"}, "labels": {"Team": "x"}}, "labels",
            id="label"),
        pytest.param({"baseModel": "gemini-2.5-flash", "supervisedTuningSpec": {
            "trainingDatasetUri": "gs://bkt/openai.jsonl"}}, "line 1 is not valid",
            id="dataset-in-openai-format"),
    ])
    def test_bad_requests_are_invalid_argument(self, emu: TestClient, body: dict[str, Any],
                                               words: str) -> None:
        headers = bearer(emu)
        upload(emu, headers, "t.jsonl", [LINE])
        upload(emu, headers, "openai.jsonl", [{"messages": [{"role": "user",
                                                                 "content": "hi"}]}])

        reply = emu.post(JOBS, headers=headers, json=body)

        assert reply.status_code == 400
        assert reply.json()["error"]["status"] == "INVALID_ARGUMENT"
        assert words in reply.json()["error"]["message"]

    @pytest.mark.parametrize(("body", "where"), [
        pytest.param({"tunedModelName": "x"}, "'tuning_job'", id="top-level"),
        pytest.param({"supervisedTuningSpec": {"trainingDatasetUri": "gs://bkt/t.jsonl",
                                               "epochs": 3}},
                     "'tuning_job.supervised_tuning_spec'", id="in-the-spec"),
        pytest.param({"supervisedTuningSpec": {"trainingDatasetUri": "gs://bkt/t.jsonl",
                                               "hyperParameters": {"epoch_count": 1,
                                                                   "batchSize": 8}}},
                     "'tuning_job.supervised_tuning_spec.hyper_parameters'",
                     id="in-hyperparameters"),
    ])
    def test_an_unknown_field_is_an_unknown_name(self, emu: TestClient, body: dict[str, Any],
                                                 where: str) -> None:
        headers = bearer(emu)
        upload(emu, headers, "t.jsonl", [LINE])

        reply = emu.post(JOBS, headers=headers, json={
            "baseModel": "gemini-2.5-flash",
            "supervisedTuningSpec": {"trainingDatasetUri": "gs://bkt/t.jsonl"}, **body})

        assert reply.status_code == 400
        assert reply.json()["error"]["message"].startswith("Invalid JSON payload received. "
                                                           "Unknown name")
        assert where in reply.json()["error"]["message"]

    def test_snake_case_field_names_are_read_like_camel_case(self, emu: TestClient) -> None:
        """proto3 JSON takes both spellings."""
        headers = bearer(emu)
        upload(emu, headers, "t.jsonl", [LINE])

        reply = emu.post(JOBS, headers=headers, json={
            "base_model": "gemini-2.5-flash", "supervised_tuning_spec": {
                "training_dataset_uri": "gs://bkt/t.jsonl",
                "hyper_parameters": {"epoch_count": "2"}}})

        assert reply.status_code == 200, reply.text
        assert reply.json()["supervisedTuningSpec"]["hyperParameters"]["epochCount"] == "2"

    def test_lists_filter_by_label_and_page_with_tokens(self, emu: TestClient) -> None:
        headers = bearer(emu)
        uri = upload(emu, headers, "t.jsonl", [LINE])
        for label in ("a", "b", "a"):
            emu.post(JOBS, headers=headers, json={
                "baseModel": "gemini-2.5-flash", "labels": {"k": label},
                "supervisedTuningSpec": {"trainingDatasetUri": uri}}).raise_for_status()

        first = emu.get(JOBS, headers=headers, params={"filter": 'labels.k="a"',
                                                          "pageSize": 1}).json()
        second = emu.get(JOBS, headers=headers, params={
            "filter": 'labels.k="a"', "pageSize": 1, "pageToken": first["nextPageToken"]}).json()
        wrong = emu.get(JOBS, headers=headers, params={
            "filter": 'labels.k="b"', "pageToken": first["nextPageToken"]})
        unsupported = emu.get(JOBS, headers=headers, params={"filter": "state=RUNNING"})

        assert len(first["tuningJobs"]) == len(second["tuningJobs"]) == 1
        assert "nextPageToken" not in second
        assert wrong.status_code == unsupported.status_code == 400

    def test_the_tuned_endpoint_answers_only_in_its_own_region(
            self, emu: TestClient, clock: Clock) -> None:
        headers = bearer(emu)
        uri = upload(emu, headers, "t.jsonl", [LINE])
        name = emu.post(JOBS, headers=headers, json={
            "baseModel": "gemini-2.5-flash",
            "supervisedTuningSpec": {"trainingDatasetUri": uri}}).json()["name"]
        clock.advance(10)
        endpoint = emu.get(f"/v1/{name}", headers=headers).json()["tunedModel"]["endpoint"]
        ask = {"contents": [{"role": "user", "parts": [{"text": "what is 2+2?"}]}]}

        answer = emu.post(f"/v1/{endpoint}:generateContent", headers=headers, json=ask)
        elsewhere = emu.post(f"/v1/{endpoint.replace('us-central1', 'europe-west4')}"
                                ":generateContent", headers=headers, json=ask)

        assert answer.json()["candidates"][0]["content"]["parts"][0]["text"] == "4"
        assert elsewhere.status_code == 404
