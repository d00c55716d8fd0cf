"""Prompt formats shared by tasks: ``base`` (the raw prompt) or ``chat`` (the model's own chat
template, ``tokenizer.apply_chat_template(..., add_generation_prompt=True)``); ``auto`` = chat
when the tokenizer has a template, base otherwise."""

from __future__ import annotations

from bench.core.errors import BenchError


def resolve_template(template: str, tokenizer) -> str:
    """The format a task's ``template`` setting means with this tokenizer."""
    has_chat = getattr(tokenizer, "chat_template", None) is not None
    if template == "auto":
        return "chat" if has_chat else "base"
    if template == "chat" and not has_chat:
        raise BenchError(
            "template=chat: the model's tokenizer has no chat template (use template=base or auto)"
        )
    return template


def as_chat(tokenizer, text: str) -> str:
    """``text`` as the user's turn, ending where the assistant's answer starts."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
    )
