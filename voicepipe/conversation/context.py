"""The conversation as the caller heard it: the system prompt, then the turns, each reply revised to what was heard.

The chat backends trim the oldest turns to fit their own context (engines/llm.py `fit_history`): each backend
counts tokens its own way, and the fallback backend has two contexts.
"""

from __future__ import annotations

from collections.abc import Sequence

from voicepipe.engines.llm import Message


class ConversationContext:
    def __init__(self, system_prompt: str) -> None:
        self.messages: list[Message] = [{"role": "system", "content": system_prompt}]

    def prompt(self, user_text: str, under_way: Sequence[Message] = ()) -> list[Message]:
        """What the model sees to answer `user_text`: the conversation so far (and `under_way`, turns not kept
        yet), then that."""
        return [*self.messages, *under_way, {"role": "user", "content": user_text}]

    def add_user(self, text: str) -> None:
        self.messages.append({"role": "user", "content": text})

    def add_assistant(self, text: str) -> Message:
        """Keep what the agent said; the entry is returned so that it can be revised to what was heard."""
        entry: Message = {"role": "assistant", "content": text}
        self.messages.append(entry)
        return entry

    def revise(self, entry: Message, heard: str) -> bool:
        """Cut a reply down to what the caller heard of it; a reply heard not at all leaves the history.
        Returns whether the entry is still there."""
        if heard:
            entry["content"] = heard
            return True
        # By identity: another entry may have the same text.
        self.messages[:] = [m for m in self.messages if m is not entry]
        return False
