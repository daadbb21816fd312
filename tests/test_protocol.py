"""pipeline.protocol as tables: Runware answers in, error class / code / retryable out."""

from __future__ import annotations

import base64
import email.utils
from typing import Any

import pytest
from scripted_server import error_body

from pipeline.errors import (
    ApiError,
    AuthError,
    CreditsError,
    NotFoundError,
    RateLimited,
    RequestRejected,
    SafetyError,
    TransientError,
)
from pipeline.protocol import (
    _NOT_FOUND_CODES,
    _SAFETY_CODES,
    _SDK_AUTH_CODES,
    _TRANSIENT_CODES,
    CLIENT_DEFAULTS,
    CLIENT_FIELDS,
    Answer,
    as_float,
    as_int,
    by_task,
    classify,
    decode_data_uri,
    encode_data_uri,
    error_entry,
    flatten_error,
    has_image,
    inference_task,
    is_error,
    is_not_found,
    is_success,
    parse_body,
    parse_retry_after,
    result_index,
    sniff_ext,
    snippet,
    url_ext,
)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 8
JPG = b"\xff\xd8\xff\xe0" + b"\0" * 8
WEBP = b"RIFF\0\0\0\0WEBPVP8 "
NOW = 1_800_000_000.0  # a fixed epoch time: parse_retry_after reads no clock


# ------------------------------------------------------------------------------------------
# classify: a pure table


@pytest.mark.parametrize(
    ("status", "body", "cls", "code"),
    [
        (401, error_body("invalidApiKey", "Invalid API key"), AuthError, "invalidApiKey"),
        (400, error_body("missingApiKey"), AuthError, "missingApiKey"),
        (401, None, AuthError, "unauthorized"),
        (403, {"errors": [{"code": "permissionDenied"}]}, AuthError, "permissionDenied"),
        (402, error_body("insufficientCredits"), CreditsError, "insufficientCredits"),
        (400, error_body("insufficientCredits"), CreditsError, "insufficientCredits"),
        (400, error_body("accountBalanceTooLow"), CreditsError, "accountBalanceTooLow"),
        (429, error_body("monthlyQuotaExceeded"), CreditsError, "monthlyQuotaExceeded"),
        (400, error_body("paymentRequired"), CreditsError, "paymentRequired"),
        (402, None, CreditsError, "paymentRequired"),
        (400, error_body("contentPolicyViolation"), SafetyError, "contentPolicyViolation"),
        (200, error_body("nsfwContentDetected"), SafetyError, "nsfwContentDetected"),
        (400, error_body("taskFailedOrNotFound"), NotFoundError, "taskFailedOrNotFound"),
        (None, error_body("taskCancelled"), NotFoundError, "taskCancelled"),
        (404, None, RequestRejected, "notFound"),  # a bare 404 never means "task unknown"
        (400, error_body("invalidWidth"), RequestRejected, "invalidWidth"),
        (400, error_body("missingPositivePrompt"), RequestRejected, "missingPositivePrompt"),
        (400, error_body("unsupportedParameter"), RequestRejected, "unsupportedParameter"),
        (400, error_body("conflictTaskUUID"), RequestRejected, "conflictTaskUUID"),
        (400, error_body("duplicatePreloadModelAIR"), RequestRejected, "duplicatePreloadModelAIR"),
        (400, error_body("unknownModel"), RequestRejected, "unknownModel"),
        (422, error_body("somethingNew"), RequestRejected, "somethingNew"),
        (400, None, RequestRejected, "http400"),
        (429, error_body("rateLimitExceeded"), RateLimited, "rateLimitExceeded"),
        (400, error_body("userRateLimit"), RateLimited, "userRateLimit"),
        (429, None, RateLimited, "rateLimitExceeded"),
        (400, error_body("timeoutProvider"), TransientError, "timeoutProvider"),
        (200, error_body("inferenceError"), TransientError, "inferenceError"),
        (400, error_body("noAvailableServer"), TransientError, "noAvailableServer"),
        (500, error_body("internalServerError"), TransientError, "internalServerError"),
        (500, None, TransientError, "serverError"),
        (503, {"errors": []}, TransientError, "serverError"),
        (504, error_body("whatever"), TransientError, "whatever"),
        (408, None, TransientError, "requestTimeout"),
        (
            None,
            {"status": "error", "error": {"code": "promptBlocked"}},
            SafetyError,
            "promptBlocked",
        ),
        (None, error_body("taskFailed"), ApiError, "taskFailed"),
    ],
)
def test_classify_table(
    status: int | None, body: dict[str, Any] | None, cls: type[ApiError], code: str
) -> None:
    err = classify(status, body)
    assert type(err) is cls
    assert err.code == code
    assert err.status == status
    assert "\n" not in str(err) and str(err).startswith(code)


