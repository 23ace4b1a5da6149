"""Chat requests that need vLLM's server-side machinery: tools, reasoning, rich conversations.

A request takes this path when it carries tools, replayed tool calls or tool results,
``reasoning_effort`` or ``chat_template_kwargs``, or when a reasoning parser is configured.
It is done the way vLLM's OpenAI server does it, with vLLM's own pieces:

- the body becomes vLLM's ``ChatCompletionRequest`` (its request model);
- vLLM's ``Parser`` (reasoning parser + tool parser, chosen by the ``reasoning_parser`` and
  ``tool_call_parser`` settings) adjusts it; ``auto`` needs a configured tool parser and is
  refused per line without one;
- ``tool_choice`` ``required`` or a named function takes vLLM's generic JSON tool-call path
  whatever tool parser is set: structured output from the tools' schemas, the answer read
  as JSON (as vLLM's server does for parsers without a structural tag, e.g. ``pythonic``),
  so every model gives a call whose arguments follow the schema. vLLM 0.32's own forced
  path for hermes, qwen3, glm, kimi and others is an xgrammar structural tag, which the
  engine's structured-output backend (llguidance, ``vllm_engine``) refuses ("Invalid
  grammar specification: 'triggers'"), and some parsers (gemma4, dots) force nothing at
  all. For ``auto`` such a tag (strict tools, ``parallel_tool_calls`` false) is left out, as
  vLLM's server does when it cannot build one: the text is free and the parser reads it;
- the conversation is rendered by vLLM's offline chat renderer (tools and the chat template
  arguments given to the template; replayed tool-call arguments decoded as vLLM does);
- the finished text goes back through the same ``Parser`` for reasoning, content and calls.

Tool-call ids are derived from the request (vLLM draws random ones) so that a redone chunk
writes identical lines.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spoolbatch.engines.media import MediaPolicy, has_images, resolve_images
from spoolbatch.errors import RequestError
from spoolbatch.format import bodies
from spoolbatch.format import tools as fn_tools
from spoolbatch.format.types import Request
from spoolbatch.format.validation import SamplingSpec


def needs_chat_path(spec: SamplingSpec, reasoning_parser: str | None) -> bool:
    """True when a chat request goes through vLLM's renderer and parsers (see the module doc)."""
    return bool(spec.rich or spec.tools or spec.reasoning_effort is not None
                or spec.chat_template_kwargs is not None or reasoning_parser)


@dataclass(slots=True)
class Prepared:
    """A request rendered for the engine, and what its answer is parsed with."""

    engine_input: dict[str, Any]
    prompt_ids: list[int]
    vrequest: Any  # vLLM's ChatCompletionRequest, after the parser adjusted it
    overrides: dict[str, Any] = field(default_factory=dict)  # SamplingParams the parser set
    template_kwargs: dict[str, Any] = field(default_factory=dict)


