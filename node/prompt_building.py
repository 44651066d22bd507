"""How a node turns a request into prompt tokens: a template rendered or the conversation checked, the
knowledge sources put in front (cite or abstain), the chat template with tools in the model family's
format or the generic one, and how many leading tokens stay the same from request to request (their KV
is kept: engine/prefix_store.py). A part of `NodeService` (node/service.py) that holds no state of its
own: it reads the service's model, settings, templates and knowledge store.
"""

from __future__ import annotations

from dataclasses import replace

from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from edgefleet.node.engine.llama_backend import LoadedModel
from edgefleet.node.engine.scheduler import common_prefix
from edgefleet.node.errors import InvalidRequest, NotFound, Unavailable
from edgefleet.node.grammar import GrammarCache
from edgefleet.node.knowledge.grounded_sink import Grounding
from edgefleet.node.knowledge.service import KnowledgeService
from edgefleet.node.model_catalog import ModelFile
from edgefleet.node.service_types import ChatTurn, GenerateInput
from edgefleet.node.settings import NodeSettings
from edgefleet.node.tool_calls import formats
from edgefleet.node.tool_calls.plan import ToolPlan
from edgefleet.proto.input_limits import brief
from edgefleet.proto.templates import CompiledTemplate, TemplateError

ROLES = frozenset({"system", "user", "assistant", "tool"})