def test_classify_fields_and_message() -> None:
    body = {
        "data": [],
        "errors": [
            {
                "code": "invalidDimensions",
                "message": "Invalid value for\n'width' parameter.",
                "parameter": ["width", "height", "referenceImages"],
                "type": "integer",
                "min": 256,
                "max": 16383,
                "allowedValues": {"1": "1184x896", "0": "1024x1024", "10": "x", "2": "1248x832"},
                "taskType": "imageInference",
                "taskUUID": "t-1",
            }
        ],
    }
    err = classify(400, body)
    assert isinstance(err, RequestRejected)
    assert err.parameter == ["width", "height", "referenceImages"]
    assert err.body["allowedValues"] == ["1024x1024", "1184x896", "1248x832", "x"]
    assert (err.body["min"], err.body["max"]) == (256, 16383)
    assert err.task_uuid == "t-1"
    assert str(err) == (
        "invalidDimensions: Invalid value for 'width' parameter. "
        "[width, height, referenceImages] (HTTP 400)"
    )
    aspect = classify(400, error_body("invalidSize", allowedValues={"1:1": "1024x1024"}))
    assert aspect.body["allowedValues"] == {"1:1": "1024x1024"}
    listed = classify(400, error_body("invalidCreativity", allowedValues=["raw", "low"]))
    assert listed.body["allowedValues"] == ["raw", "low"]
    assert classify(400, error_body("invalidWidth", parameter="width")).parameter == "width"


def test_classify_picks_the_error_of_the_task_and_non_json() -> None:
    body = {
        "errors": [
            {"code": "invalidWidth", "taskUUID": "a"},
            {"code": "invalidHeight", "taskUUID": "b"},
        ]
    }
    assert classify(400, body, task_uuid="b").code == "invalidHeight"
    html = classify(500, None, text="<html>internal   error</html>")
    assert isinstance(html, TransientError)
    assert "<html>internal error</html>" in str(html)
    limited = classify(429, error_body("rateLimitExceeded"), retry_after=3.0)
    assert isinstance(limited, RateLimited) and limited.retry_after == 3.0


@pytest.mark.parametrize(
    ("status", "body", "retryable"),
    [
        (429, None, True),
        (429, error_body("rateLimitExceeded"), True),
        (500, None, True),
        (502, {"errors": []}, True),
        (408, None, True),
        (200, error_body("inferenceError"), True),
        (400, error_body("timeoutProvider"), True),
        (400, error_body("modelNotReady"), True),
        (None, {"status": "error", "error": {"code": "processingFailed"}}, True),
        (400, error_body("invalidWidth"), False),
        (400, error_body("conflictTaskUUID"), False),
        (400, error_body("taskFailedOrNotFound"), False),
        (404, None, False),
        (402, error_body("insufficientCredits"), False),
        (429, error_body("monthlyQuotaExceeded"), False),  # quota: never retried
        (401, None, False),
        (400, error_body("contentPolicyViolation"), False),
        (None, error_body("taskFailed"), False),
    ],
)
def test_retryable_table(status: int | None, body: dict[str, Any] | None, retryable: bool) -> None:
    """What the client may retry is decided by the answer alone."""
    assert classify(status, body).retryable is retryable


def test_answer_error_carries_retry_after_and_task() -> None:
    answer = Answer(429, error_body("rateLimitExceeded", taskUUID="t"), "{}", retry_after=2.5)
    err = answer.error()
    assert isinstance(err, RateLimited) and err.retry_after == 2.5 and err.task_uuid == "t"
    assert not answer.ok and Answer(204, None, "").ok
    assert Answer(500, None, "<b>boom</b>").error("u").task_uuid == "u"