class ChatTools:
    """vLLM's request model, renderer and parsers for one loaded model (see the module doc)."""

    def __init__(self, tokenizer: Any, model_config: Any, render: Callable[..., Any] | None, *,
                 tool_call_parser: str | None, reasoning_parser: str | None,
                 media: MediaPolicy | None = None) -> None:
        self.tokenizer = tokenizer
        self.media = media or MediaPolicy()
        self.model_config = model_config  # vLLM's ModelConfig, or None (parsers then use defaults)
        self.render = render  # LLM._preprocess_chat_one: vLLM's offline chat renderer, LLM.chat's
        self.tool_call_parser = tool_call_parser or None
        self.reasoning_parser = reasoning_parser or None
        self.parser_cls, self.forced_parser_cls = self._parser_classes()

    @classmethod
    def for_llm(cls, llm: Any, *, tool_call_parser: str | None, reasoning_parser: str | None,
                media: MediaPolicy | None = None) -> ChatTools:
        """The tools for a loaded ``vllm.LLM``."""
        return cls(llm.get_tokenizer(), llm.llm_engine.model_config, llm._preprocess_chat_one,
                   tool_call_parser=tool_call_parser, reasoning_parser=reasoning_parser, media=media)

    def _parser_classes(self) -> tuple[Any, Any]:
        """vLLM's composed parser class, and its twin for forced calls (see the module doc).

        Raises ``RequestError`` (``parser_unavailable``) when a named parser is unknown, does
        not fit the model's tokenizer, or needs a package that is not installed.

        The twin keeps the reasoning parser and answers ``required`` and a named function with
        vLLM's base ``ToolParser``: structured output from the schemas, the answer read as JSON.
        With no tool parser named, the composed class gets that base parser too.
        """
        from vllm.parser import ParserManager
        from vllm.parser.abstract_parser import DelegatingParser
        from vllm.tool_parsers.abstract_tool_parser import ToolParser

        config = self.model_config
        harmony = getattr(getattr(config, "hf_config", None), "model_type", None) == "gpt_oss"
        try:
            if self.tool_call_parser == "openai" and not harmony:  # vLLM's stub outside gpt-oss
                raise ValueError("the 'openai' tool parser reads only gpt-oss (harmony) output")
            composed = ParserManager.get_parser(
                tool_parser_name=self.tool_call_parser, reasoning_parser_name=self.reasoning_parser,
                enable_auto_tools=self.tool_call_parser is not None,
                model_name=getattr(config, "model", None), is_harmony=harmony, tokenizer=self.tokenizer)
        except (TypeError, KeyError, ValueError, ImportError) as exc:
            # Per line, not per engine: the settings hold for every model, and a job for a model
            # they do not fit should say so on each line rather than fail to load. ImportError:
            # a parser whose package is missing (cohere_command3 needs cohere_melody).
            raise RequestError("parser_unavailable", f"the configured tool_call_parser/reasoning_parser cannot "
                               f"be used with this model: {exc} (names as vLLM's --tool-call-parser and "
                               "--reasoning-parser)") from None
        if composed is None:
            composed = DelegatingParser
        # Plain DelegatingParser, not a subclass of the composed one: unified parsers (kimi_k3)
        # read forced calls through their own tool parser, which would not find JSON.
        forced = type("_JsonToolCalls", (DelegatingParser,), {"reasoning_parser_cls": composed.reasoning_parser_cls,
                                                              "tool_parser_cls": ToolParser})
        if composed.tool_parser_cls is None:  # reasoning only: JSON tools for whatever carries tools
            composed = type("_WithJsonTools", (composed,), {"tool_parser_cls": ToolParser})
        return composed, forced

    # -- before generation -------------------------------------------------------------

    def prepare(self, request: Request) -> Prepared:
        """Render ``request`` and let the parser adjust it; raise ``RequestError`` when it cannot run."""
        spec = request.spec
        if spec.tool_choice == fn_tools.AUTO and self.tool_call_parser is None:
            raise RequestError("tool_parser_missing",
                               "tool_choice 'auto' (the default when 'tools' are given) needs the "
                               "'tool_call_parser' setting for this model (e.g. hermes, llama3_json, "
                               "mistral); or send tool_choice 'required', 'none' or a named function")
        vrequest = self._vllm_request(spec)
        template_kwargs = dict(vrequest.build_chat_params(None, "auto").chat_template_kwargs or {})
        parser = self.parser(vrequest, template_kwargs)
        if spec.tool_choice not in (None, fn_tools.NONE) or parser.reasoning_parser is not None:
            vrequest = parser.adjust_request(vrequest)
        structured = getattr(vrequest, "structured_outputs", None)
        if structured is not None and not _backend_reads(structured):
            if spec.forced_tool:  # the forced twin never builds one: a vLLM that does is a bug to see
                raise RequestError("internal_error", "vLLM's parser constrained a forced tool call with a "
                                   "structural tag the structured-output backend cannot read")
            structured = vrequest.structured_outputs = None
        if structured is not None and spec.tool_choice == fn_tools.REQUIRED:
            _close_call_objects(structured.json)
        if self.render is None:
            raise RequestError("internal_error", "no chat renderer (tools built without a model)")
        tools = [copy.deepcopy(t) for t in spec.tools] or None
        # Images are read and checked under the media policy first, and handed on as data: URLs.
        messages = resolve_images(spec.messages, self.media) if has_images(spec.messages) \
            else copy.deepcopy(list(spec.messages))
        engine_input = self.render(messages, tools=tools, chat_template_kwargs=dict(template_kwargs))
        ids = engine_input.get("prompt_token_ids") if isinstance(engine_input, dict) else None
        if ids is None:
            raise RequestError("invalid_request", "vLLM rendered this conversation without token ids")
        overrides: dict[str, Any] = {}
        if structured is not None:
            overrides["structured_outputs"] = structured
        if vrequest.skip_special_tokens is False:  # a tool parser that reads special tokens (hermes)
            overrides["skip_special_tokens"] = False
        return Prepared(engine_input=engine_input, prompt_ids=list(ids), vrequest=vrequest,
                        overrides=overrides, template_kwargs=template_kwargs)

    def _vllm_request(self, spec: SamplingSpec) -> Any:
        from pydantic import ValidationError
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

        data: dict[str, Any] = {"model": spec.model, "messages": _without_image_bytes(spec.messages)}
        if spec.tools:
            data["tools"] = copy.deepcopy(list(spec.tools))
            data["parallel_tool_calls"] = spec.parallel_tool_calls
            choice = spec.tool_choice
            data["tool_choice"] = choice if choice in (fn_tools.NONE, fn_tools.AUTO, fn_tools.REQUIRED) \
                else {"type": "function", "function": {"name": choice}}
        if spec.reasoning_effort is not None:
            data["reasoning_effort"] = spec.reasoning_effort
        if spec.chat_template_kwargs is not None:
            data["chat_template_kwargs"] = dict(spec.chat_template_kwargs)
        try:
            return ChatCompletionRequest.model_validate(data)
        except (ValidationError, ValueError) as exc:
            raise RequestError("invalid_request", f"rejected by vLLM's request model: {_first_error(exc)}") from None

    def parser(self, vrequest: Any, template_kwargs: dict[str, Any]) -> Any:
        """A fresh parser for one generated sequence (parsers keep state); the JSON twin for a forced call."""
        choice = vrequest.tool_choice
        forced = choice == fn_tools.REQUIRED or (choice is not None and not isinstance(choice, str))
        cls = self.forced_parser_cls if forced else self.parser_cls
        return cls(self.tokenizer, vrequest.tools, model_config=self.model_config,
                   chat_template_kwargs=template_kwargs)

    # -- after generation --------------------------------------------------------------

    def choice(self, request: Request, prepared: Prepared, completion: Any, index: int,
               logprobs: Any) -> bodies.Choice:
        """One generated sequence as a chat choice: reasoning, content and tool calls split as vLLM does."""
        spec = request.spec
        parser = self.parser(prepared.vrequest, prepared.template_kwargs)
        token_ids = list(completion.token_ids)
        reasoning, content, calls = parser.parse(completion.text, prepared.vrequest,
                                                 enable_auto_tools=self.tool_call_parser is not None,
                                                 model_output_token_ids=token_ids)
        reasoning_tokens = parser.count_reasoning_tokens(token_ids) if parser.reasoning_parser is not None else 0
        finish = "length" if completion.finish_reason == "length" else "stop"
        tool_calls = None
        if calls and not spec.parallel_tool_calls:
            calls = calls[:1]  # as vLLM's server (maybe_filter_parallel_tool_calls) does
        if calls:
            tool_calls = [bodies.tool_call(bodies.stable_id("call_", request.custom_id, str(request.line),
                                                            str(index), str(k)),
                                           call.name, call.arguments if isinstance(call.arguments, str)
                                           else _json(call.arguments))
                          for k, call in enumerate(calls)]
            # As vLLM's server (and OpenAI): "tool_calls" when auto called a tool or required
            # finished; a named function keeps "stop".
            if spec.tool_choice == fn_tools.AUTO or (spec.tool_choice == fn_tools.REQUIRED and finish == "stop"):
                finish = "tool_calls"
        elif spec.forced_tool:
            content = completion.text  # a forced call cut short: keep what was generated
        return bodies.Choice(text=content or "", finish_reason=finish, completion_tokens=len(token_ids),
                             logprobs=logprobs, tool_calls=tool_calls,
                             reasoning=reasoning if parser.reasoning_parser is not None else None,
                             reasoning_tokens=reasoning_tokens)

    @property
    def reasoning(self) -> bool:
        """True when answers carry reasoning token counts (a reasoning parser is configured)."""
        return self.reasoning_parser is not None