class PromptBuilding:
    """Request → prompt tokens; mixed into NodeService, which sets these attributes."""

    settings: NodeSettings
    model: LoadedModel
    model_file: ModelFile
    grammars: GrammarCache
    _chat: Jinja2ChatFormatter | None
    _native_tools: bool
    _templates: dict[str, CompiledTemplate]
    _knowledge: KnowledgeService | None

    def _render(self, turns: list[ChatTurn], tools: ToolPlan | None) -> str:
        """Chat turns through the model's template: tools and calls in its own format or the generic one.

        With tool_choice none the tools are described without the markup, native template or not
        (formats.py says why)."""
        assert self._chat is not None
        system = formats.tools_text(tools.tools, tools.choice) if tools is not None else ""
        if not self._native_tools:
            return self._chat(messages=formats.generic_messages(turns, system)).prompt  # type: ignore[arg-type]
        messages = formats.native_messages(turns)
        if tools is not None and tools.choice.mode == "none":
            return self._chat(messages=formats.with_system(messages, system)).prompt  # type: ignore[arg-type]
        listing = formats.openai_tools(tools.tools) if tools is not None else None
        return self._chat(messages=messages, tools=listing).prompt  # type: ignore[arg-type]

    def _grammar(self, json_schema: str) -> str | None:
        return self.grammars.grammar(json_schema) if json_schema else None

    def _template(self, inp: GenerateInput) -> CompiledTemplate | None:
        """The template a request names, looked up once: the version rendered is the version reported."""
        if not inp.template:
            return None
        if inp.prompt or inp.messages:
            raise InvalidRequest("give a template or prompt or messages, not several")
        compiled = self._templates.get(inp.template)
        if compiled is None:
            known = ", ".join(sorted(self._templates)) or "none"
            raise NotFound(f"template {brief(inp.template)} is not on this node (templates: {known})")
        return compiled

    def _from_template(self, inp: GenerateInput, compiled: CompiledTemplate) -> list[ChatTurn]:
        try:
            system, user = compiled.render(inp.variables)
        except TemplateError as e:
            raise InvalidRequest(str(e)) from e
        return [*([ChatTurn("system", system)] if system else []), ChatTurn("user", user)]

    def _conversation(self, inp: GenerateInput, template: CompiledTemplate | None) -> tuple[str, list[ChatTurn]]:
        """(raw prompt, "") or ("", chat turns) of a request, its template rendered."""
        if template is not None:
            turns = self._from_template(inp, template)
            if self._chat is None:  # a base model: system prompt and text as one raw prompt
                return "\n\n".join(t.content for t in turns), []
            return "", turns
        if inp.variables:
            raise InvalidRequest("variables are only for a template; name the template")
        if inp.prompt and inp.messages:
            raise InvalidRequest("give either prompt or messages, not both")
        if inp.prompt:
            return inp.prompt, []
        if not inp.messages:
            raise InvalidRequest("prompt and messages are both empty; give one of them")
        for i, m in enumerate(inp.messages):
            if m.role not in ROLES:
                raise InvalidRequest(f"messages[{i}].role {brief(m.role)} is not one of {', '.join(sorted(ROLES))}")
        if self._chat is None:
            raise InvalidRequest(
                f"model {self.model_file.name} has no chat template; send a raw prompt instead of messages"
            )
        return "", list(inp.messages)

    def _with_sources(
        self, inp: GenerateInput, raw: str, turns: list[ChatTurn]
    ) -> tuple[str, list[ChatTurn], Grounding]:
        """Retrieval: the collection's best chunks for the question go in as (part of) the system message."""
        if self._knowledge is None:
            raise Unavailable("this node has no knowledge store (EDGEFLEET_KNOWLEDGE is off)")
        question = raw or next((t.content for t in reversed(turns) if t.role == "user"), "")
        ctx = self._knowledge.context(question, inp.collection, inp.retrieval_top_k)
        grounding = Grounding(question, ctx.sources, ctx.relevance.score)
        context = ctx.text
        if raw:
            return f"{context}\n\n{raw}", turns, grounding
        if turns and turns[0].role == "system":
            return raw, [ChatTurn("system", f"{context}\n\n{turns[0].content}"), *turns[1:]], grounding
        return raw, [ChatTurn("system", context), *turns], grounding

    def _prompt_tokens(
        self, inp: GenerateInput, template: CompiledTemplate | None, tools: ToolPlan | None = None
    ) -> tuple[list[int], Grounding | None, int]:
        """The prompt's tokens, the knowledge sources in it, and how many leading tokens are fixed."""
        raw, turns = self._conversation(inp, template)
        grounding: Grounding | None = None
        if inp.collection:
            raw, turns, grounding = self._with_sources(inp, raw, turns)
        if raw:
            if tools is not None:
                raw = formats.raw_prompt(raw, tools.tools, tools.choice)
            return self.model.tokenize(raw, add_special=True, parse_special=False), grounding, 0
        tokens = self._chat_tokens(turns, tools)
        if inp.collection or not self.settings.prefix_store_mb:  # retrieved context: no fixed prefix worth keeping
            return tokens, grounding, 0
        return tokens, grounding, self._fixed_prefix(tokens, self._probe(inp, template, turns), tools)

    def _grounded(self, inp: GenerateInput, tools: ToolPlan | None, grounding: Grounding | None) -> Grounding | None:
        """The grounding to check a knowledge answer with: free text only (JSON and tool calls are not prose)."""
        if grounding is None or not self.settings.grounding or tools is not None or inp.json_schema:
            return None
        return grounding

    def _chat_tokens(self, turns: list[ChatTurn], tools: ToolPlan | None) -> list[int]:
        rendered = self._render(turns, tools)
        tokens = self.model.tokenize(rendered, add_special=True, parse_special=True)
        if (
            len(tokens) > 1
            and tokens[0] == tokens[1]
            and self.model.meta.bos_text
            and rendered.startswith(self.model.meta.bos_text)
        ):
            tokens = tokens[1:]  # the template wrote BOS itself
        return tokens

    def _probe(self, inp: GenerateInput, template: CompiledTemplate | None, turns: list[ChatTurn]) -> list[ChatTurn]:
        """The same conversation with what changes from request to request changed: a template's
        variables (so its system prompt and text up to the first variable stay), else everything after
        the system messages (a chat history is not a fixed prefix: only the preamble and system prompt)."""
        if template is not None:
            other = {k: "~" if v != "~" else "^" for k, v in inp.variables.items()}
            try:
                return self._from_template(replace(inp, variables=other), template)
            except InvalidRequest:
                pass  # the template refuses the probe values: fall back to the last message
        n = next((i for i, t in enumerate(turns) if t.role != "system"), len(turns))
        after = turns[n] if n < len(turns) else None
        return [*turns[:n], ChatTurn("user", "," if after is not None and after.content == "." else ".")]

    def _fixed_prefix(self, tokens: list[int], probe: list[ChatTurn], tools: ToolPlan | None) -> int:
        """Leading tokens that stay the same from request to request (chat preamble, system prompt, a
        template's head, earlier turns): those shared with the `probe` conversation. Their KV cells are
        worth keeping (engine/prefix_store.py)."""
        return min(common_prefix(tokens, self._chat_tokens(probe, tools)), len(tokens) - 1)