# ------------------------------------------------------------------------------------------
# not-found, as Runware's SDK reads it (a table against the SDK itself)

CODES = [
    "taskFailedOrNotFound",
    "taskNotFound",
    "taskExpired",
    "taskCancelled",
    "unknownModel",
    "resultExpired",
    "imageNotFound",
    "tokenExpired",  # auth in the SDK, not "not found"
    "authTimeout",
    "insufficientCredits",
    "conflictTaskUUID",
    "invalidApiKey",
    "timeoutProvider",
    "internalServerError",
    "rateLimitExceeded",
    "contentPolicyViolation",
    "notFound",
    "creditsExpired",
    "",
]


@pytest.mark.parametrize("code", CODES)
def test_not_found_matches_runware_sdk(code: str) -> None:
    from runware.errors import derive_code

    assert is_not_found(code) == (derive_code(code) == "notFound"), code


# … and against the SDK's own code tables


def _sdk_tables() -> dict[str, frozenset[str]]:
    from runware import errors

    return {
        "not found": frozenset(errors._NOT_FOUND_CODES),
        "auth": frozenset(errors._AUTH_CODES),
        "safety": frozenset(errors._SAFETY_CODES),
        "server": frozenset(errors._SERVER_ERROR_CODES),
        "provider": frozenset(errors._PROVIDER_CODES),
    }


def test_code_tables_match_the_sdk() -> None:
    """The codes the SDK reads before "not found" (auth) and as "not found" are ours too."""
    sdk = _sdk_tables()
    assert sdk["not found"] == _NOT_FOUND_CODES
    assert sdk["auth"] == _SDK_AUTH_CODES
    assert sdk["safety"] - _SAFETY_CODES <= {"invalidProviderContent"}  # is_not_found has it


def test_not_found_matches_the_sdk_on_every_code_it_knows() -> None:
    codes = set().union(*_sdk_tables().values(), _SAFETY_CODES, _TRANSIENT_CODES, CODES)
    wrong = [c for c in sorted(codes) if is_not_found(c) != _sdk_not_found(c)]
    assert wrong == []


def _sdk_not_found(code: str) -> bool:
    from runware.errors import derive_code

    return derive_code(code) == "notFound"


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        ("taskFailedOrNotFound", NotFoundError),
        ("taskNotFound", NotFoundError),
        ("taskExpired", NotFoundError),
        ("taskCancelled", NotFoundError),
        ("unknownModel", RequestRejected),  # not found to the SDK, but a bad request to submit
        ("tokenExpired", AuthError),  # never "not found"; an unusable token stops the run
        ("accountSuspended", AuthError),
        ("permissionDenied", AuthError),
        ("creditsExpired", CreditsError),
        ("authTimeout", TransientError),
    ],
)
def test_not_found_codes_and_their_class(code: str, cls: type[ApiError]) -> None:
    assert type(classify(400, error_body(code))) is cls


# ------------------------------------------------------------------------------------------
# answers: items, errors, owners


@pytest.mark.parametrize(
    ("item", "success", "error"),
    [
        ({"status": "success"}, True, False),
        ({"status": "completed"}, True, False),
        ({"imageBase64Data": "x"}, True, False),
        ({"imageURL": "https://x/a.png"}, True, False),
        ({"imageURL": ""}, False, False),
        ({"status": "processing", "imageURL": "https://x/a.png"}, False, False),
        ({"status": "pending"}, False, False),
        ({"status": "error", "error": {"code": "x"}}, False, True),
        ({"error": {"code": "x"}}, False, True),
        ({"status": "ERROR"}, False, True),
        ({}, False, False),
    ],
)
def test_item_state(item: dict[str, Any], success: bool, error: bool) -> None:
    assert (is_success(item), is_error(item)) == (success, error)


def test_has_image_fields() -> None:
    item = {"imageURL": "https://x/a.png"}
    assert has_image(item) and not has_image(item, ("imageBase64Data", "imageDataURI"))