def _without_image_bytes(messages: Any) -> list[dict[str, Any]]:
    """The messages for vLLM's request model: image parts stand in as a tiny placeholder URL.

    The request model only steers the parsers; the images themselves are read once, for the renderer.
    """
    out = copy.deepcopy(list(messages))
    for message in out:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                if part.get("type") == "image_url":
                    part["image_url"] = {"url": "data:image/png;base64,"}
    return out


def _backend_reads(structured: Any) -> bool:
    """False for a structural tag in xgrammar's format, which llguidance cannot compile.

    llguidance reads only the older form (``triggers`` and ``structures``); vLLM's tool
    parsers build the newer one (a ``format`` tree) since 0.32.
    """
    import json

    tag = structured.structural_tag
    if tag is None:
        return True
    try:
        parsed = json.loads(tag) if isinstance(tag, str) else tag
    except ValueError:
        return False
    return isinstance(parsed, dict) and "triggers" in parsed and "structures" in parsed


def _close_call_objects(schema: Any) -> None:
    """``{"name", "parameters"}`` call objects admit no other keys.

    vLLM's schema for ``required`` leaves them open; a weak model then keeps adding keys until
    max_tokens and the call never parses. Only the wrapper is closed, not the tools' schemas.
    """
    items = schema.get("items") if isinstance(schema, dict) else None
    for option in (items or {}).get("anyOf") or ():
        if isinstance(option, dict):
            option.setdefault("additionalProperties", False)


def _json(value: Any) -> str:
    import json

    return json.dumps(value, ensure_ascii=False)


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            return f"{'.'.join(str(p) for p in first.get('loc', ()))}: {first.get('msg')}"
        except Exception:  # noqa: BLE001 - fall back to the message
            pass
    return str(exc).splitlines()[0]
