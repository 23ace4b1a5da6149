"""The OpenAI line format: validation of input lines and shape of output lines."""

from __future__ import annotations

import orjson
import pytest

from spoolbatch.errors import RequestError
from spoolbatch.format.endpoints import CHAT, COMPLETIONS, EMBEDDINGS
from spoolbatch.format.lines import BadLine, LineParser, deadletter_line, error_line
from spoolbatch.format.validation import parse_spec

from .conftest import chat_line


def parse(parser: LineParser, obj: object, line: int = 1) -> object:
    raw = obj if isinstance(obj, bytes) else orjson.dumps(obj)
    return parser.parse(raw + b"\n", line)


@pytest.mark.parametrize(("raw", "code"), [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "not_an_object"),
    (b'"text"', "not_an_object"),
    (b'{"method": "POST"}', "missing_custom_id"),
    (b'{"custom_id": "", "method": "POST"}', "missing_custom_id"),
    (b'{"custom_id": "a", "method": "GET", "url": "/v1/completions", "body": {}}', "invalid_method"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/images", "body": {}}', "invalid_url"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": [1]}', "invalid_body"),
    (b'{"custom_id": "a", "method": "POST", "url": "/v1/completions", "body": {"prompt": "x"}}', "missing_field"),
    (b'{"custom_id": "\xff\xfe"}', "invalid_utf8"),
])
def test_bad_lines_get_a_code(raw: bytes, code: str) -> None:
    bad = LineParser().parse(raw, 7)
    assert isinstance(bad, BadLine)
    assert bad.code == code
    assert bad.line == 7
    assert bad.raw == raw


def test_duplicate_and_model_mismatch_and_url_mismatch() -> None:
    p = LineParser()
    assert not isinstance(parse(p, chat_line(1)), BadLine)
    dup = parse(p, chat_line(1), 2)
    assert isinstance(dup, BadLine) and dup.code == "duplicate_custom_id" and dup.custom_id == "req-1"
    other = parse(p, chat_line(2, model="other"), 3)
    assert isinstance(other, BadLine) and other.code == "model_mismatch"
    cmpl = {"custom_id": "c", "method": "POST", "url": COMPLETIONS, "body": {"model": "m", "prompt": "hi"}}
    assert isinstance(parse(p, cmpl, 4), BadLine)


def test_blank_lines_are_skipped_and_ids_are_remembered() -> None:
    p = LineParser()
    assert p.parse(b"\n", 1) is None
    assert p.parse(b"  \r\n", 2) is None
    parse(p, chat_line(5))
    assert len(p.seen) == 1


def test_deadletter_keeps_invalid_utf8_bytes_exactly() -> None:
    raw = b'{"custom_id": "x\xff"}'
    bad = LineParser().parse(raw, 3)
    assert isinstance(bad, BadLine)
    record = orjson.loads(deadletter_line("job", bad))
    import base64
    assert base64.b64decode(record["request_base64"]) == raw
    assert record["line"] == 3 and record["error"]["code"] == "invalid_utf8"
    err = orjson.loads(error_line(record))
    assert err["response"] is None and err["error"]["code"] == "invalid_utf8"