@pytest.mark.parametrize(
    ("body", "uuids", "want", "unowned"),
    [
        (None, ["a"], {"a": (0, 0)}, 0),
        (
            {"data": [{"taskUUID": "a"}, {"taskUUID": "b"}]},
            ["a", "b"],
            {"a": (1, 0), "b": (1, 0)},
            0,
        ),
        ({"data": {"taskUUID": "a"}}, ["a"], {"a": (1, 0)}, 0),  # one object, not a list
        ({"data": [{"imageUUID": "i"}]}, ["a"], {"a": (1, 0)}, 0),  # no owner, one task
        ({"data": [{"imageUUID": "i"}]}, ["a", "b"], {"a": (0, 0), "b": (0, 0)}, 0),
        ({"data": [{"taskUUID": "z"}, "junk"]}, ["a"], {"a": (0, 0)}, 0),
        ({"errors": [{"code": "x"}]}, ["a"], {"a": (0, 1)}, 0),
        ({"errors": [{"code": "x"}]}, ["a", "b"], {"a": (0, 0), "b": (0, 0)}, 1),
        ({"errors": {"code": "x", "taskUUID": "b"}}, ["a", "b"], {"a": (0, 0), "b": (0, 1)}, 0),
    ],
)
def test_by_task_table(
    body: dict[str, Any] | None,
    uuids: list[str],
    want: dict[str, tuple[int, int]],
    unowned: int,
) -> None:
    per_task, rest = by_task(body, uuids)
    assert {u: (len(i), len(e)) for u, (i, e) in per_task.items()} == want
    assert len(rest) == unowned


@pytest.mark.parametrize(
    ("item", "flat"),
    [
        ({"status": "error", "error": {"code": "c"}}, {"status": "error", "code": "c"}),
        ({"code": "c", "error": "boom"}, {"code": "c", "message": "boom"}),
        ({"message": "m", "error": "boom"}, {"message": "m"}),
        ({"code": "c"}, {"code": "c"}),
    ],
)
def test_flatten_error(item: dict[str, Any], flat: dict[str, Any]) -> None:
    assert flatten_error(item) == flat


def test_error_entry_round_trips_through_classify() -> None:
    err = classify(400, error_body("invalidWidth", "too wide", parameter="width", taskUUID="t"))
    again = classify(400, {"errors": [error_entry(err)]})
    assert (type(again), again.code, again.parameter, again.task_uuid) == (
        RequestRejected,
        "invalidWidth",
        "width",
        "t",
    )


@pytest.mark.parametrize(
    ("text", "body"),
    [
        ("", None),
        ("   ", None),
        ("<html>502</html>", None),
        ('"a string"', None),
        ('{"data": []}', {"data": []}),
        ('[{"taskUUID": "a"}]', {"data": [{"taskUUID": "a"}]}),
    ],
)
def test_parse_body(text: str, body: dict[str, Any] | None) -> None:
    assert parse_body(text) == body


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("3", 3.0),
        (" 1.5 ", 1.5),
        ("-2", 0.0),
        ("soon", None),
        (email.utils.formatdate(NOW + 10, usegmt=True), 10.0),
        (email.utils.formatdate(NOW - 10, usegmt=True), 0.0),  # a date in the past: now
        ("Wed, 15 Jan 2027 08:00:00", 1_800_000_000.0 - NOW + 0.0),  # no zone: read as UTC
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW) == seconds


# ------------------------------------------------------------------------------------------
# the request the client sends


def test_inference_task_sets_the_client_fields() -> None:
    request = {"model": "m", "taskType": "other", "taskUUID": "old", "positivePrompt": "p"}
    task = inference_task(request, "u-1", delivery="sync", output_type="URL")
    assert task == {
        "taskType": "imageInference",
        "taskUUID": "u-1",
        "model": "m",
        "positivePrompt": "p",
        "includeCost": True,
        "deliveryMethod": "sync",
        "outputType": "URL",
    }
    assert list(task)[:2] == ["taskType", "taskUUID"]  # as sent: key order is kept
    assert set(task) - set(request) | {"taskType", "taskUUID"} == {*CLIENT_FIELDS, *CLIENT_DEFAULTS}
    chosen = inference_task({"outputType": "dataURI"}, "u", delivery="async", output_type="URL")
    assert chosen["outputType"] == "dataURI"  # a default: the request's own choice wins
    assert request["taskUUID"] == "old"  # the request itself is not changed