@pytest.mark.parametrize(("url", "body", "code"), [
    (CHAT, {"model": "m", "messages": []}, "missing_field"),
    (CHAT, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]}, "invalid_value"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 3}, "invalid_value"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search"}]},
     "unsupported_parameter"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}, "unsupported_parameter"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}, "invalid_value"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     "invalid_value"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
     "unsupported_content"),
    (CHAT, {"model": "m", "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "invalid_value"),
    (COMPLETIONS, {"model": "m", "prompt": ["a", "b"]}, "invalid_value"),
    (COMPLETIONS, {"model": "m", "prompt": "a", "echo": True}, "unsupported_parameter"),
    (COMPLETIONS, {"model": "m", "prompt": "a", "max_tokens": "9"}, "invalid_type"),
    (EMBEDDINGS, {"model": "m", "input": ""}, "invalid_value"),
    (EMBEDDINGS, {"model": "m", "input": "a", "dimensions": 0}, "invalid_value"),
    (EMBEDDINGS, {"model": "m", "input": "a", "dimensions": "8"}, "invalid_type"),
])
def test_sampling_fields_are_honoured_or_refused(url: str, body: dict, code: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_spec(url, body)
    assert info.value.code == code


def test_sampling_spec_maps_fields() -> None:
    spec = parse_spec(CHAT, {"model": "m", "messages": [{"role": "developer", "content": [{"type": "text",
                                                                                          "text": "be brief"}]}],
                             "max_completion_tokens": 5, "max_tokens": 99, "stop": "\n", "seed": 3, "n": 2,
                             "logprobs": True, "top_logprobs": 2,
                             "response_format": {"type": "json_schema", "json_schema": {"name": "s",
                                                                                        "schema": {"type": "object"}}}})
    assert spec.max_tokens == 5 and spec.stop == ("\n",) and spec.seed == 3 and spec.n == 2
    assert spec.messages == ({"role": "system", "content": "be brief"},)
    assert spec.logprobs and spec.top_logprobs == 2 and spec.json_schema == {"type": "object"}
    cmpl = parse_spec(COMPLETIONS, {"model": "m", "prompt": ["only one"], "logprobs": 2})
    assert cmpl.prompt == "only one" and cmpl.max_tokens == 16 and cmpl.top_logprobs == 2
    emb = parse_spec(EMBEDDINGS, {"model": "e", "input": ["a", "b"], "encoding_format": "base64"})
    assert emb.inputs == ("a", "b") and emb.encoding_format == "base64" and emb.dimensions is None
    assert parse_spec(EMBEDDINGS, {"model": "e", "input": "a", "dimensions": 8}).dimensions == 8


def test_a_messages_name_is_carried_to_the_engine() -> None:
    spec = parse_spec(CHAT, {"model": "m", "messages": [
        {"role": "developer", "content": "be brief", "name": "ops"},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "alice"},
        {"role": "assistant", "content": "hello", "name": "bot", "refusal": None, "tool_calls": None}]})
    assert spec.messages == ({"role": "system", "content": "be brief", "name": "ops"},
                             {"role": "user", "content": "hi", "name": "alice"},
                             {"role": "assistant", "content": "hello", "name": "bot"})
    assert spec.rich  # rendered by the engine's full chat renderer, which hands the name to the template
    # Keys holding nothing (null, []) are as absent: an OpenAI answer's message replayed as it came stays plain.
    plain = parse_spec(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi", "name": None},
                                                         {"role": "assistant", "content": "yo", "refusal": None,
                                                          "audio": None, "function_call": None,
                                                          "annotations": []}]})
    assert plain.messages == ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"})
    assert not plain.rich


@pytest.mark.parametrize(("message", "code", "words"), [
    ({"role": "user", "content": "x", "foo": 1}, "unsupported_parameter", "messages[1]: foo"),
    ({"role": "system", "content": "x", "tool_call_id": "c"}, "unsupported_parameter", "tool_call_id"),
    ({"role": "assistant", "content": "x", "refusal": "no", "audio": {"id": "a"}}, "unsupported_parameter",
     "audio, refusal"),
    ({"role": "assistant", "content": "x", "reasoning_content": "hm"}, "unsupported_parameter", "reasoning_content"),
    ({"role": "tool", "content": "x", "tool_call_id": "c", "weird": True}, "unsupported_parameter", "weird"),
    ({"role": "user", "content": "x", "name": 7}, "invalid_type", "messages[1].name"),
])
def test_a_message_key_that_is_not_carried_is_refused(message: dict, code: str, words: str) -> None:
    with pytest.raises(RequestError) as info:
        parse_spec(CHAT, {"model": "m", "messages": [{"role": "user", "content": "q"}, message]})
    assert info.value.code == code and words in str(info.value)


def test_a_line_with_a_message_key_not_carried_is_deadlettered_alone() -> None:
    parser = LineParser()
    named = chat_line(1)
    named["body"]["messages"][0]["name"] = "alice"
    odd = chat_line(2)
    odd["body"]["messages"][0]["mood"] = "curious"
    assert not isinstance(parse(parser, named, 1), BadLine)
    bad = parse(parser, odd, 2)
    assert isinstance(bad, BadLine) and bad.code == "unsupported_parameter" and "mood" in bad.message
    record = orjson.loads(deadletter_line("job", bad))
    assert record["line"] == 2 and record["custom_id"] == "req-2" and record["error"]["code"] == "unsupported_parameter"