def test_client_fields_say_why() -> None:
    assert list(CLIENT_FIELDS) == ["taskType", "taskUUID", "includeCost", "deliveryMethod"]
    assert all(why.startswith(("krea-sweep", "per-attempt")) for why in CLIENT_FIELDS.values())


# ------------------------------------------------------------------------------------------
# image bytes


@pytest.mark.parametrize(
    ("data", "ext"),
    [
        (PNG, "png"),
        (JPG, "jpg"),
        (WEBP, "webp"),
        (b"GIF89a....", "gif"),
        (b"BM......", "bmp"),
        (b"RIFF\0\0\0\0WAVE", None),
        (b"", None),
    ],
)
def test_sniff_ext(data: bytes, ext: str | None) -> None:
    assert sniff_ext(data) == ext


@pytest.mark.parametrize(
    ("data", "fallback", "mime", "ext"),
    [
        (PNG, "jpg", "image/png", "png"),  # sniffed beats the file name
        (JPG, "png", "image/jpeg", "jpg"),
        (b"????", "webp", "image/webp", "webp"),
        (b"????", "jpeg", "image/jpeg", "jpg"),
        (b"????", "tiff", "image/png", "png"),  # unknown: png
    ],
)
def test_data_uri_round_trip(data: bytes, fallback: str, mime: str, ext: str) -> None:
    uri = encode_data_uri(data, fallback)
    assert uri.startswith(f"data:{mime};base64,")
    assert decode_data_uri(uri) == (data, ext)


@pytest.mark.parametrize(
    ("uri", "data", "ext"),
    [
        ("data:image/png;base64," + base64.b64encode(PNG).decode(), PNG, "png"),
        ("data:image/jpg;base64," + base64.b64encode(JPG).decode(), JPG, "jpg"),
        ("DATA:IMAGE/WEBP;base64," + base64.b64encode(WEBP).decode(), WEBP, "webp"),
        ("data:;base64," + base64.b64encode(PNG).decode(), PNG, None),
        ("data:application/x-thing;base64,AAAA", b"\0\0\0", None),
    ],
)
def test_decode_data_uri(uri: str, data: bytes, ext: str | None) -> None:
    assert decode_data_uri(uri) == (data, ext)


def test_decode_data_uri_refuses_other_text() -> None:
    with pytest.raises(ValueError):
        decode_data_uri("https://example.com/a.png")


@pytest.mark.parametrize(
    ("url", "ext"),
    [
        ("https://im.runware.ai/image/ws/a.jpeg?x=1", "jpg"),
        ("https://x/a.PNG", "png"),
        ("https://x/a.webp", "webp"),
        ("https://x/a.gif", None),
        ("https://x/a", None),
        ("https://x.y/dir/", None),
    ],
)
def test_url_ext(url: str, ext: str | None) -> None:
    assert url_ext(url) == ext


@pytest.mark.parametrize(
    ("value", "as_i", "as_f"),
    [
        (3, 3, 3.0),
        ("-4", -4, -4.0),
        ("2.5", None, 2.5),
        (0.06, None, 0.06),
        (True, None, None),
        (None, None, None),
        ("x", None, None),
        ([1], None, None),
    ],
)
def test_as_int_and_float(value: Any, as_i: int | None, as_f: float | None) -> None:
    assert (as_int(value), as_float(value)) == (as_i, as_f)


def test_result_index_sorts_unindexed_last() -> None:
    items: list[dict[str, Any]] = [
        {"resultIndex": 2},
        {},
        {"resultIndex": "0"},
        {"resultIndex": True},
    ]
    assert [i.get("resultIndex") for i in sorted(items, key=result_index)][:2] == ["0", 2]


def test_snippet_is_one_bounded_line() -> None:
    assert snippet("a\n  b\tc") == "a b c"
    cut = snippet("x" * 500, 10)
    assert len(cut) == 10 and cut.endswith("…")
